"""Simulated CoAP sensors: `POST /api/v1/{token}/telemetry`, as constrained firmware does it.

Each device owns one UDP socket and keeps up to `inflight` requests outstanding (message ids
and tokens from its own counters). Confirmable requests are retransmitted with the RFC 7252
backoff (ACK_TIMEOUT x random factor, doubling, MAX_RETRANSMIT times) under the same message
id, so the gateway's deduplication is exercised; an empty ACK stops retransmission and the
separate response that follows is acknowledged. A reading answered 2.04 is logged (when
--acked-log is given); one that got no answer is sent again as a new request later, like
firmware that keeps unsent readings in flash. The codec is a few dozen lines on purpose: a
device's view of CoAP, independent of the gateway's aiocoap.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
import time
from dataclasses import dataclass
from typing import IO, Any, ClassVar, cast

from firmware_stubs.credentials import DeviceCredentials
from firmware_stubs.request_sim import (
    FORMATS,
    Pacer,
    RequestSimConfig,
    RequestSimStats,
    acknowledged,
    reading_body,
    run_devices,
    timestamps,
)

CON, NON, ACK, RST = 0, 1, 2, 3
POST = 2
OPT_URI_PATH, OPT_CONTENT_FORMAT, OPT_MAX_AGE = 11, 12, 14


class CoapSimError(Exception):
    """A configuration the simulator cannot run with."""


# --------------------------------------------------------------------------- codec


def _option_header(delta: int, length: int) -> tuple[int, bytes, int, bytes]:
    def nibble(v: int) -> tuple[int, bytes]:
        if v < 13:
            return v, b""
        if v < 269:
            return 13, bytes([v - 13])
        return 14, struct.pack("!H", v - 269)

    d, dx = nibble(delta)
    n, nx = nibble(length)
    return d, dx, n, nx


def encode_request(
    mid: int, token: bytes, path: list[str], payload: bytes, fmt: int | None, confirmable: bool
) -> bytes:
    out = bytearray([0x40 | ((CON if confirmable else NON) << 4) | len(token), POST])
    out += struct.pack("!H", mid) + token
    options: list[tuple[int, bytes]] = [(OPT_URI_PATH, p.encode()) for p in path]
    if fmt is not None:
        options.append((OPT_CONTENT_FORMAT, fmt.to_bytes(2, "big").lstrip(b"\0")))
    last = 0
    for number, value in options:
        d, dx, n, nx = _option_header(number - last, len(value))
        out.append((d << 4) | n)
        out += dx + nx + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Datagram:
    mtype: int
    code: int
    mid: int
    token: bytes
    max_age: int | None
    payload: bytes

    @property
    def code_text(self) -> str:
        return f"{self.code >> 5}.{self.code & 31:02d}"


def decode(data: bytes) -> Datagram | None:
    """A response datagram, or None when it is not valid CoAP."""
    if len(data) < 4 or data[0] >> 6 != 1:
        return None
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    mtype, code = (data[0] >> 4) & 3, data[1]
    mid = struct.unpack("!H", data[2:4])[0]
    token, pos, number, max_age = data[4 : 4 + tkl], 4 + tkl, 0, None
    while pos < len(data) and data[pos] != 0xFF:
        d, n = data[pos] >> 4, data[pos] & 0x0F
        pos += 1
        vals = []
        for v in (d, n):
            if v == 13:
                vals.append(data[pos] + 13)
                pos += 1
            elif v == 14:
                vals.append(struct.unpack("!H", data[pos : pos + 2])[0] + 269)
                pos += 2
            elif v == 15:
                return None
            else:
                vals.append(v)
        number += vals[0]
        value = data[pos : pos + vals[1]]
        pos += vals[1]
        if number == OPT_MAX_AGE:
            max_age = int.from_bytes(value, "big")
    payload = data[pos + 1 :] if pos < len(data) else b""
    return Datagram(mtype, code, mid, bytes(token), max_age, bytes(payload))


# --------------------------------------------------------------------------- one device's socket


@dataclass(frozen=True, slots=True)
class Answer:
    code: str  # "2.04", "4.00", ...; "timeout" when nothing came back
    payload: bytes = b""
    max_age: int | None = None


class DeviceEndpoint(asyncio.DatagramProtocol):
    """One device's UDP socket with many outstanding requests."""

    def __init__(self, ack_timeout_s: float, max_retransmit: int, non_timeout_s: float) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._max_retransmit = max_retransmit
        self._non_timeout_s = non_timeout_s
        self._mids = itertools.count(random.randrange(0x10000))
        self._tokens = itertools.count(random.randrange(1 << 32))
        self._waiting: dict[bytes, asyncio.Future[Datagram]] = {}
        self._acked: dict[int, asyncio.Event] = {}  # mid -> empty ACK (or response) seen
        self._transport: asyncio.DatagramTransport | None = None
        self.retransmissions = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        msg = decode(data)
        if msg is None:
            return
        if msg.mtype in (ACK, RST) and msg.mid in self._acked:
            self._acked[msg.mid].set()
        if msg.mtype == CON and self._transport is not None:
            # a separate response: acknowledge it, or the gateway keeps resending it
            self._transport.sendto(bytes([0x60, 0, *struct.pack("!H", msg.mid)]))
        if msg.code != 0:
            waiter = self._waiting.pop(msg.token, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the gateway restarts: the timeout handles it

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def post(
        self, path: list[str], payload: bytes, fmt: int | None, confirmable: bool
    ) -> Answer:
        assert self._transport is not None
        mid = next(self._mids) & 0xFFFF
        token = (next(self._tokens) & 0xFFFFFFFF).to_bytes(4, "big")
        datagram = encode_request(mid, token, path, payload, fmt, confirmable)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Datagram] = loop.create_future()
        self._waiting[token] = waiter
        acked = self._acked[mid] = asyncio.Event()
        try:
            self._transport.sendto(datagram)
            if not confirmable:
                msg = await asyncio.wait_for(waiter, self._non_timeout_s)
                return Answer(msg.code_text, msg.payload, msg.max_age)
            timeout = self._ack_timeout_s * random.uniform(1.0, 1.5)
            for attempt in range(self._max_retransmit + 1):
                done, _ = await asyncio.wait({waiter}, timeout=timeout)
                if done:
                    msg = waiter.result()
                    return Answer(msg.code_text, msg.payload, msg.max_age)
                if acked.is_set():
                    break  # the gateway has it; the answer comes as a separate response
                if attempt < self._max_retransmit:
                    self.retransmissions += 1
                    self._transport.sendto(datagram)  # same message id
                    timeout *= 2
            if acked.is_set():
                msg = await asyncio.wait_for(waiter, self._non_timeout_s)
                return Answer(msg.code_text, msg.payload, msg.max_age)
            return Answer("timeout")
        except TimeoutError:
            return Answer("timeout")
        finally:
            self._waiting.pop(token, None)
            self._acked.pop(mid, None)


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class CoapSimConfig(RequestSimConfig):
    error: ClassVar[type[Exception]] = CoapSimError

    port: int = 5683
    confirmable: bool = True
    inflight: int = 1  # outstanding requests per device
    ack_timeout_s: float = 2.0
    max_retransmit: int = 4

    def _check(self) -> None:
        if self.inflight < 1 or self.rate <= 0 or self.count < 0:
            raise CoapSimError("inflight must be >= 1, rate > 0, count >= 0")


