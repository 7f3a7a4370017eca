"""The front's packet-stream helpers and its telemetry tap, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from common.problem import Problem
from edge.ingest.intake import IngestResult, IngestUnavailable, Pending
from edge.ingest.mqtt.client.codec import encode_publish
from edge.ingest.mqtt.front.packets import MalformedPacket
from edge.ingest.mqtt.front.stream import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    BrokerFramer,
    ClientPackets,
    encode_ack,
    parse_publish,
)
from edge.ingest.mqtt.front.telemetry import TapCounters, TelemetryTap

# -- pure helpers ---------------------------------------------------------------------------


def v311_publish(topic: str, payload: bytes, qos: int = 1, packet_id: int = 7,
                 dup: bool = False) -> bytes:  # fmt: skip
    body = len(topic).to_bytes(2, "big") + topic.encode()
    if qos:
        body += packet_id.to_bytes(2, "big")
    body += payload
    first = 0x30 | qos << 1 | (0x08 if dup else 0)
    assert len(body) < 128
    return bytes((first, len(body))) + body


def test_parse_publish_v311_and_v5() -> None:
    raw = v311_publish("devices/d1/telemetry", b'{"t":1}', qos=1, packet_id=300)
    pub = parse_publish(raw[0], raw, 2, len(raw), v5=False)
    assert (pub.topic, pub.qos, pub.packet_id, pub.payload) == (
        "devices/d1/telemetry", 1, 300, b'{"t":1}',
    )  # fmt: skip
    raw5 = encode_publish(
        "devices/d1/telemetry",
        b"\xa1\x01\x02",
        qos=2,
        packet_id=9,
        content_type="application/cbor",
        response_topic="devices/d1/replies",
        correlation_data=b"c1",
    )
    pub5 = parse_publish(raw5[0], raw5, 2, len(raw5), v5=True)
    assert pub5.qos == 2 and pub5.packet_id == 9 and pub5.payload == b"\xa1\x01\x02"
    assert pub5.content_type == "application/cbor"
    assert pub5.response_topic == "devices/d1/replies" and pub5.correlation_data == b"c1"


def test_parse_publish_refuses_wildcards_qos3_and_id_zero() -> None:
    for raw in (
        v311_publish("devices/+/telemetry", b"{}"),
        bytes((0x36,)) + v311_publish("a", b"{}")[1:],
        v311_publish("a", b"{}", packet_id=0),
        v311_publish("a\x00b", b"{}"),
        bytes((0x32, 5, 0, 2, 0xC3, 0x28, 0)),  # a topic that is not UTF-8
        bytes((0x32, 4, 0, 9, 0x61, 0)),  # the topic length runs past the packet
    ):
        with pytest.raises(MalformedPacket):
            parse_publish(raw[0], raw, 2, len(raw), v5=False)


def test_client_packets_frame_across_chunks() -> None:
    a = v311_publish("devices/d1/telemetry", b"1")
    b = PINGREQ_BYTES
    stream = a + b + a
    splitter = ClientPackets()
    got: list[bytes] = []
    for i in range(0, len(stream), 3):  # three bytes at a time
        buf, packets = splitter.feed(stream[i : i + 3])
        got += [bytes(buf[start:end]) for _f, start, _b, end in packets]
    assert got == [a, b, a]


def test_client_packets_refuse_an_oversized_packet_from_its_header() -> None:
    splitter = ClientPackets(max_packet=100)
    with pytest.raises(MalformedPacket):
        splitter.feed(b"\x30\xff\x01")  # remaining length 255


def test_broker_framer_tracks_boundaries_and_swallows_owed_pingresps() -> None:
    framer = BrokerFramer()
    framer.swallow_pingresps = 1
    suback = b"\x90\x03\x00\x01\x00"
    stream = PINGRESP_BYTES + suback + PINGRESP_BYTES
    out = bytearray()
    boundaries = []
    for byte in stream:  # byte by byte: headers split everywhere
        out += framer.feed(bytes((byte,)))
        boundaries.append(framer.at_boundary)
    assert bytes(out) == suback + PINGRESP_BYTES  # only the first (owed) PINGRESP dropped
    assert boundaries[-1] and not boundaries[2]
    assert framer.swallow_pingresps == 0


# -- the tap --------------------------------------------------------------------------------


@dataclass
class FakeHost:
    to_client: bytearray = field(default_factory=bytearray)
    to_broker: bytearray = field(default_factory=bytearray)
    paused: list[bool] = field(default_factory=list)
    closed: bool = False
    denied_topics: list[str] = field(default_factory=list)

    def write_client(self, data: bytes | bytearray) -> None:
        self.to_client += data

    def write_upstream(self, data: bytes | bytearray) -> None:
        self.to_broker += data

    def pause_client(self, paused: bool) -> None:
        self.paused.append(paused)

    def close(self) -> None:
        self.closed = True

    def denied(self, topic: str) -> None:
        self.denied_topics.append(topic)


BAD = Problem(slug="bad", title="Bad", status=400, detail="bad payload")


class FakeIntake:
    """Groups every submit into one pending commit until `commit()`."""

    def __init__(self) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.payloads: list[bytes] = []
        self.refuse = False
        self.sealed = 0  # seal_soon() calls: one per read that held telemetry
        self.runs: list[int] = []  # plain messages taken per submit_plain_run call

    def submit(self, device_id: str, payload: bytes, content_format: str | None,
               transport: str) -> Pending:  # fmt: skip
        if self.refuse:
            raise IngestUnavailable("the store queue is full")
        self.payloads.append(payload)
        result = IngestResult(0, BAD) if payload == b"bad" else IngestResult(1)
        return Pending(self.future, result)

    def submit_plain_run(
        self, device_id: str, payloads: Sequence[bytes]
    ) -> tuple[Pending | None, int]:
        """Payloads starting with "{" play the plain messages."""
        if self.refuse:
            return None, 0
        n = next((i for i, p in enumerate(payloads) if not p.startswith(b"{")), len(payloads))
        self.payloads += payloads[:n]
        self.runs.append(n)
        return (Pending(self.future, IngestResult(n)) if n else None), n

    def seal_soon(self) -> None:
        self.sealed += 1

    def commit(self, error: Exception | None = None) -> None:
        if error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(error)
        self.future = asyncio.get_running_loop().create_future()


def make_tap(*, v5: bool = False, upstream: bool = True, keepalive: int = 0
             ) -> tuple[TelemetryTap, FakeHost, FakeIntake, list[tuple[object, ...]]]:  # fmt: skip
    host, intake = FakeHost(), FakeIntake()
    replies: list[tuple[object, ...]] = []
    tap = TelemetryTap(
        host, "d1", v5=v5, keepalive_s=keepalive, intake=intake,
        replies=lambda *a: replies.append(a), counters=TapCounters(), upstream=upstream,
    )  # fmt: skip
    return tap, host, intake, replies


async def test_puback_only_after_the_commit_and_in_order() -> None:
    tap, host, intake, replies = make_tap()
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", packet_id=1))
    tap.client_data(v311_publish("devices/d1/telemetry", b"bad", packet_id=2))
    assert host.to_client == b"" and host.to_broker == b""
    assert intake.sealed == 2  # each read's telemetry goes to the store without a delay
    intake.commit()
    await asyncio.sleep(0)
    assert bytes(host.to_client) == encode_ack(4, 1, v5=False) + encode_ack(4, 2, v5=False)
    assert replies == [("d1", BAD, 0, None, None)]  # the problem document is published


async def test_a_read_of_plain_messages_is_one_run_acked_in_order_with_the_others() -> None:
    """One read: two plain messages, a rejected one, a plain one on the ThingsBoard topic, a
    QoS 2 one and another device's topic. The plain ones at the start go to the intake as
    one run; from the first that is not plain on, each goes its own way; the PUBACKs follow
    the device's order."""
    tap, host, intake, replies = make_tap()
    read = (
        v311_publish("devices/d1/telemetry", b"{1}", packet_id=1)
        + v311_publish("devices/d1/telemetry", b"{2}", packet_id=2, dup=True)  # a resend
        + v311_publish("devices/d1/telemetry", b"bad", packet_id=3)
        + v311_publish("v1/devices/me/telemetry", b"{4}", packet_id=4)
        + v311_publish("devices/d1/telemetry", b"{5}", qos=2, packet_id=5)
        + v311_publish("devices/d2/telemetry", b"{6}", packet_id=6)
    )
    tap.client_data(read)
    assert intake.runs == [2]  # 1 and 2; "bad" ends the run: it and 4 go one by one
    assert intake.payloads == [b"{1}", b"{2}", b"bad", b"{4}", b"{5}"]
    assert intake.sealed == 1
    assert bytes(host.to_broker) == v311_publish("devices/d2/telemetry", b"{6}", packet_id=6)
    assert host.to_client == b""  # nothing before the commit
    intake.commit()
    await asyncio.sleep(0)
    acks = [encode_ack(4, i, v5=False) for i in (1, 2, 3, 4)] + [encode_ack(5, 5, v5=False)]
    assert bytes(host.to_client) == b"".join(acks)
    assert replies == [("d1", BAD, 0, None, None)]
    assert (tap._c.telemetry, tap._c.acked, tap._unacked) == (5, 5, 0)


