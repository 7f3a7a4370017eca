"""One simulated MQTT device, the only place the simulator does MQTT I/O: MqttDevice keeps its
own connection (username = device id, password = token, its own client id), samples its
metrics at a fixed rate without drift, publishes to `devices/{id}/telemetry` and, on connection
loss, reconnects with backoff and resends everything not PUBACKed, with the same seq and ts.
Refused credentials are retried a few times, then the device gives up and says so in the
counters all devices of a run share (SimCounters); PUBACKed messages can be logged (AckedLog)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from firmware_stubs.credentials import DeviceCredentials
from firmware_stubs.mqtt_sim_config import SimConfig
from firmware_stubs.redelivery import Backoff, Outbox
from firmware_stubs.telemetry import OutgoingMessage, TelemetryGenerator

log = logging.getLogger("iotsphere.sim.mqtt")

# CONNACK codes that mean "these credentials will not work": retrying them quickly only
# feeds the gateway's lockout. 4/5 are MQTT 3.1.1 codes (paho maps them to 0x86/0x87);
# 0x8A banned, 0x8C bad authentication method, 0x97 quota exceeded (the gateway's lockout).
CREDENTIAL_REFUSALS = frozenset({4, 5, 0x86, 0x87, 0x8A, 0x8C, 0x97})


def is_credential_refusal(rc: object) -> bool:
    value = rc.value if isinstance(rc, ReasonCode) else rc
    return value in CREDENTIAL_REFUSALS


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
class SimCounters:
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


class MqttDevice:
    """One simulated device: a sampler task fills the outbox at the configured rate, the
    connection loop keeps a connection up and drains the outbox through it."""

    def __init__(
        self,
        creds: DeviceCredentials,
        config: SimConfig,
        rng: random.Random,
        counters: SimCounters,
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