def _transient(code: str) -> bool:
    """Worth sending again, as firmware would: no answer, a reset (the gateway restarted and
    forgot the exchange) or a server error while it starts or stops."""
    return code in ("timeout", "reset") or code.startswith("5.")


@dataclass
class CoapSimStats(RequestSimStats):
    timeouts: int = 0
    retransmissions: int = 0

    def _counters(self) -> dict[str, int]:
        return {
            "timeouts": self.timeouts,
            "resent": self.resent,
            "retransmissions": self.retransmissions,
        }


async def run_coap_simulation(
    config: CoapSimConfig, stop: asyncio.Event | None = None
) -> CoapSimStats:
    return await run_devices(config, CoapSimStats(devices=len(config.devices)), _device, stop)


async def _device(  # noqa: PLR0915 - one simulated device's loop, read top to bottom
    config: CoapSimConfig,
    dev: DeviceCredentials,
    stats: CoapSimStats,
    stop: asyncio.Event,
    log: IO[str] | None,
) -> None:
    loop = asyncio.get_running_loop()
    _, endpoint = await loop.create_datagram_endpoint(
        lambda: DeviceEndpoint(config.ack_timeout_s, config.max_retransmit, 10.0),
        remote_addr=(config.host, config.port),
    )
    token = dev.wrong_token if config.bad_token else dev.token
    path = ["api", "v1", token, "telemetry"]
    fmt = FORMATS[config.fmt]
    slots = asyncio.Semaphore(config.inflight)
    clock = timestamps()
    pending: set[asyncio.Task[None]] = set()
    retry: list[tuple[int, int | None]] = []  # readings to send again (seq, ts)

    async def one(seq: int, ts: int | None) -> None:
        try:
            malformed, body = reading_body(config, dev.device_id, seq, ts)
            sent_at = time.perf_counter()
            stats.sent += 1
            answer = await endpoint.post(path, body, fmt, config.confirmable)
            stats.answered(answer.code)
            if answer.code == "2.04":
                acknowledged(stats, sent_at, log, dev.device_id, seq, ts)
            elif _transient(answer.code) and not config.bad_token and not malformed:
                stats.timeouts += answer.code == "timeout"
                retry.append((seq, ts))
        finally:
            slots.release()

    try:
        seq = 0
        pacer = Pacer(config.rate, config.saturate)
        while not stop.is_set() and (config.count == 0 or seq < config.count or retry):
            await slots.acquire()
            if retry:
                stats.resent += 1
                item = retry.pop(0)
            else:
                if config.count and seq >= config.count:
                    slots.release()
                    if pending:
                        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    continue
                seq += 1
                item = (seq, None if config.no_clock else next(clock))
                await pacer.wait()
            task = asyncio.create_task(one(*item))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
    finally:
        for task in pending:
            task.cancel()
        stats.retransmissions += endpoint.retransmissions
        endpoint.close()
