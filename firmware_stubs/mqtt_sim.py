"""Simulated MQTT sensors that behave like real firmware, many devices in one process.

Each device has its own MQTT connection (username = device id, password = token, its own
client id), samples its metrics at a fixed rate without drift, publishes to
`devices/{id}/telemetry` and, on connection loss, reconnects with exponential backoff and
jitter and resends every message the broker had not PUBACKed, with the same seq and ts, so
the gateway can deduplicate. Refused credentials are retried a few times, then the device
gives up and the refusal is reported in the stats.

The protocol-neutral parts (credentials, telemetry generator, backoff, outbox) are pure and
live at the top of this module; the CoAP and HTTP simulators reuse them (move them to a
`sensor.py` when the second protocol arrives). The MQTT I/O is confined to `_MqttDevice`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from common.clock import Clock, SystemClock

log = logging.getLogger("iotsphere.sim.mqtt")

METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# CONNACK codes that mean "these credentials will not work": retrying them quickly only
# feeds the gateway's lockout. 4/5 are MQTT 3.1.1 codes (paho maps them to 0x86/0x87);
# 0x8A banned, 0x8C bad authentication method, 0x97 quota exceeded (the gateway's lockout).
CREDENTIAL_REFUSALS = frozenset({4, 5, 0x86, 0x87, 0x8A, 0x8C, 0x97})


# --------------------------------------------------------------------------- errors


class SimError(Exception):
    """Base of everything the simulator raises on purpose."""


class SimConfigError(SimError, ValueError):
    """The configuration (or a credentials file) is unusable: a usage error."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    device_id: str
    token: str

    @property
    def wrong_token(self) -> str:
        """A token that is certainly not this device's (its first character changed: the
        tokens are random, so replacing it with a fixed one would match 1 time in 64)."""
        first = "y" if self.token.startswith("x") else "x"
        return first + self.token[1:]


def parse_credentials(text: str) -> tuple[DeviceCredentials, ...]:
    """Parse what `iotsphere gateway device add` prints, collected into a file.

    Accepted: a JSON array of {"device_id", "token"} objects (the documented form), a single
    object, or one object per line (what `device add ... >> file` in a loop produces).
    """
    try:
        doc: Any = json.loads(text)
        items = doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError as exc:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            raise SimConfigError(f"credentials are not JSON: {exc}") from None
    result: list[DeviceCredentials] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise SimConfigError(f"credentials entry {index} is not an object")
        device_id, token = item.get("device_id"), item.get("token")
        if not isinstance(device_id, str) or not device_id:
            raise SimConfigError(f"credentials entry {index} has no string 'device_id'")
        if not isinstance(token, str) or not token:
            raise SimConfigError(f"credentials entry {index} has no string 'token'")
        if device_id in seen:
            raise SimConfigError(f"credentials list device {device_id!r} twice")
        seen.add(device_id)
        result.append(DeviceCredentials(device_id, token))
    if not result:
        raise SimConfigError("the credentials list is empty")
    return tuple(result)


