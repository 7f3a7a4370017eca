"""The MQTT 5 client session against a real Mosquitto; a fake broker where one must misbehave."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace

import aiomqtt
import pytest
from paho.mqtt.properties import Properties

from edge.ingest.mqtt.client import (
    ConnectRefused,
    InboundPublish,
    MqttSession,
    MqttSessionError,
    SessionConfig,
)
from edge.ingest.mqtt.client.codec import (
    PINGREQ_BYTES,
    PacketReader,
    encode_connack,
    encode_disconnect,
    encode_puback,
)
from edge.ingest.mqtt.front.packets import parse_connect
from tests.support.mosquitto import running_broker
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(30)

USER, PASSWORD = "gw", "gw-secret"
_ids = itertools.count()


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_broker(tmp_path_factory.mktemp("mosquitto"), {USER: PASSWORD}) as broker:
        yield broker.port


def config(port: int, **kw: object) -> SessionConfig:
    base = SessionConfig(
        host="127.0.0.1",
        port=port,
        client_id=f"test-session-{next(_ids)}",
        username=USER,
        password=PASSWORD,
        keepalive_s=30,
        connect_timeout_s=5,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll state that protocol callbacks change (they have no event to wait on)."""
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def v5_client(port: int, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        username=USER,
        password=PASSWORD,
        identifier=f"{name}-{next(_ids)}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    async with v5_client(port, "pub") as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


# ------------------------------------------------------------------ against Mosquitto


async def test_receive_ack_and_redelivery_of_what_was_not_acked(broker_port: int) -> None:
    got: list[InboundPublish] = []
    cfg = config(broker_port, clean_start=True, session_expiry_s=300, receive_maximum=100)
    first = await MqttSession.connect(cfg, got.extend)
    assert not first.session_present
    assert await first.subscribe("devices/+/telemetry", qos=1) == 1
    await publish_all(broker_port, "devices/d1/telemetry", [b"m1", b"m2", b"m3", b"m4"])
    await until(lambda: len(got) == 4, "four messages")
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("devices/d1/telemetry", f"m{i}".encode(), 1) for i in range(1, 5)
    ]
    assert len({m.packet_id for m in got}) == 4 and None not in {m.packet_id for m in got}
    assert first.ack([got[0].packet_id or 0, got[1].packet_id or 0]) == 2
    first.close()
    assert await first.closed == "closed by the client"
    assert first.ack([got[2].packet_id or 0]) == 0  # a closed session acknowledges nothing

    again: list[InboundPublish] = []
    second = await MqttSession.connect(replace(cfg, clean_start=False), again.extend)
    try:
        assert second.session_present
        await until(lambda: len(again) == 2, "redelivery")
        assert [(m.payload, m.dup) for m in again] == [(b"m3", True), (b"m4", True)]
        # m1 and m2 were acknowledged: the next thing after the redelivery is a new message
        await publish_all(broker_port, "devices/d1/telemetry", [b"m5"])
        await until(lambda: len(again) == 3, "m5")
        assert again[2].payload == b"m5" and not again[2].dup
        second.ack(m.packet_id or 0 for m in again)
    finally:
        second.close()
        await second.closed


async def test_failing_handler_drops_the_connection_and_the_broker_redelivers(
    broker_port: int,
) -> None:
    def explode(group: list[InboundPublish]) -> None:
        raise RuntimeError("store is down")

    cfg = config(broker_port, clean_start=True, session_expiry_s=300)
    session = await MqttSession.connect(cfg, explode)
    await session.subscribe("devices/+/telemetry")
    await publish_all(broker_port, "devices/d2/telemetry", [b"x"])
    reason = await asyncio.wait_for(session.closed, 5)
    assert "publish handler failed" in reason

    got: list[InboundPublish] = []
    retry = await MqttSession.connect(replace(cfg, clean_start=False), got.extend)
    try:
        await until(lambda: len(got) == 1, "redelivery")
        assert got[0].payload == b"x"
    finally:
        retry.close()


async def test_keepalive_pings_keep_the_connection_open(broker_port: int) -> None:
    # Mosquitto drops a client silent for 1.5 x keepalive; we ping every keepalive / 2, and a
    # ping without its PINGRESP would end the session at the next one.
    session = await MqttSession.connect(config(broker_port, keepalive_s=1), lambda g: None)
    try:
        await until(lambda: session.stats["pings"] >= 4, "four pings")
        assert session.is_open and not session.closed.done()
    finally:
        session.close()


async def test_wrong_password_is_refused(broker_port: int) -> None:
    with pytest.raises(ConnectRefused) as info:
        await MqttSession.connect(config(broker_port, password="wrong"), lambda g: None)
    assert info.value.reason_code == 0x87  # Mosquitto 2.0 answers "not authorized"


async def test_connection_refused_port_is_a_session_error() -> None:
    with pytest.raises(MqttSessionError, match="cannot connect"):
        await MqttSession.connect(config(free_port()), lambda g: None)


