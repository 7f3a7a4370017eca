"""Simulated HTTP sensors: `POST /api/v1/{token}/telemetry`, as firmware with an HTTP stack does.

Each device keeps one keep-alive connection (httpx) and sends its readings one request at a
time. A reading answered 200 is logged (with --acked-log); one that got no answer, a 5xx or
a 429 is sent again later (after Retry-After when the gateway gave one), like firmware that
keeps unsent readings in flash. Payloads are the CoAP simulator's (same formats).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from firmware_stubs.coap_sim import FORMATS, Format, latency_summary, payload_for, run_devices
from firmware_stubs.mqtt_sim import DeviceCredentials

MEDIA_TYPES = {
    "json": "application/json",
    "cbor": "application/cbor",
    "senml": "application/senml+json",
    "senml-cbor": "application/senml+cbor",
}
MAX_RETRY_WAIT_S = 30.0


class HttpSimError(Exception):
    """A configuration the simulator cannot run with."""


@dataclass(frozen=True, slots=True)
class HttpSimConfig:
    devices: tuple[DeviceCredentials, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    rate: float = 1.0  # requests per second per device
    count: int = 10  # readings per device; 0 = until stopped
    metrics: tuple[str, ...] = ("temperature", "humidity")
    fmt: Format = "json"
    malformed_every: int = 0  # every K-th request carries a malformed payload
    bad_token: bool = False  # use a wrong token (expect 401 / 429)
    saturate: bool = False  # closed loop: the next request as soon as an answer came
    no_clock: bool = False  # flat objects without ts
    timeout_s: float = 10.0
    acked_log: Path | None = None

    def __post_init__(self) -> None:
        if not self.devices:
            raise HttpSimError("no devices")
        if self.fmt not in FORMATS:
            raise HttpSimError(f"unknown format {self.fmt!r}; use one of {', '.join(FORMATS)}")
        if self.rate <= 0 or self.count < 0 or self.timeout_s <= 0:
            raise HttpSimError("rate and timeout must be > 0, count >= 0")


@dataclass
class HttpSimStats:
    devices: int = 0
    sent: int = 0
    acked: int = 0  # answered 200
    answers: dict[str, int] = field(default_factory=dict)  # status code (or "error") -> count
    errors: int = 0  # no answer: connection refused or reset, timeout
    resent: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "sent": self.sent,
            "acked": self.acked,
            "answers": dict(sorted(self.answers.items())),
            "errors": self.errors,
            "resent": self.resent,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.acked / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": latency_summary(self.latencies_ms),
        }


def retry_after(resp: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(resp.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


async def run_http_simulation(
    config: HttpSimConfig, stop: asyncio.Event | None = None
) -> HttpSimStats:
    done = stop or asyncio.Event()
    stats = HttpSimStats(devices=len(config.devices))
    await run_devices(
        config.devices, lambda d, log: _device(config, d, stats, done, log), stats, config.acked_log
    )
    return stats


async def _device(
    config: HttpSimConfig,
    dev: DeviceCredentials,
    stats: HttpSimStats,
    stop: asyncio.Event,
    log: IO[str] | None,
) -> None:
    token = dev.wrong_token if config.bad_token else dev.token
    url = f"http://{config.host}:{config.port}/api/v1/{token}/telemetry"
    headers = {"Content-Type": MEDIA_TYPES[config.fmt]}
    interval = 1.0 / config.rate
    next_at = time.perf_counter()
    last_ts = 0
    seq = 0
    retry: list[tuple[int, int | None]] = []
    async with httpx.AsyncClient(timeout=config.timeout_s) as client:
        while not stop.is_set() and (config.count == 0 or seq < config.count or retry):
            if retry:
                item = retry.pop(0)
                stats.resent += 1
            else:
                seq += 1
                last_ts = max(time.time_ns() // 1_000_000, last_ts + 1)
                item = (seq, None if config.no_clock else last_ts)
                if not config.saturate:
                    next_at += interval
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
            n, ts = item
            malformed = bool(config.malformed_every) and n % config.malformed_every == 0
            body = (
                b'{"broken": '
                if malformed
                else payload_for(config.fmt, dev.device_id, config.metrics, n, ts)
            )
            stats.sent += 1
            sent_at = time.perf_counter()
            try:
                resp = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                stats.errors += 1
                stats.answers["error"] = stats.answers.get("error", 0) + 1
                if not config.bad_token:
                    retry.append(item)
                    await asyncio.sleep(1.0)
                continue
            code = str(resp.status_code)
            stats.answers[code] = stats.answers.get(code, 0) + 1
            if resp.status_code == 200:
                stats.acked += 1
                stats.latencies_ms.append((time.perf_counter() - sent_at) * 1000)
                if log is not None:
                    log.write(f"{dev.device_id} {n} {ts}\n")
                    log.flush()
            elif (resp.status_code >= 500 or resp.status_code == 429) and not (
                config.bad_token or malformed
            ):
                retry.append(item)
                await asyncio.sleep(retry_after(resp))