def load_credentials(path: Path, limit: int | None = None) -> tuple[DeviceCredentials, ...]:
    """Read a credentials file; `limit` keeps its first N entries (and requires that many)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimConfigError(f"cannot read credentials file {path}: {exc.strerror}") from None
    devices = parse_credentials(text)
    if limit is not None:
        if limit > len(devices):
            raise SimConfigError(f"{path} holds {len(devices)} devices, {limit} requested")
        devices = devices[:limit]
    return devices


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulation run needs; validated on construction."""

    devices: tuple[DeviceCredentials, ...]
    host: str = "127.0.0.1"
    port: int = 1883
    rate: float = 1.0  # messages per second per device
    count: int = 10  # messages per device; 0 = until stopped
    qos: int = 1
    protocol: int = 5  # MQTT 5 or 311 (3.1.1)
    metrics: tuple[str, ...] = ("temperature", "humidity")
    malformed_every: int = 0  # every K-th message (by seq) is broken JSON; 0 = never
    wrong_password: bool = False  # connect with a wrong token, to exercise refusal
    no_clock: bool = False  # flat objects without ts/seq, like a device without a clock
    # Closed loop for benchmarks: sample only while fewer than max_inflight messages await
    # their PUBACK, so "as fast as possible" measures the broker path, not a generator that
    # burns CPU producing messages it must drop.
    saturate: bool = False
    acked_log: Path | None = None  # "device_id seq ts_ms" appended per PUBACKed message
    max_inflight: int = 20  # QoS 1 messages awaiting PUBACK per connection (paho's default)
    buffer_limit: int = 10_000  # unacked messages kept per device; oldest dropped beyond
    ack_timeout: float = 30.0  # no PUBACK within this: the connection is treated as dead
    connect_timeout: float = 10.0
    keepalive: int = 30
    backoff_initial: float = 0.5  # first reconnect delay (before jitter), seconds
    backoff_max: float = 30.0
    refused_attempts: int = 3  # credential refusals in a row before a device gives up
    drain_timeout: float = 5.0  # on stop: how long in-flight messages may still be acked
    seed: int | None = None  # for reproducible values and jitter
    clock: Clock = field(default_factory=SystemClock, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.devices:
            problems.append("no devices")
        if len({d.device_id for d in self.devices}) != len(self.devices):
            problems.append("duplicate device ids")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} out of range")
        if not self.rate > 0:
            problems.append("rate must be > 0")
        if self.count < 0:
            problems.append("count must be >= 0")
        if self.qos not in (0, 1):
            problems.append("qos must be 0 or 1")
        if self.protocol not in (5, 311):
            problems.append("protocol must be 5 or 311")
        if not self.metrics:
            problems.append("at least one metric is needed")
        bad = [m for m in self.metrics if not METRIC_NAME.fullmatch(m)]
        if bad:
            problems.append(f"invalid metric names {bad} (allowed: [A-Za-z0-9_.-]{{1,64}})")
        if len(set(self.metrics)) != len(self.metrics):
            problems.append("duplicate metric names")
        if self.malformed_every < 0:
            problems.append("malformed_every must be >= 0")
        for name in ("max_inflight", "buffer_limit", "refused_attempts", "keepalive"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("ack_timeout", "connect_timeout", "backoff_initial", "backoff_max"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if self.drain_timeout < 0:
            problems.append("drain_timeout must be >= 0")
        if problems:
            raise SimConfigError("; ".join(problems))


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class SimStats:
    """What a run did. `sent` counts distinct messages published at least once."""

    devices: int
    sent: int
    acked: int  # QoS 1 messages the broker PUBACKed (QoS 0 has no acknowledgement)
    refused: int  # devices that gave up because their credentials were refused
    reconnects: int  # connections re-established after a loss
    errors: int  # failed connection attempts, lost connections, publish timeouts
    resent: int  # extra publishes of unacknowledged messages after reconnecting
    dropped: int  # messages discarded because a device's buffer was full
    unacked: int  # messages generated but never acknowledged (or, QoS 0, never sent)
    elapsed_s: float
    refused_devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "refused": self.refused,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "resent": self.resent,
            "dropped": self.dropped,
            "unacked": self.unacked,
            "devices": self.devices,
            "elapsed_s": round(self.elapsed_s, 3),
            "refused_devices": list(self.refused_devices),
        }


# --------------------------------------------------------------------------- pure cores


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One telemetry message as it goes on the wire, and again unchanged on a resend."""

    seq: int
    ts: int  # ms since the epoch; generation time (also the payload's "ts" unless no_clock)
    payload: bytes
    malformed: bool = False


# (start, step, low, high): plausible ranges so dashboards and rules see sane values.
_PROFILES: dict[str, tuple[float, float, float, float]] = {
    "temperature": (21.0, 0.15, -40.0, 85.0),
    "humidity": (45.0, 0.8, 0.0, 100.0),
    "pressure": (1013.25, 0.3, 870.0, 1085.0),
    "co2": (600.0, 12.0, 400.0, 5000.0),
    "battery": (3.9, 0.005, 3.0, 4.2),
    "voltage": (230.0, 0.8, 180.0, 260.0),
    "current": (2.0, 0.1, 0.0, 16.0),
    "light": (300.0, 20.0, 0.0, 10_000.0),
    "vibration": (0.2, 0.02, 0.0, 5.0),
}
_GENERIC_PROFILE = (50.0, 1.0, 0.0, 100.0)


class RandomWalk:
    """A value that drifts by small random steps inside a range, like a real sensor."""

    def __init__(self, metric: str, rng: random.Random) -> None:
        start, self._step, self._low, self._high = _PROFILES.get(metric, _GENERIC_PROFILE)
        self._value = start + rng.uniform(-10, 10) * self._step
        self._rng = rng

    def next(self) -> float:
        self._value += self._rng.gauss(0.0, self._step)
        # Reflect at the bounds instead of clamping, so the walk does not stick to a limit.
        if self._value > self._high:
            self._value = 2 * self._high - self._value
        if self._value < self._low:
            self._value = 2 * self._low - self._value
        return round(self._value, 2)


class TelemetryGenerator:
    """Produces a device's messages: seq counts from 1, ts strictly increases.

    Strictly increasing ts makes every message a distinct reading (the gateway identifies a
    reading by device, metric and ts), even at rates above 1000/s or when the clock steps back.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        rng: random.Random,
        *,
        malformed_every: int = 0,
        no_clock: bool = False,
    ) -> None:
        self._walks = {m: RandomWalk(m, rng) for m in metrics}
        self._malformed_every = malformed_every
        self._no_clock = no_clock
        self._seq = 0
        self._last_ts = -1

    def next(self, now_ms: int) -> OutgoingMessage:
        self._seq += 1
        ts = max(now_ms, self._last_ts + 1)
        self._last_ts = ts
        values = {metric: walk.next() for metric, walk in self._walks.items()}
        doc: dict[str, Any] = (
            values if self._no_clock else {"ts": ts, "seq": self._seq, "values": values}
        )
        payload = json.dumps(doc, separators=(",", ":")).encode()
        malformed = self._malformed_every > 0 and self._seq % self._malformed_every == 0
        if malformed:
            # Cut the closing brace: still recognisable to a human, invalid to any parser.
            payload = payload[:-1]
        return OutgoingMessage(self._seq, ts, payload, malformed)