async def test_a_run_whose_commit_fails_acknowledges_nothing() -> None:
    tap, host, intake, _ = make_tap()
    tap.client_data(b"".join(v311_publish("devices/d1/telemetry", b"{}", packet_id=i)
                             for i in (1, 2, 3)))  # fmt: skip
    intake.commit(IngestUnavailable("the store commit failed: No space left on device"))
    await asyncio.sleep(0)
    assert host.to_client == b"" and host.closed


async def test_packet_id_zero_and_v5_publishes_do_not_take_the_run() -> None:
    tap, host, intake, _ = make_tap()
    tap.client_data(v311_publish("devices/d1/telemetry", b"{}", packet_id=0))
    assert intake.runs == [] and host.closed  # parse_publish refused it: a protocol error
    tap5, _host5, intake5, _ = make_tap(v5=True)
    tap5.client_data(encode_publish("devices/d1/telemetry", b"{}", qos=1, packet_id=1))
    assert intake5.runs == [] and intake5.payloads == [b"{}"]


async def test_other_packets_and_topics_go_to_the_broker_unchanged() -> None:
    tap, host, intake, _ = make_tap()
    other = v311_publish("devices/d1/status", b"up", packet_id=3)
    foreign = v311_publish("devices/d2/telemetry", b"1", packet_id=4)
    tap.client_data(other + foreign + PINGREQ_BYTES)
    assert bytes(host.to_broker) == other + foreign + PINGREQ_BYTES
    assert intake.payloads == [] and intake.sealed == 0
    assert host.denied_topics == ["devices/d2/telemetry"]  # audited; the broker's ACL refuses


