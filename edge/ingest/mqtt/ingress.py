"""MQTT ingress: the gateway's own subscriber on the broker, with acknowledge-after-commit.

Our own small MQTT 5 client (edge.ingest.mqtt.client), not paho-mqtt or aiomqtt: they cost 3x the
CPU per message or cannot acknowledge manually (docs/decisions/mqtt-ingress-client.md).
The session reads everything the kernel holds per wakeup, classifies it as one group and sends
one Ingest per group to the store actor. A QoS 1 PUBLISH is acknowledged to the broker only after
its reading (or its rejection record) has committed; the broker keeps unacknowledged messages
in the gateway's persistent session and redelivers them after a crash or a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from common.actors import ActorRef
from common.backoff import Backoff, spread
from common.clock import Clock
from common.model import Reading
from common.problem import Problem
from edge.ingest.classify import Classifier, Outcome
from edge.ingest.mqtt.client import InboundPublish, MqttSession, MqttSessionError, SessionConfig
from edge.ingest.mqtt.client.session import IMPLEMENTATION_ERROR
from edge.storage.actor import Confirm, Ingest, StoreMsg
from edge.storage.records import Rejection

log = logging.getLogger("iotsphere.ingress")

TELEMETRY_FILTER = "devices/+/telemetry"
SESSION_EXPIRY_S = 0xFFFFFFFF  # the gateway's session never expires: the broker holds readings
RECEIVE_MAXIMUM = 2000  # un-acked messages in flight to us: must cover a few batches
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0


class IngressDisconnected(Exception):
    """The broker connection ended or could not be made; the ingress reconnects."""


def telemetry_device(topic: str) -> str | None:
    """The device id of a `devices/{id}/telemetry` topic, else None."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[2] != "telemetry" or not parts[1]:
        return None
    return parts[1]