class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    min(maximum, initial * 2**n), so a fleet that lost its broker together does not
    reconnect in lockstep."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng

    def delay(self, attempt: int) -> float:
        ceiling = min(self._maximum, self._initial * 2.0 ** min(attempt, 32))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


class Outbox:
    """A device's messages that still need the broker's acknowledgement, in seq order.

    Sending does not remove a message; only `ack` does. After a reconnect, `rewind` queues
    every unacknowledged message again, so nothing the broker did not confirm is lost.
    Bounded: beyond `capacity` the oldest message is dropped and counted, as firmware with a
    fixed buffer would.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._unacked: dict[int, OutgoingMessage] = {}  # insertion order = seq order
        self._to_send: deque[int] = deque()
        self._sent_once: set[int] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._unacked)

    def add(self, message: OutgoingMessage) -> None:
        while len(self._unacked) >= self._capacity:
            oldest = next(iter(self._unacked))
            self._forget(oldest)
            self.dropped += 1
        self._unacked[message.seq] = message
        self._to_send.append(message.seq)

    def next_to_send(self) -> tuple[OutgoingMessage, bool] | None:
        """The next message to publish and whether this is its first send (not a resend)."""
        while self._to_send:
            seq = self._to_send.popleft()
            message = self._unacked.get(seq)
            if message is None:  # dropped or acked while queued
                continue
            first = seq not in self._sent_once
            self._sent_once.add(seq)
            return message, first
        return None

    def ack(self, seq: int) -> bool:
        """Mark a message delivered; False if it was no longer pending."""
        if seq not in self._unacked:
            return False
        self._forget(seq)
        return True

    def rewind(self) -> None:
        """A new connection: everything unacknowledged goes out again, oldest first."""
        self._to_send = deque(self._unacked)

    def _forget(self, seq: int) -> None:
        del self._unacked[seq]
        self._sent_once.discard(seq)


def is_credential_refusal(rc: object) -> bool:
    value = rc.value if isinstance(rc, ReasonCode) else rc
    return value in CREDENTIAL_REFUSALS


# --------------------------------------------------------------------------- I/O


class AckedLog:
    """Appends "device_id seq ts_ms" per acknowledged message, flushed line by line, so a
    test can count what the broker confirmed even if the simulator is killed. Lines are
    short single writes in append mode, so several simulator processes may share a file."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")

    def record(self, device_id: str, seq: int, ts: int) -> None:
        self._file.write(f"{device_id} {seq} {ts}\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass(slots=True)
class _Counters:
    sent: int = 0
    acked: int = 0
    reconnects: int = 0
    errors: int = 0
    resent: int = 0
    dropped: int = 0
    unacked: int = 0
    refused_devices: list[str] = field(default_factory=list)


class _ConnectionLost(aiomqtt.MqttError):
    pass


async def _until_disconnected(client: aiomqtt.Client) -> None:
    # We subscribe to nothing, so the message iterator only ever ends by raising MqttError
    # when the connection drops: aiomqtt's public way to learn of a disconnection.
    async for _message in client.messages:
        pass
    raise _ConnectionLost("message stream ended")


class _MqttDevice:
    """One simulated device: a sampler task fills the outbox at the configured rate, the
    connection loop keeps a connection up and drains the outbox through it."""

    def __init__(
        self,
        creds: DeviceCredentials,
        config: SimConfig,
        rng: random.Random,
        counters: _Counters,
        acked_log: AckedLog | None,
    ) -> None:
        self.device_id = creds.device_id
        self._password = f"not-{creds.token}" if config.wrong_password else creds.token
        self._config = config
        self._counters = counters
        self._acked_log = acked_log
        self._topic = f"devices/{creds.device_id}/telemetry"
        # Real firmware picks a client id once per boot and keeps it across reconnects.
        self._client_id = f"sim-{creds.device_id}-{rng.getrandbits(32):08x}"
        self._generator = TelemetryGenerator(
            config.metrics,
            rng,
            malformed_every=config.malformed_every,
            no_clock=config.no_clock,
        )
        self._backoff = Backoff(config.backoff_initial, config.backoff_max, rng)
        self._outbox = Outbox(config.buffer_limit)
        self._wake = asyncio.Event()  # the outbox changed or a stop was requested
        self._space = asyncio.Event()  # a message was acknowledged (saturate mode)
        self._stop = asyncio.Event()
        self._sampling_done = False
        self._sampler: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        """Stop sampling; in-flight messages may still be acknowledged, then disconnect."""
        self._stop.set()
        self._space.set()
        self._wake.set()
        if self._sampler is not None:
            self._sampler.cancel()

    async def run(self) -> None:
        self._sampler = asyncio.create_task(self._sample(), name=f"sample-{self.device_id}")
        try:
            await self._connection_loop()
        finally:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._counters.unacked += len(self._outbox)
            self._counters.dropped += self._outbox.dropped

    async def _sample(self) -> None:
        # Due times are computed from the start (start + k/rate), never from the previous
        # tick, so sleep overshoot does not accumulate into drift. A late tick fires at once.
        config, clock = self._config, self._config.clock
        start = clock.monotonic()
        k = 0
        while config.count == 0 or k < config.count:
            if config.saturate:
                while len(self._outbox) >= config.max_inflight and not self._stop.is_set():
                    self._space.clear()
                    await self._space.wait()
            else:
                delay = start + k / config.rate - clock.monotonic()
                await asyncio.sleep(max(delay, 0.0))  # 0 still yields to the loop when behind
            self._outbox.add(self._generator.next(clock.now_ms()))
            self._wake.set()
            k += 1
        self._sampling_done = True
        self._wake.set()

    def _finished(self) -> bool:
        return self._sampling_done and len(self._outbox) == 0

    async def _connection_loop(self) -> None:
        failures = 0  # consecutive failed attempts; drives the backoff
        refusals = 0
        connected_before = False
        while not self._stop.is_set() and not self._finished():
            client = aiomqtt.Client(
                self._config.host,
                self._config.port,
                username=self.device_id,
                password=self._password,
                identifier=self._client_id,
                protocol=(
                    aiomqtt.ProtocolVersion.V5
                    if self._config.protocol == 5
                    else aiomqtt.ProtocolVersion.V311
                ),
                keepalive=self._config.keepalive,
                timeout=self._config.connect_timeout,
                max_inflight_messages=self._config.max_inflight,
            )
            # aiomqtt warns beyond 10 pending calls; our window is deliberate and bounded.
            client.pending_calls_threshold = self._config.max_inflight + 1
            try:
                async with client:
                    if connected_before:
                        self._counters.reconnects += 1
                        log.info("%s: reconnected", self.device_id)
                    connected_before = True
                    failures = refusals = 0
                    await self._session(client)
                return
            except MqttConnectError as exc:
                if is_credential_refusal(exc.rc):
                    refusals += 1
                    if refusals >= self._config.refused_attempts:
                        log.warning(
                            "%s: credentials refused %d times (%s); giving up",
                            self.device_id,
                            refusals,
                            exc,
                        )
                        self._counters.refused_devices.append(self.device_id)
                        return
                    log.info("%s: credentials refused (%s); retrying", self.device_id, exc)
                else:
                    self._counters.errors += 1
                    log.warning("%s: connection refused (%s); retrying", self.device_id, exc)
            except aiomqtt.MqttError as exc:
                self._counters.errors += 1
                log.warning("%s: connection failed or lost (%s); retrying", self.device_id, exc)
            delay = self._backoff.delay(failures)
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        """Publish until finished or stopped; raise MqttError when the connection breaks."""
        self._outbox.rewind()
        lost = asyncio.create_task(_until_disconnected(client))
        wake = asyncio.create_task(self._wake.wait())
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                while not self._stop.is_set() and len(inflight) < self._config.max_inflight:
                    item = self._outbox.next_to_send()
                    if item is None:
                        break
                    message, first = item
                    if first:
                        self._counters.sent += 1
                    else:
                        self._counters.resent += 1
                    inflight.add(asyncio.create_task(self._publish(client, message)))
                if not inflight and (self._stop.is_set() or self._finished()):
                    return
                done, _ = await asyncio.wait(
                    {lost, wake, *inflight}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done & inflight:
                    inflight.discard(task)
                    task.result()  # a failed publish leaves the connection unusable
                if lost in done:
                    lost.result()
                    raise _ConnectionLost("connection lost")
                if wake in done:
                    # Cleared before the next pass over the outbox, so no wake-up is lost.
                    self._wake.clear()
                    wake = asyncio.create_task(self._wake.wait())
        finally:
            leftovers = [lost, wake, *inflight]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

    async def _publish(self, client: aiomqtt.Client, message: OutgoingMessage) -> None:
        # With QoS 1 aiomqtt returns only after the PUBACK; QoS 0 once the packet is written.
        await client.publish(
            self._topic, message.payload, qos=self._config.qos, timeout=self._config.ack_timeout
        )
        if self._outbox.ack(message.seq) and self._config.qos == 1:
            self._space.set()
            self._counters.acked += 1
            if self._acked_log is not None:
                self._acked_log.record(self.device_id, message.seq, message.ts)


@contextlib.contextmanager
def _opened_log(path: Path | None) -> Iterator[AckedLog | None]:
    acked_log = AckedLog(path) if path is not None else None
    try:
        yield acked_log
    finally:
        if acked_log is not None:
            acked_log.close()


async def run_simulation(config: SimConfig, *, stop: asyncio.Event | None = None) -> SimStats:
    """Run every configured device until each has its `count` messages acknowledged (QoS 1)
    or sent (QoS 0), or gave up on refused credentials, or `stop` is set. On stop, devices
    stop sampling and get `drain_timeout` seconds for in-flight acknowledgements."""
    stop = stop if stop is not None else asyncio.Event()
    counters = _Counters()
    master = random.Random(config.seed)
    started = config.clock.monotonic()
    with _opened_log(config.acked_log) as acked_log:
        devices = [
            _MqttDevice(creds, config, random.Random(master.getrandbits(64)), counters, acked_log)
            for creds in config.devices
        ]
        tasks = [asyncio.create_task(d.run(), name=f"sim-{d.device_id}") for d in devices]
        stop_waiter = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while pending and not stop.is_set():
                done, _ = await asyncio.wait(
                    {*pending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {stop_waiter}:
                    pending.discard(task)
                    task.result()  # an unexpected failure (a bug, a full disk) is not hidden
            if pending:
                log.info("stop requested; draining in-flight messages")
                for device in devices:
                    device.request_stop()
                await asyncio.wait(pending, timeout=config.drain_timeout)
        finally:
            for task in [*tasks, stop_waiter]:
                task.cancel()
            results = await asyncio.gather(*tasks, stop_waiter, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result
    return SimStats(
        devices=len(config.devices),
        sent=counters.sent,
        acked=counters.acked,
        refused=len(counters.refused_devices),
        reconnects=counters.reconnects,
        errors=counters.errors,
        resent=counters.resent,
        dropped=counters.dropped,
        unacked=counters.unacked,
        elapsed_s=config.clock.monotonic() - started,
        refused_devices=tuple(counters.refused_devices),
    )
