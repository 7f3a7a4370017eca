"""What the simulated sensors that send one request per reading share (CoAP, CoAP with OSCORE,
HTTP): the payload formats, one reading's body, open-loop pacing, the fleet runner with its
acknowledged-readings log, and the figures they report. The transports live beside it in
coap_sim.py, coap_oscore_sim.py and http_sim.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, Protocol, TypeVar

import cbor2

from firmware_stubs.credentials import DeviceCredentials

FORMATS = {"json": 50, "cbor": 60, "senml": 110, "senml-cbor": 112}  # -> CoAP Content-Format
Format = Literal["json", "cbor", "senml", "senml-cbor"]
MALFORMED_BODY = b'{"broken": '


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class RequestSimConfig:
    """What every request-per-reading simulator is configured with. Each protocol's config adds
    its own fields, its default port, the error it raises and the limits `_check` enforces."""

    error: ClassVar[type[Exception]] = ValueError

    devices: tuple[DeviceCredentials, ...]
    host: str = "127.0.0.1"
    port: int = 0
    rate: float = 1.0  # requests per second per device
    count: int = 10  # readings per device; 0 = until stopped
    metrics: tuple[str, ...] = ("temperature", "humidity")
    fmt: Format = "json"
    malformed_every: int = 0  # every K-th request carries a malformed payload
    bad_token: bool = False  # use a wrong token (expect 4.01 / 401, then 4.29 / 429)
    saturate: bool = False  # closed loop: the next request as soon as an answer came
    no_clock: bool = False  # flat objects without ts
    acked_log: Path | None = None

    def __post_init__(self) -> None:
        if not self.devices:
            raise self.error("no devices")
        if self.fmt not in FORMATS:
            raise self.error(f"unknown format {self.fmt!r}; use one of {', '.join(FORMATS)}")
        self._check()

    def _check(self) -> None:
        """The protocol's own limits (raise self.error)."""


# --------------------------------------------------------------------------- one reading


def payload_for(
    fmt: Format, device_id: str, metrics: tuple[str, ...], seq: int, ts_ms: int | None
) -> bytes:
    values = {m: round(20 + 5 * random.random(), 2) if i else seq % 50 for i, m in
              enumerate(metrics)}  # fmt: skip
    if fmt in ("senml", "senml-cbor"):
        base: dict[Any, Any] = {"bn": f"{device_id}/"}
        if ts_ms is not None:
            base["bt"] = ts_ms / 1000
        records = [{**(base if i == 0 else {}), "n": m, "v": v} for i, (m, v) in
                   enumerate(values.items())]  # fmt: skip
        if fmt == "senml":
            return json.dumps(records).encode()
        labels = {"bn": -2, "bt": -3, "n": 0, "v": 2}
        return cbor2.dumps([{labels[k]: v for k, v in r.items()} for r in records])
    body: dict[str, Any] = values if ts_ms is None else {"ts": ts_ms, "seq": seq, "values": values}
    return json.dumps(body).encode() if fmt == "json" else cbor2.dumps(body)


class ReadingFormat(Protocol):
    """The part of a simulator's configuration that shapes a reading's body."""

    @property
    def fmt(self) -> Format: ...
    @property
    def metrics(self) -> tuple[str, ...]: ...
    @property
    def malformed_every(self) -> int: ...


def reading_body(
    config: ReadingFormat, device_id: str, seq: int, ts: int | None
) -> tuple[bool, bytes]:
    """(malformed, body) of reading `seq`: every malformed_every-th one is broken JSON."""
    if config.malformed_every and seq % config.malformed_every == 0:
        return True, MALFORMED_BODY
    return False, payload_for(config.fmt, device_id, config.metrics, seq, ts)


def timestamps() -> Iterator[int]:
    """A device's reading timestamps in ms: the wall clock, but unique and increasing."""
    last = 0
    while True:
        last = max(time.time_ns() // 1_000_000, last + 1)
        yield last


class Pacer:
    """Open loop: one reading every 1/rate s without drift (late sends do not push the next
    ones back); with saturate, no waiting at all (closed loop, for benchmarks)."""

    def __init__(self, rate: float, saturate: bool) -> None:
        self._interval = 1.0 / rate
        self._saturate = saturate
        self._next_at = time.perf_counter()

    async def wait(self) -> None:
        if self._saturate:
            return
        self._next_at += self._interval
        delay = self._next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


# --------------------------------------------------------------------------- what a run did


def latency_summary(samples: list[float]) -> dict[str, float] | None:
    """p50, p99 and max of request latencies in ms (None without samples)."""
    lat = sorted(samples)
    n = len(lat)
    if not n:
        return None
    return {
        "p50": round(lat[n // 2], 2),
        "p99": round(lat[min(n - 1, n * 99 // 100)], 2),
        "max": round(lat[-1], 2),
    }


@dataclass
class RequestSimStats:
    """The figures every request-per-reading simulator reports; each protocol adds its own
    counters in `_counters` (which also fixes their place in `to_dict`)."""

    devices: int = 0
    sent: int = 0
    acked: int = 0  # answered with the protocol's success code
    answers: dict[str, int] = field(default_factory=dict)  # code -> count
    resent: int = 0  # readings sent again after no answer or a transient error
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def answered(self, code: str) -> None:
        self.answers[code] = self.answers.get(code, 0) + 1

    def _counters(self) -> dict[str, int]:
        return {"resent": self.resent}

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "sent": self.sent,
            "acked": self.acked,
            "answers": dict(sorted(self.answers.items())),
            **self._counters(),
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.acked / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "latency_ms": latency_summary(self.latencies_ms),
        }


def acknowledged(
    stats: RequestSimStats,
    sent_at: float,
    log: IO[str] | None,
    device_id: str,
    seq: int,
    ts: int | None,
) -> None:
    """A reading the gateway took: counted, its latency kept, and (with --acked-log) logged as
    "device_id seq ts_ms", flushed line by line."""
    stats.acked += 1
    stats.latencies_ms.append((time.perf_counter() - sent_at) * 1000)
    if log is not None:
        log.write(f"{device_id} {seq} {ts}\n")
        log.flush()


# --------------------------------------------------------------------------- the fleet


class FleetConfig(Protocol):
    """The part of a simulator's configuration run_devices needs."""

    @property
    def devices(self) -> tuple[DeviceCredentials, ...]: ...
    @property
    def acked_log(self) -> Path | None: ...


C = TypeVar("C", bound=FleetConfig)
S = TypeVar("S", bound=RequestSimStats)


async def run_devices(
    config: C,
    stats: S,
    device: Callable[[C, DeviceCredentials, S, asyncio.Event, IO[str] | None], Awaitable[None]],
    stop: asyncio.Event | None,
) -> S:
    """Run device(config, credentials, stats, stop, acked log) for every device at once (the
    CoAP and HTTP simulators), with the acknowledged-readings log open, until each is done or
    stop is set; stats.elapsed_s is the wall time."""
    done = stop or asyncio.Event()
    log: IO[str] | None = config.acked_log.open("a") if config.acked_log else None
    started = time.perf_counter()
    try:
        await asyncio.gather(*(device(config, d, stats, done, log) for d in config.devices))
    finally:
        stats.elapsed_s = time.perf_counter() - started
        if log is not None:
            log.close()
    return stats