class MqttIngress:
    """Runs until cancelled: connect, subscribe, classify, hand to the store, ack on commit."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        store: ActorRef[StoreMsg],
        classifier: Classifier,
        clock: Clock,
        client_id: str = "iotsphere-ingress",
    ) -> None:
        self._host, self._port = host, port
        self._username, self._password = username, password
        self._store = store
        self._classifier = classifier
        self._clock = clock
        self._client_id = client_id
        self.connected = asyncio.Event()
        self.stats = {
            "received": 0,
            "acked": 0,
            "rejected": 0,
            "reconnects": 0,
            "failures": 0,
            "retained_replays": 0,
            "replies_dropped": 0,
        }
        self._session: _Session | None = None

    def reply(
        self,
        device_id: str,
        problem: Problem | None,
        readings: int,
        response_topic: str | None,
        correlation: bytes | None,
    ) -> None:
        """Publish an outcome the MQTT front committed: the problem document to the device's
        errors topic, the v5 response to its response topic. Best effort while the broker
        connection is down (counted): the outcome itself is durable in the store."""
        session = self._session
        mqtt = session._mqtt if session is not None else None
        if mqtt is None or not mqtt.is_open:
            self.stats["replies_dropped"] += 1
            return
        publish_outcome(mqtt, device_id, problem, readings, response_topic, correlation)

    async def run(self) -> None:
        backoff = Backoff(0.2, 10.0, spread())
        while True:
            try:
                self._session = _Session(self)
                await self._session.run()
                backoff.reset()
            except IngressDisconnected as exc:
                self.connected.clear()
                self.stats["reconnects"] += 1
                log.warning(
                    "ingress: broker connection lost (%s); retrying in %.1fs",
                    exc,
                    backoff.ceiling_s,
                )
                await asyncio.sleep(backoff.next_s())


# One classified message: (the publish, its device id, the outcome).
_Classified = tuple[InboundPublish, str, Outcome]


class _Session:
    """One broker connection: groups of PUBLISHes in, one Ingest per group, PUBACKs on commit."""

    def __init__(self, ingress: MqttIngress) -> None:
        self._in = ingress
        self._groups: asyncio.Queue[Ingest] = asyncio.Queue()  # bounded by RECEIVE_MAXIMUM
        self._mqtt: MqttSession | None = None

    async def run(self) -> None:
        ing = self._in
        config = SessionConfig(
            host=ing._host,
            port=ing._port,
            client_id=ing._client_id,
            username=ing._username,
            password=ing._password,
            keepalive_s=KEEPALIVE_S,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            receive_maximum=RECEIVE_MAXIMUM,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )
        try:
            # The persistent session's backlog may arrive with the CONNACK: _classify queues
            # it, and _forward hands it on once running.
            mqtt = await MqttSession.connect(config, self._classify)
        except MqttSessionError as exc:
            raise IngressDisconnected(str(exc)) from exc
        self._mqtt = mqtt
        forward = asyncio.create_task(self._forward(), name="ingress-forward")
        try:
            await mqtt.subscribe(TELEMETRY_FILTER, qos=1)
            ing.connected.set()
            log.info("ingress: subscribed to %s", TELEMETRY_FILTER)
            waitables: set[asyncio.Future[Any]] = {mqtt.closed, forward}
            await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
            if forward.done():
                forward.result()  # _forward only ends by raising
            raise IngressDisconnected(mqtt.closed.result())
        except MqttSessionError as exc:
            raise IngressDisconnected(str(exc)) from exc
        finally:
            forward.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await forward
            mqtt.close("ingress session ended")

    def _classify(self, batch: list[InboundPublish]) -> None:
        """Called by the MQTT session once per socket read that held PUBLISHes."""
        ing = self._in
        now = ing._clock.now_ms()
        readings: list[Reading] = []
        rejections: list[Rejection] = []
        messages: list[_Classified] = []
        stray: list[int] = []
        classify = ing._classifier.classify
        for msg in batch:
            device_id = telemetry_device(msg.topic)
            # A retained message arrives flagged retain only as a replay on (re)subscribe; its
            # first delivery came without the flag and is stored already.
            if device_id is None or msg.retain:
                if msg.packet_id is not None:
                    stray.append(msg.packet_id)
                if msg.retain:
                    ing.stats["retained_replays"] += 1
                continue
            outcome = classify(device_id, msg.payload, msg.content_type, now, "mqtt")
            readings.extend(outcome.readings)
            if outcome.rejection is not None:
                rejections.append(outcome.rejection)
            messages.append((msg, device_id, outcome))
        if stray and self._mqtt is not None:
            ing.stats["acked"] += self._mqtt.ack(stray)
        ing.stats["received"] += len(messages)
        if messages:
            self._groups.put_nowait(Ingest(readings, rejections, self._confirmer(messages)))

    async def _forward(self) -> None:
        """Hand groups to the store actor in order, waiting when its mailbox is full."""
        while True:
            group = await self._groups.get()
            await self._in._store.send(group)

    def _confirmer(self, messages: Sequence[_Classified]) -> Confirm:
        def confirm(error: BaseException | None) -> None:
            mqtt = self._mqtt
            if mqtt is None:  # cannot happen: groups reach the store only after connect
                return
            if error is not None:
                # Not acknowledged: drop the connection so the broker redelivers them.
                self._in.stats["failures"] += 1
                mqtt.close(f"store commit failed: {error}", IMPLEMENTATION_ERROR)
                return
            acked = mqtt.ack([m.packet_id for m, _, _ in messages if m.packet_id is not None])
            self._in.stats["acked"] += acked
            self._in.stats["rejected"] += sum(1 for _, _, o in messages if not o.accepted)
            if not mqtt.is_open:
                return  # replies would go nowhere; the broker redelivers, we reply then
            for msg, device_id, outcome in messages:
                if outcome.problem is not None or msg.response_topic:
                    publish_outcome(
                        mqtt, device_id, outcome.problem, len(outcome.readings),
                        msg.response_topic, msg.correlation_data,
                    )  # fmt: skip

        return confirm


def answerable_topic(device_id: str, topic: str) -> bool:
    """A response topic the gateway may publish to: under the device's own prefix, and not a
    telemetry topic (the answer would come back in as a reading of that device)."""
    return topic.startswith(f"devices/{device_id}/") and telemetry_device(topic) is None


def publish_outcome(
    mqtt: MqttSession,
    device_id: str,
    problem: Problem | None,
    readings: int,
    response_topic: str | None,
    correlation: bytes | None,
) -> None:
    """The device-visible outcome of a committed message: a problem document on its errors
    topic, and (MQTT 5) the outcome on its response topic when that is a topic it may be
    answered on (see answerable_topic)."""
    if problem is not None:
        mqtt.publish(
            f"devices/{device_id}/errors",
            problem.to_json(),
            qos=1,
            content_type="application/problem+json",
        )
    if response_topic and answerable_topic(device_id, response_topic):
        body: dict[str, object] = {"status": "accepted" if problem is None else "rejected"}
        if problem is None:
            body["readings"] = readings
        else:
            body["problem"] = problem.to_dict()
        mqtt.publish(
            response_topic,
            json.dumps(body).encode(),
            qos=1,
            content_type="application/json",
            correlation_data=correlation,
        )