async def test_ack_waits_for_a_packet_boundary_in_the_broker_stream() -> None:
    tap, host, intake, _ = make_tap()
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", packet_id=1))
    message = v311_publish("devices/d1/commands", b"reboot", qos=0)
    tap.broker_data(message[:5])  # half a packet from the broker
    intake.commit()
    await asyncio.sleep(0)
    assert bytes(host.to_client) == message[:5]
    tap.broker_data(message[5:])
    assert bytes(host.to_client) == message + encode_ack(4, 1, v5=False)


async def test_qos2_pubrec_after_commit_resend_stored_once_pubrel_answered() -> None:
    tap, host, intake, _ = make_tap()
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", qos=2, packet_id=5))
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", qos=2, packet_id=5, dup=True))
    intake.commit()
    await asyncio.sleep(0)
    assert bytes(host.to_client) == encode_ack(5, 5, v5=False)
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", qos=2, packet_id=5, dup=True))
    assert intake.payloads == [b"1"]  # stored once
    tap.client_data(b"\x62\x02\x00\x05")  # PUBREL 5: ours to complete
    assert bytes(host.to_client).endswith(b"\x50\x02\x00\x05" + b"\x70\x02\x00\x05")
    assert host.to_broker == b""


async def test_failed_commit_acknowledges_nothing_and_disconnects_v5_quota_exceeded() -> None:
    tap, host, intake, _ = make_tap(v5=True)
    raw = encode_publish("devices/d1/telemetry", b"1", qos=1, packet_id=1)
    tap.client_data(raw)
    intake.commit(IngestUnavailable("the store commit failed: No space left on device"))
    await asyncio.sleep(0)
    assert bytes(host.to_client) == b"\xe0\x01\x97" and host.closed


