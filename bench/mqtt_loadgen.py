"""A lean MQTT 3.1.1 QoS 1 load generator for the ingest benchmark: raw asyncio sockets.

Why not the paho-based simulator (firmware_stubs.mqtt_sim): on the 2-core bench host it tops
out near 5,000-6,000 msgs/s in two processes, below what the gateway commits, so the benchmark
measured the generator. This one pre-encodes nothing but the JSON payload and the fixed
header, writes every PUBLISH a window allows in one write and parses PUBACKs by slicing, and
times each PUBLISH to its PUBACK (what a device sees, now that the PUBACK waits for the commit).

Each device keeps at most `window` messages unacknowledged (paho's default is 20), publishes
`{"ts": ..., "values": {"m0sK": ...}}` and either as fast as its window allows (saturate) or at
`rate` messages/s, counting the sends its window delayed. A reading is identified by (device,
metric, ts) with ts in ms, so one series holds at most 1,000 readings a second: messages take
turns over SLOTS series per metric, each with a strictly increasing ts that stays at the wall
clock up to SLOTS x 1,000 messages a second per device (a ts ahead of the clock would skew the
gateway's publish -> commit lag, and past its allowed future skew be refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from edge.ingest.mqtt.client.codec import encode_varint

SLOTS = 16


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, username: str, password: str, keepalive: int = 60) -> bytes:
    body = _utf8("MQTT") + bytes((4, 0xC2)) + keepalive.to_bytes(2, "big")
    body += _utf8(client_id) + _utf8(username) + _utf8(password)
    return b"\x10" + encode_varint(len(body)) + body


@dataclass
class DeviceStats:
    sent: int = 0
    acked: int = 0
    late: int = 0  # paced sends the window held back past their time
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class _Link:
    """One device's connection after CONNACK: PUBLISHes out, PUBACKs in, and the messages in
    flight between them (packet id -> send time), which the window bounds."""

    def __init__(
        self,
        device_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        metrics: int,
        stats: DeviceStats,
    ) -> None:
        self.reader, self.writer, self.stats = reader, writer, stats
        self.topic = _utf8(f"devices/{device_id}/telemetry")
        self.names = [[f"m{i}s{slot}" for i in range(metrics)] for slot in range(SLOTS)]
        self.sent_at: dict[int, float] = {}
        self.next_id = 1
        self.last_ts = [0] * SLOTS
        self.turn = 0
        self.room = asyncio.Event()  # set when PUBACKs arrive (the window may have room)
        self.room.set()

    def publish(self, n: int) -> None:
        """n PUBLISHes in one write, each over the next slot's series."""
        out = bytearray()
        now = time.monotonic()
        wall_ms = int(time.time() * 1000)
        topic, names, last_ts, sent_at = self.topic, self.names, self.last_ts, self.sent_at
        next_id, turn = self.next_id, self.turn
        for _ in range(n):
            slot = turn = (turn + 1) % SLOTS
            ts = last_ts[slot] = max(wall_ms, last_ts[slot] + 1)
            payload = json.dumps(
                {"ts": ts, "values": {m: 20.0 + (ts % 100) / 10 for m in names[slot]}},
                separators=(",", ":"),
            ).encode()
            pid = next_id
            next_id = next_id % 65535 + 1
            body = topic + pid.to_bytes(2, "big") + payload
            out += b"\x32" + encode_varint(len(body)) + body
            sent_at[pid] = now
        self.next_id, self.turn = next_id, turn
        self.writer.write(out)
        self.stats.sent += n

    async def read_acks(self) -> None:
        """PUBACKs (4 bytes each) until the connection closes: each times its PUBLISH."""
        buf = b""
        sent_at, stats = self.sent_at, self.stats
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed")
            buf += data
            usable = len(buf) - len(buf) % 4
            now = time.monotonic()
            for i in range(0, usable, 4):
                if buf[i] != 0x40:
                    raise ConnectionError(f"unexpected packet 0x{buf[i]:02x}")
                started = sent_at.pop(int.from_bytes(buf[i + 2 : i + 4], "big"), None)
                if started is not None:
                    stats.acked += 1
                    stats.latencies_ms.append((now - started) * 1000)
            buf = buf[usable:]
            self.room.set()

    async def wait_for_room(self, acks: asyncio.Task[None]) -> None:
        """Until a PUBACK arrives; re-raises what ended the ack reader if it stopped."""
        self.room.clear()
        waiter = asyncio.create_task(self.room.wait())
        await asyncio.wait({waiter, acks}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if acks.done():
            acks.result()

    async def drain(self, acks: asyncio.Task[None], timeout_s: float) -> None:
        """Wait (up to timeout_s) for what is in flight: acks set `room` as they arrive."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.sent_at and not acks.done():
                    self.room.clear()
                    await self.room.wait()


async def _connect(
    device_id: str, token: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(f"lg-{device_id}", device_id, token))
    connack = await reader.readexactly(4)
    if connack[3] != 0:
        raise RuntimeError(f"{device_id}: CONNACK refused with code {connack[3]}")
    return reader, writer


async def _publish_until_stopped(
    link: _Link,
    acks: asyncio.Task[None],
    *,
    window: int,
    rate: float | None,
    stop: asyncio.Event,
) -> None:
    """Fill the window as fast as PUBACKs free it (rate None) or send at `rate` messages/s,
    counting the sends the window held back past their time."""
    period = 1.0 / rate if rate else 0.0
    due = time.monotonic()
    while not stop.is_set():
        free = window - len(link.sent_at)
        if free <= 0:
            await link.wait_for_room(acks)
            continue
        if not period:
            link.publish(free)
            await asyncio.sleep(0)
            continue
        now = time.monotonic()
        if now < due:
            await asyncio.sleep(due - now)
            continue
        behind = int((now - due) / period) + 1
        n = min(free, behind)
        if behind > free:
            link.stats.late += 1
        link.publish(n)
        due += n * period


async def run_device(
    device_id: str,
    token: str,
    port: int,
    *,
    window: int,
    rate: float | None,
    metrics: int,
    stop: asyncio.Event,
    stats: DeviceStats,
) -> None:
    reader, writer = await _connect(device_id, token, port)
    link = _Link(device_id, reader, writer, metrics, stats)
    acks = asyncio.create_task(link.read_acks())
    try:
        await _publish_until_stopped(link, acks, window=window, rate=rate, stop=stop)
        await link.drain(acks, 2.0)
    except (ConnectionError, OSError):
        stats.errors += 1
    finally:
        acks.cancel()
        writer.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def run_fleet(
    devices: list[dict[str, str]],
    port: int,
    *,
    window: int,
    rate: float | None,
    metrics: int,
    seconds: float,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    stop = stop or asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    stats = [DeviceStats() for _ in devices]
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            run_device(
                d["device_id"],
                d["token"],
                port,
                window=window,
                rate=rate,
                metrics=metrics,
                stop=stop,
                stats=st,
            )
            for d, st in zip(devices, stats, strict=True)
        ),
        return_exceptions=True,
    )
    elapsed = time.monotonic() - started
    latencies = [x for st in stats for x in st.latencies_ms]
    return {
        "sent": sum(st.sent for st in stats),
        "acked": sum(st.acked for st in stats),
        "late": sum(st.late for st in stats),
        "errors": sum(st.errors for st in stats) + sum(isinstance(r, Exception) for r in results),
        "dropped": 0,
        "reconnects": 0,
        "elapsed_s": round(elapsed, 3),
        "puback_p50_ms": percentile(latencies, 0.50),
        "puback_p99_ms": percentile(latencies, 0.99),
    }
