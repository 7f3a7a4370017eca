"""The MQTT 5 client codec: round trips, incremental framing, and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ingest.mqtt.client.codec import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    CodecError,
    ConnAck,
    Disconnect,
    InboundPublish,
    OtherPacket,
    PacketReader,
    PingResp,
    PubAck,
    SubAck,
    decode_packet,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_pubacks,
    encode_publish,
    encode_suback,
    encode_subscribe,
    encode_varint,
)
from edge.ingest.mqtt.front.packets import parse_connect


def publish_bytes(
    topic: str = "devices/d1/telemetry",
    payload: bytes = b'{"t": 1}',
    qos: int = 1,
    packet_id: int | None = 7,
    props: bytes = b"\x00",
    flags: int | None = None,
) -> bytes:
    """A PUBLISH assembled by hand, so decoding is not checked against our own encoder only."""
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode()
    if packet_id is not None:
        body += packet_id.to_bytes(2, "big")
    body += props + payload
    first = 0x30 | (qos << 1) if flags is None else 0x30 | flags
    return bytes((first,)) + encode_varint(len(body)) + body


def prop_block(raw: bytes) -> bytes:
    return encode_varint(len(raw)) + raw


def utf8(s: str) -> bytes:
    return len(s.encode()).to_bytes(2, "big") + s.encode()


# ------------------------------------------------------------------ round trips


def test_connect_is_what_the_gateway_front_parses() -> None:
    raw = encode_connect(
        "iotsphere-ingress",
        keepalive=30,
        clean_start=False,
        session_expiry=0xFFFFFFFF,
        receive_maximum=2000,
        username="iotsphere-ingress",
        password="s3cret",
    )
    info = parse_connect(raw)
    assert info is not None
    assert info.protocol_level == 5
    assert (info.client_id, info.username, info.has_password) == (
        "iotsphere-ingress",
        "iotsphere-ingress",
        True,
    )
    assert (info.clean_start, info.keepalive, info.packet_len) == (False, 30, len(raw))
    # properties: Session Expiry Interval (0x11) and Receive Maximum (0x21), in that order
    assert b"\x08\x11\xff\xff\xff\xff\x21\x07\xd0" in raw
    bare = parse_connect(encode_connect("c", keepalive=0, clean_start=True))
    assert bare is not None and bare.username is None and not bare.has_password
    assert bare.clean_start


def test_subscribe_pingreq_puback_disconnect_bytes() -> None:
    assert encode_subscribe(0x0102, "devices/+/telemetry", 1) == (
        b"\x82\x19\x01\x02\x00" + utf8("devices/+/telemetry") + b"\x01"
    )
    assert PINGREQ_BYTES == b"\xc0\x00"
    assert encode_puback(0x1234) == b"\x40\x02\x12\x34"
    assert encode_pubacks([1, 0xFFFF]) == b"\x40\x02\x00\x01\x40\x02\xff\xff"
    assert encode_disconnect() == b"\xe0\x00"
    assert encode_disconnect(0x81) == b"\xe0\x01\x81"


@given(
    topic=st.text(
        st.characters(blacklist_characters="+#\x00", blacklist_categories=["Cs"]),
        min_size=1,
        max_size=40,
    ),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1, 2]),
    packet_id=st.integers(1, 0xFFFF),
    retain=st.booleans(),
    content_type=st.none() | st.text(max_size=20).filter(lambda s: "\x00" not in s),
    response_topic=st.none() | st.just("devices/d1/replies"),
    correlation_data=st.none() | st.binary(max_size=16),
)
def test_publish_round_trip(
    topic: str,
    payload: bytes,
    qos: int,
    packet_id: int,
    retain: bool,
    content_type: str | None,
    response_topic: str | None,
    correlation_data: bytes | None,
) -> None:
    pid = packet_id if qos else None
    raw = encode_publish(
        topic,
        payload,
        qos=qos,
        packet_id=pid,
        retain=retain,
        dup=bool(qos),
        content_type=content_type,
        response_topic=response_topic,
        correlation_data=correlation_data,
    )
    assert decode_packet(raw) == InboundPublish(
        topic, payload, qos, pid, retain, bool(qos), content_type, response_topic, correlation_data
    )


def test_publish_skips_other_properties_exactly() -> None:
    props = prop_block(
        b"\x01\x01"  # payload format indicator: UTF-8
        + b"\x02\x00\x00\x0e\x10"  # message expiry 3600
        + b"\x26"
        + utf8("k1")
        + utf8("v1")  # user property
        + b"\x0b\x80\x01"  # subscription identifier 128 (a 2-byte varint)
        + b"\x03"
        + utf8("application/senml+json")
        + b"\x26"
        + utf8("k1")
        + utf8("again")  # user properties may repeat
        + b"\x0b\x05"  # a second subscription identifier
        + b"\x08"
        + utf8("devices/d1/r")
        + b"\x09\x00\x03abc"
    )
    msg = decode_packet(publish_bytes(props=props, payload=b"[1]"))
    assert msg == InboundPublish(
        "devices/d1/telemetry",
        b"[1]",
        1,
        7,
        content_type="application/senml+json",
        response_topic="devices/d1/r",
        correlation_data=b"abc",
    )


def test_qos2_publish_decodes() -> None:
    msg = decode_packet(publish_bytes(qos=2, packet_id=9))
    assert isinstance(msg, InboundPublish) and (msg.qos, msg.packet_id) == (2, 9)


def test_server_packets_round_trip() -> None:
    assert decode_packet(encode_connack(0, session_present=True)) == ConnAck(0, True)
    assert decode_packet(encode_connack(0x86)) == ConnAck(0x86, False)
    assert decode_packet(encode_connack(0, receive_maximum=20, server_keepalive=5)) == ConnAck(
        0, False, receive_maximum=20, server_keepalive=5
    )
    # A 3.1.1 CONNACK (no properties) reads as what it is: code 1, a refusal.
    assert decode_packet(b"\x20\x02\x00\x01") == ConnAck(1, False)
    assert decode_packet(encode_suback(3, [1])) == SubAck(3, (1,))
    assert decode_packet(encode_suback(3, [0x87])) == SubAck(3, (0x87,))
    assert decode_packet(encode_puback(5)) == PubAck(5, 0)
    assert decode_packet(encode_puback(5, 0x87)) == PubAck(5, 0x87)
    assert decode_packet(b"\x40\x04\x00\x05\x10\x00") == PubAck(5, 0x10)
    assert decode_packet(PINGRESP_BYTES) == PingResp()
    assert decode_packet(encode_disconnect()) == Disconnect(0)
    assert decode_packet(encode_disconnect(0x8E, "session taken over")) == Disconnect(
        0x8E, "session taken over"
    )
    assert decode_packet(b"\x50\x02\x00\x01") == OtherPacket(5, b"\x00\x01")  # PUBREC


# ------------------------------------------------------------------ incremental framing


@settings(max_examples=200)
@given(
    payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_any_chunking_yields_the_same_packets(payloads: list[bytes], cuts: list[int]) -> None:
    wire = [
        encode_publish(f"devices/d{i}/telemetry", p, qos=1, packet_id=i + 1)
        for i, p in enumerate(payloads)
    ]
    wire.insert(1, PINGRESP_BYTES)
    stream = b"".join(wire)
    expected = [decode_packet(w) for w in wire]
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    reader = PacketReader()
    got = [p for chunk in chunks for p in reader.feed(chunk)]
    assert got == expected
    assert reader.buffered == 0


def test_large_packet_in_small_chunks() -> None:
    raw = encode_publish("devices/d/telemetry", bytes(200_000), qos=1, packet_id=1)
    reader = PacketReader()
    got = [p for i in range(0, len(raw), 1000) for p in reader.feed(raw[i : i + 1000])]
    assert len(got) == 1 and isinstance(got[0], InboundPublish) and len(got[0].payload) == 200_000


# ------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (publish_bytes(flags=0b0110), "QoS 3"),
        (publish_bytes(qos=0, packet_id=None, flags=0b1000), "DUP at QoS 0"),
        (publish_bytes(packet_id=0), "packet id 0"),
        (publish_bytes(topic="devices/+/telemetry"), "wildcard in topic"),
        (publish_bytes(topic=""), "empty topic (alias)"),
        (publish_bytes(props=prop_block(b"\x23\x00\x01")), "topic alias"),
        (publish_bytes(props=prop_block(b"\x11\x00\x00\x00\x01")), "session expiry in PUBLISH"),
        (publish_bytes(props=prop_block(b"\x7f\x00")), "unknown property"),
        (publish_bytes(props=prop_block(b"\x01\x01\x01\x01")), "duplicate property"),
        (publish_bytes(props=prop_block(b"\x0b\x00")), "subscription id 0"),
        (publish_bytes(props=b"\x05\x03\x00\x01", payload=b""), "props past the end"),
        (publish_bytes(props=prop_block(b"\x03\x00\x05ab")), "string past the properties"),
        (publish_bytes(props=prop_block(b"\x03" + utf8("a") + b"\x26" + utf8("k"))), "half pair"),
        (publish_bytes(props=b"\x80\x00"), "non-minimal property length"),
        (b"\x30\x04\x00\x02\xff\xfe", "topic not UTF-8"),
        (b"\x30\x05\x00\x03a\x00b\x00", "topic with U+0000"),
        (b"\x30\x03\x00\x01a", "no property length"),
        (b"\x32\x04\x00\x01a\x00", "packet id missing"),
        (b"\x10\x00", "CONNECT from a server"),
        (b"\x80\x00", "SUBSCRIBE from a server"),
        (b"\xc0\x00", "PINGREQ from a server"),
        (b"\x00\x00", "packet type 0"),
        (b"\xd1\x00", "PINGRESP with flags"),
        (b"\xd0\x01\x00", "PINGRESP with a body"),
        (b"\x20\x03\x02\x00\x00", "CONNACK reserved flag"),
        (b"\x20\x03\x01\x86\x00", "refusal with session present"),
        (b"\x20\x06\x00\x00\x03\x21\x00\x00", "receive maximum 0"),
        (b"\x20\x04\x00\x00\x00\x00", "CONNACK trailing byte"),
        (b"\x90\x03\x00\x01\x00", "SUBACK without codes"),
        (b"\x40\x02\x00\x00", "PUBACK packet id 0"),
        (b"\x40\x01\x00", "PUBACK too short"),
        (b"\x30\xff\xff\xff\xff\x01", "remaining length over 4 bytes"),
        (b"\x30\x80\x00", "non-minimal remaining length"),
    ],
)
def test_malformed_packets_raise(raw: bytes, why: str) -> None:
    reader = PacketReader()
    with pytest.raises(CodecError):
        reader.feed(raw + PINGRESP_BYTES)
    with pytest.raises(CodecError):  # a failed stream stays failed
        reader.feed(PINGRESP_BYTES)


def test_oversized_packet_rejected_before_it_is_buffered() -> None:
    reader = PacketReader(max_packet_len=1000)
    with pytest.raises(CodecError):
        reader.feed(b"\x30\xe9\x07")  # declares 1001 bytes; none of them has arrived


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_ever_raise_codec_error(data: bytes) -> None:
    reader = PacketReader()
    try:
        for packet in reader.feed(data):
            assert isinstance(
                packet,
                ConnAck | SubAck | InboundPublish | PubAck | PingResp | Disconnect | OtherPacket,
            )
    except CodecError:
        pass


@settings(max_examples=500)
@given(
    position=st.integers(0, 10_000),
    value=st.integers(0, 255),
    cut=st.integers(0, 10_000),
)
def test_corrupted_valid_stream_only_ever_raises_codec_error(
    position: int, value: int, cut: int
) -> None:
    stream = bytearray(
        encode_connack(0, session_present=True, receive_maximum=100)
        + encode_publish(
            "devices/d1/telemetry",
            b'{"a": 1}',
            qos=1,
            packet_id=3,
            content_type="application/json",
            response_topic="devices/d1/r",
            correlation_data=b"\x01\x02",
        )
        + encode_suback(1, [1])
        + encode_puback(2)
        + encode_disconnect(0x8E, "taken over")
    )
    stream[position % len(stream)] = value
    data = bytes(stream)
    reader = PacketReader()
    split = cut % (len(data) + 1)
    try:
        reader.feed(data[:split])
        reader.feed(data[split:])
    except CodecError:
        pass
