"""Simulated HTTP sensors: `POST /api/v1/{token}/telemetry`, as firmware with an HTTP stack does.

Each device keeps one keep-alive connection (httpx) and sends its readings one request at a
time. A reading answered 200 is logged (with --acked-log); one that got no answer, a 5xx or
a 429 is sent again later (after Retry-After when the gateway gave one), like firmware that
keeps unsent readings in flash. Payloads are the CoAP simulator's (same formats).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import IO, ClassVar

import httpx

from firmware_stubs.credentials import DeviceCredentials
from firmware_stubs.request_sim import (
    Pacer,
    RequestSimConfig,
    RequestSimStats,
    acknowledged,
    reading_body,
    run_devices,
    timestamps,
)

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
class HttpSimConfig(RequestSimConfig):
    error: ClassVar[type[Exception]] = HttpSimError

    port: int = 8080
    timeout_s: float = 10.0

    def _check(self) -> None:
        if self.rate <= 0 or self.count < 0 or self.timeout_s <= 0:
            raise HttpSimError("rate and timeout must be > 0, count >= 0")


@dataclass
class HttpSimStats(RequestSimStats):
    """`acked` counts answers 200; `answers` maps a status code (or "error") to its count."""

    errors: int = 0  # no answer: connection refused or reset, timeout

    def _counters(self) -> dict[str, int]:
        return {"errors": self.errors, "resent": self.resent}


def retry_after(resp: httpx.Response) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(resp.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


async def run_http_simulation(
    config: HttpSimConfig, stop: asyncio.Event | None = None
) -> HttpSimStats:
    return await run_devices(config, HttpSimStats(devices=len(config.devices)), _device, stop)


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
    pacer = Pacer(config.rate, config.saturate)
    clock = timestamps()
    seq = 0
    retry: list[tuple[int, int | None]] = []
    async with httpx.AsyncClient(timeout=config.timeout_s) as client:
        while not stop.is_set() and (config.count == 0 or seq < config.count or retry):
            if retry:
                item = retry.pop(0)
                stats.resent += 1
            else:
                seq += 1
                item = (seq, None if config.no_clock else next(clock))
                await pacer.wait()
            n, ts = item
            malformed, body = reading_body(config, dev.device_id, n, ts)
            stats.sent += 1
            sent_at = time.perf_counter()
            try:
                resp = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError:
                stats.errors += 1
                stats.answered("error")
                if not config.bad_token:
                    retry.append(item)
                    await asyncio.sleep(1.0)
                continue
            stats.answered(str(resp.status_code))
            if resp.status_code == 200:
                acknowledged(stats, sent_at, log, dev.device_id, n, ts)
            elif (resp.status_code >= 500 or resp.status_code == 429) and not (
                config.bad_token or malformed
            ):
                retry.append(item)
                await asyncio.sleep(retry_after(resp))