async def test_refused_submit_disconnects_v311_without_any_ack() -> None:
    tap, host, intake, _ = make_tap()
    intake.refuse = True
    tap.client_data(v311_publish("devices/d1/telemetry", b"1"))
    assert host.to_client == b"" and host.closed


async def test_keepalive_pings_the_broker_only_for_an_active_device() -> None:
    tap, host, _intake, _ = make_tap(keepalive=60)
    tap._tick()  # a silent device: no ping, the broker may time it out
    assert host.to_broker == b""
    tap.client_data(v311_publish("devices/d1/telemetry", b"1", qos=0))
    tap._tick()  # only telemetry since the last tick: the broker saw nothing
    assert bytes(host.to_broker) == PINGREQ_BYTES
    tap.broker_data(PINGRESP_BYTES)  # the answer to our ping is not the device's
    assert host.to_client == b""
    tap.close()


async def test_front_served_session_refuses_subscriptions_and_other_topics() -> None:
    tap, host, intake, _ = make_tap(v5=True, upstream=False)
    subscribe = b"\x82\x0e\x00\x0a\x00" + b"\x00\x08" + b"attr/#/x"[:8] + b"\x01"
    tap.client_data(subscribe)
    assert bytes(host.to_client) == b"\x90\x04\x00\x0a\x00\x87"
    host.to_client.clear()
    tap.client_data(encode_publish("v1/devices/me/attributes", b"{}", qos=1, packet_id=2))
    assert bytes(host.to_client) == b"\x40\x03\x00\x02\x87"
    assert intake.payloads == [] and host.denied_topics == ["v1/devices/me/attributes"]
    tap.client_data(PINGREQ_BYTES)
    assert bytes(host.to_client).endswith(PINGRESP_BYTES)
    tap.client_data(encode_publish("v1/devices/me/telemetry", b"7", qos=1, packet_id=3))
    assert intake.payloads == [b"7"]
    tap.close()


# -- replies --------------------------------------------------------------------------------


class RecordingMqtt:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic: str, payload: bytes, **_: object) -> None:
        self.topics.append(topic)


def test_a_response_topic_that_is_a_telemetry_topic_is_never_answered() -> None:
    """Found by Paho's request_response test: the answer published to the device's telemetry
    topic came back in through the ingress as two readings of that device."""
    from edge.ingest.mqtt.ingress import answerable_topic, publish_outcome

    assert answerable_topic("d1", "devices/d1/replies")
    assert not answerable_topic("d1", "devices/d1/telemetry")
    assert not answerable_topic("d1", "devices/d2/replies")
    mqtt = RecordingMqtt()
    for topic in ("devices/d1/telemetry", "devices/d2/replies", "devices/d1/replies"):
        publish_outcome(mqtt, "d1", None, 1, topic, b"c")  # type: ignore[arg-type]
    assert mqtt.topics == ["devices/d1/replies"]
