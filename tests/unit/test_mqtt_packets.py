"""CONNECT/CONNACK codec: golden bytes, structural rejections, and property-based fuzzing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.ingest.mqtt.front.packets import (
    MAX_CONNECT_LEN,
    ConnectInfo,
    MalformedPacket,
    RefusalReason,
    UnsupportedProtocol,
    build_connack_refusal,
    parse_connack,
    parse_connect,
)

# -- an independent encoder, written from the spec, for round trips ---------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def b(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


@dataclass
class Connect:
    level: int = 4
    client_id: str = "c1"
    username: str | None = None
    password: bytes | None = None
    clean: bool = True
    keepalive: int = 60
    will: tuple[str, bytes, int, bool] | None = None  # topic, payload, qos, retain
    props: bytes = b""  # v5 connect properties (already encoded, without the length)
    will_props: bytes = b""

    def encode(self) -> bytes:
        name = "MQIsdp" if self.level == 3 else "MQTT"
        flags = (0x02 if self.clean else 0) | (0x80 if self.username is not None else 0)
        flags |= 0x40 if self.password is not None else 0
        if self.will:
            flags |= 0x04 | (self.will[2] << 3) | (0x20 if self.will[3] else 0)
        var = s(name) + bytes((self.level, flags)) + self.keepalive.to_bytes(2, "big")
        if self.level == 5:
            var += varint(len(self.props)) + self.props
        payload = s(self.client_id)
        if self.will:
            if self.level == 5:
                payload += varint(len(self.will_props)) + self.will_props
            payload += s(self.will[0]) + b(self.will[1])
        if self.username is not None:
            payload += s(self.username)
        if self.password is not None:
            payload += b(self.password)
        body = var + payload
        return bytes((0x10,)) + varint(len(body)) + body


# -- golden vectors ------------------------------------------------------------------------

# Captured from mosquitto_pub 2.0.11 -i pub1 -u dev1 -P secret -k 60 (first bytes it sends).
GOLDEN = {
    3: "102000064d514973647003c2003c0004707562310004646576310006736563726574",
    4: "101e00044d51545404c2003c0004707562310004646576310006736563726574",
    # v5 adds a property block: Receive Maximum (0x21) = 20.
    5: "102200044d51545405c2003c032100140004707562310004646576310006736563726574",
}
GOLDEN_311 = bytes.fromhex(GOLDEN[4])


@pytest.mark.parametrize("level", [3, 4, 5])
def test_golden_connects_from_mosquitto_pub(level: int) -> None:
    pkt = bytes.fromhex(GOLDEN[level])
    info = parse_connect(pkt)
    assert info == ConnectInfo(level, "pub1", "dev1", True, True, 60, len(pkt))


def test_mqtt31_mqisdp_connect() -> None:
    pkt = Connect(level=3, client_id="old", username="u", password=b"p").encode()
    info = parse_connect(pkt)
    assert info is not None
    assert (info.protocol_level, info.client_id, info.username) == (3, "old", "u")


def test_v5_properties_and_will_properties_are_skipped() -> None:
    # Session Expiry Interval (0x11, 4 bytes) + a User Property (0x26, two strings).
    props = b"\x11\x00\x00\x0e\x10" + b"\x26" + s("k") + s("v")
    will_props = b"\x01\x01"  # Payload Format Indicator
    pkt = Connect(
        level=5,
        client_id="c5",
        username="dev5",
        password=b"\x00\xff",
        clean=False,
        keepalive=0,
        will=("devices/dev5/status", b"gone", 1, True),
        props=props,
        will_props=will_props,
    ).encode()
    info = parse_connect(pkt)
    assert info == ConnectInfo(5, "c5", "dev5", True, False, 0, len(pkt))


def test_v5_password_without_username_is_allowed_but_not_in_311() -> None:
    head = bytes.fromhex("00044d51545405") + b"\x42\x00\x3c" + b"\x00" + s("c") + b(b"tok")
    info = parse_connect(b"\x10" + varint(len(head)) + head)
    assert info is not None and info.username is None and info.has_password
    head4 = bytes.fromhex("00044d51545404") + b"\x42\x00\x3c" + s("c") + b(b"tok")
    with pytest.raises(MalformedPacket, match="password flag"):
        parse_connect(b"\x10" + varint(len(head4)) + head4)


def test_prefixes_need_more_bytes_and_trailing_bytes_are_left_alone() -> None:
    pkt = GOLDEN_311
    for cut in range(len(pkt)):
        assert parse_connect(pkt[:cut]) is None
    info = parse_connect(pkt + b"\x82\x05")  # a pipelined SUBSCRIBE's first bytes
    assert info is not None and info.packet_len == len(pkt)


def _with_body(body: bytes) -> bytes:
    return b"\x10" + varint(len(body)) + body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x20\x02\x00\x00", "expected CONNECT"),
        (b"\x11\x00", "expected CONNECT"),  # reserved flags in the fixed header
        (b"\x10\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x10\x80\x00", "non-minimal"),
        (b"GET / HTTP/1.1\r\n", "expected CONNECT"),
        (_with_body(s("HTTP") + b"\x04\x02\x00\x3c" + s("c")), "unknown protocol name"),
        (_with_body(s("MQTT") + b"\x04\x03\x00\x3c" + s("c")), "reserved connect flag"),
        (_with_body(s("MQTT") + b"\x04\x1a\x00\x3c" + s("c")), "will QoS 3"),
        (_with_body(s("MQTT") + b"\x04\x22\x00\x3c" + s("c")), "without will flag"),
        (_with_body(s("MQTT") + b"\x04\x82\x00\x3c" + s("c")), "username"),
        (_with_body(s("MQTT") + b"\x04\x02\x00\x3c" + s("c") + b"x"), "unexpected bytes"),
        (_with_body(s("MQTT") + b"\x04\x02\x00\x3c" + b"\x00\x02\xc3\x28"), "UTF-8"),
        (_with_body(s("MQTT") + b"\x04\x82\x00\x3c" + s("c") + s("a\x00b")), "U\\+0000"),
        (_with_body(s("MQTT") + b"\x05\x02\x00\x3c" + b"\x05\x11" + s("c")), "past the end"),
    ],
)
def test_malformed_connects(data: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        parse_connect(data)


def test_oversized_connect_is_refused_from_its_header_alone() -> None:
    with pytest.raises(MalformedPacket, match="exceeds"):
        parse_connect(b"\x10" + varint(MAX_CONNECT_LEN + 1))
    big = Connect(client_id="x" * 60_000).encode()
    assert parse_connect(big) is not None  # under the cap is fine


@pytest.mark.parametrize("level", [0, 2, 6, 255])
def test_unknown_level_is_unsupported_protocol(level: int) -> None:
    with pytest.raises(UnsupportedProtocol) as err:
        parse_connect(_with_body(s("MQTT") + bytes((level,)) + b"\x02\x00\x3c" + s("c")))
    assert err.value.level == level
    with pytest.raises(UnsupportedProtocol):
        parse_connect(_with_body(s("MQIsdp") + b"\x04\x02\x00\x3c" + s("c")))


def test_connack() -> None:
    assert parse_connack(b"") is None
    assert parse_connack(b"\x20\x02\x00") is None
    assert parse_connack(b"\x20\x02\x01\x05") == (5, 4)
    # v5 with a property block and a following PUBLISH: only the CONNACK is measured.
    v5 = b"\x20\x09\x00\x86\x06\x1f" + s("bad")[:2] + b"bad"
    assert parse_connack(v5 + b"\x30\x00") == (0x86, len(v5))
    with pytest.raises(MalformedPacket):
        parse_connack(b"\x30\x02\x00\x00")
    with pytest.raises(MalformedPacket):
        parse_connack(b"\x20\x01\x00")


def test_refusals() -> None:
    assert build_connack_refusal(4, RefusalReason.LOCKED_OUT) == b"\x20\x02\x00\x05"
    assert build_connack_refusal(3, RefusalReason.LOCKED_OUT) == b"\x20\x02\x00\x05"
    assert build_connack_refusal(5, RefusalReason.LOCKED_OUT) == b"\x20\x03\x00\x97\x00"
    assert build_connack_refusal(5, RefusalReason.NOT_AUTHORIZED) == b"\x20\x03\x00\x87\x00"
    assert build_connack_refusal(4, RefusalReason.SERVER_UNAVAILABLE) == b"\x20\x02\x00\x03"
    assert build_connack_refusal(5, RefusalReason.SERVER_UNAVAILABLE) == b"\x20\x03\x00\x88\x00"
    for level in (3, 4, 5):
        for reason in RefusalReason:
            pkt = build_connack_refusal(level, reason)
            got = parse_connack(pkt)
            assert got is not None and got[1] == len(pkt) and got[0] != 0


# -- property-based ------------------------------------------------------------------------

mqtt_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=40,
)


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    level = draw(st.sampled_from([3, 4, 5]))
    username = draw(st.none() | mqtt_text)
    password = draw(st.none() | st.binary(max_size=40))
    if level < 5 and username is None:
        password = None
    will = draw(
        st.none() | st.tuples(mqtt_text, st.binary(max_size=40), st.integers(0, 2), st.booleans())
    )
    props = draw(st.binary(max_size=30)) if level == 5 else b""
    will_props = draw(st.binary(max_size=30)) if level == 5 else b""
    return Connect(
        level=level,
        client_id=draw(mqtt_text),
        username=username,
        password=password,
        clean=draw(st.booleans()),
        keepalive=draw(st.integers(0, 0xFFFF)),
        will=will,
        props=props,
        will_props=will_props,
    )


@settings(deadline=None)  # a busy CI machine must not turn a slow example into a failure
@given(connects(), st.binary(max_size=20))
def test_round_trip(c: Connect, trailing: bytes) -> None:
    pkt = c.encode()
    info = parse_connect(pkt + trailing)
    assert info == ConnectInfo(
        protocol_level=c.level,
        client_id=c.client_id,
        username=c.username,
        has_password=c.password is not None,
        clean_start=c.clean,
        keepalive=c.keepalive,
        packet_len=len(pkt),
    )
    # Arriving in pieces changes nothing: every strict prefix asks for more bytes.
    cut = len(pkt) // 2
    assert parse_connect(pkt[:cut]) is None


def _parse_or_malformed(data: bytes) -> ConnectInfo | None:
    try:
        info = parse_connect(data)
    except MalformedPacket:
        return None
    if info is not None:
        assert 2 <= info.packet_len <= len(data)
        assert info.protocol_level in (3, 4, 5)
    return info


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_malformed(data: bytes) -> None:
    _parse_or_malformed(data)
    _parse_or_malformed(b"\x10" + data)  # past the first-byte check, into the varint and body
    try:
        got = parse_connack(data)
    except MalformedPacket:
        return
    if got is not None:
        assert got[1] <= len(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connects(), st.data())
def test_mutated_connects_parse_or_fail_cleanly(c: Connect, data: st.DataObject) -> None:
    pkt = bytearray(c.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(pkt) - 1))
        pkt[pos] = data.draw(st.integers(0, 255))
    info = _parse_or_malformed(bytes(pkt))
    if info is not None and info.packet_len == len(pkt):
        # Whatever parsed must re-parse identically from exactly its own bytes.
        assert parse_connect(bytes(pkt[: info.packet_len])) == info