async def test_session_taken_over_ends_the_first_connection(broker_port: int) -> None:
    cfg = config(broker_port)
    first = await MqttSession.connect(cfg, lambda g: None)
    second = await MqttSession.connect(cfg, lambda g: None)
    try:
        # Mosquitto 2.0.11 just closes the socket here (no DISCONNECT 0x8E)
        assert await asyncio.wait_for(first.closed, 5) == "connection closed by the broker"
        assert not first.is_open and second.is_open
    finally:
        second.close()


async def test_publish_with_properties_reaches_an_aiomqtt_v5_subscriber(
    broker_port: int,
) -> None:
    async with v5_client(broker_port, "sub") as sub:
        await sub.subscribe("replies/#", qos=1)
        session = await MqttSession.connect(config(broker_port), lambda g: None)
        try:
            session.publish(
                "replies/d1",
                b'{"status": "accepted"}',
                qos=1,
                content_type="application/json",
                response_topic="replies/d1/back",
                correlation_data=b"\x00corr\xff",
            )
            session.publish("replies/plain", b"q0")
            received = []
            async with asyncio.timeout(5):
                async for message in sub.messages:
                    received.append(message)
                    if len(received) == 2:
                        break
            await until(lambda: session.inflight == 0, "our PUBACK")
            assert session.stats["publish_errors"] == 0
        finally:
            session.close()
    by_topic = {m.topic.value: m for m in received}
    reply = by_topic["replies/d1"]
    assert reply.payload == b'{"status": "accepted"}' and reply.qos == 1
    props = reply.properties
    assert isinstance(props, Properties)
    assert getattr(props, "ContentType", None) == "application/json"
    assert getattr(props, "ResponseTopic", None) == "replies/d1/back"
    assert getattr(props, "CorrelationData", None) == b"\x00corr\xff"
    assert by_topic["replies/plain"].payload == b"q0"


# ------------------------------------------------------------------ against a fake broker


class FakeBroker:
    """Accepts one client, answers its CONNECT with a given CONNACK, records what follows."""

    def __init__(self, connack: bytes) -> None:
        self.connack = connack
        self.packets: list[InboundPublish] = []
        self.pings = 0
        self.writer: asyncio.StreamWriter | None = None
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        buf = b""
        info = None
        while info is None:
            buf += await reader.read(4096)
            info = parse_connect(buf)
        writer.write(self.connack)
        decoder = PacketReader()
        rest = buf[info.packet_len :]
        while True:
            if rest == PINGREQ_BYTES:  # the only client-only packet these tests provoke
                self.pings += 1
                rest = b""
            for packet in decoder.feed(rest):
                assert isinstance(packet, InboundPublish)
                self.packets.append(packet)
            rest = await reader.read(4096)
            if not rest:
                return

    async def __aenter__(self) -> FakeBroker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        if self.writer is not None:
            self.writer.close()
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def silent_broker() -> AsyncIterator[FakeBroker]:
    async with FakeBroker(encode_connack(0)) as broker:
        yield broker


async def test_missing_pingresp_ends_the_session(silent_broker: FakeBroker) -> None:
    session = await MqttSession.connect(
        config(silent_broker.port, keepalive_s=1, username=None, password=None), lambda g: None
    )
    reason = await asyncio.wait_for(session.closed, 5)
    assert "no PINGRESP" in reason
    assert silent_broker.pings == 1


async def test_broker_disconnect_reason_ends_the_session() -> None:
    async with FakeBroker(encode_connack(0)) as broker:
        session = await MqttSession.connect(config(broker.port, keepalive_s=0), lambda g: None)
        assert broker.writer is not None
        broker.writer.write(encode_disconnect(0x8B, "server shutting down"))
        reason = await asyncio.wait_for(session.closed, 5)
        assert reason == "broker sent DISCONNECT 0x8b (server shutting down)"


async def test_qos1_publishes_respect_the_brokers_receive_maximum() -> None:
    async with FakeBroker(encode_connack(0, receive_maximum=2)) as broker:
        session = await MqttSession.connect(config(broker.port, keepalive_s=0), lambda g: None)
        try:
            for i in range(5):
                session.publish("devices/d1/errors", f"p{i}".encode(), qos=1)
            await until(lambda: len(broker.packets) == 2, "two publishes")
            await asyncio.sleep(0.05)  # a third would have arrived by now if one were sent
            assert [p.payload for p in broker.packets] == [b"p0", b"p1"]
            assert session.inflight == 5
            assert broker.writer is not None
            broker.writer.write(encode_puback(broker.packets[0].packet_id or 0))
            await until(lambda: len(broker.packets) == 3, "a third publish after one PUBACK")
            assert broker.packets[2].payload == b"p2" and session.inflight == 4
            pids = [p.packet_id for p in broker.packets]
            assert len(set(pids)) == 3 and None not in pids
        finally:
            session.close()
