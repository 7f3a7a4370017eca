"""MQTT 5 client-side wire format: encoders for what a client sends, decoders for what it gets.

Pure: no sockets, no clocks. `PacketReader.feed(bytes)` frames and decodes every complete
packet in a chunk at once (a broker hands a busy subscriber dozens per socket read) and keeps
the partial tail for the next chunk. Anything that breaks the spec's structural rules raises
CodecError, after which the connection must be dropped (MQTT 5 section 4.13).

Framing and the bounded field cursor come from edge.ingest.mqtt.front.packets (the front's CONNECT
parser), so both sides of the gateway read MQTT's varints and strings the same way.

Wire reference: MQTT 5.0 (OASIS, 2019), sections 2 (format, properties) and 3 (packets).
Encoders for the server's packets (CONNACK, SUBACK, ...) exist for tests and fake brokers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from edge.ingest.mqtt.front.packets import MalformedPacket, Reader, decode_fixed_header

# Packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

MAX_PACKET_LEN = 268_435_455  # the largest remaining length a 4-byte varint can say

# Property identifiers (section 2.2.2.2) the client reads or writes by name.
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEPALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27

_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: dict[int, int] = {
    0x01: _BYTE,  # payload format indicator
    0x02: _U32,  # message expiry interval
    0x03: _UTF8,  # content type
    0x08: _UTF8,  # response topic
    0x09: _BINARY,  # correlation data
    0x0B: _VARINT,  # subscription identifier
    0x11: _U32,  # session expiry interval
    0x12: _UTF8,  # assigned client identifier
    0x13: _U16,  # server keep alive
    0x15: _UTF8,  # authentication method
    0x16: _BINARY,  # authentication data
    0x17: _BYTE,  # request problem information
    0x18: _U32,  # will delay interval
    0x19: _BYTE,  # request response information
    0x1A: _UTF8,  # response information
    0x1C: _UTF8,  # server reference
    0x1F: _UTF8,  # reason string
    0x21: _U16,  # receive maximum
    0x22: _U16,  # topic alias maximum
    0x23: _U16,  # topic alias
    0x24: _BYTE,  # maximum qos
    0x25: _BYTE,  # retain available
    0x26: _PAIR,  # user property
    0x27: _U32,  # maximum packet size
    0x28: _BYTE,  # wildcard subscription available
    0x29: _BYTE,  # subscription identifier available
    0x2A: _BYTE,  # shared subscription available
}
# Which properties each packet a client receives may carry (section 3.x.2.2). Anything else
# is a protocol error; user properties and subscription identifiers may repeat.
_CONNACK_PROPS = frozenset(
    {0x11, 0x21, 0x24, 0x25, 0x27, 0x12, 0x22, 0x1F, 0x26, 0x28, 0x29, 0x2A, 0x13, 0x1A}
    | {0x1C, 0x15, 0x16}
)
_PUBLISH_PROPS = frozenset({0x01, 0x02, 0x23, 0x08, 0x09, 0x26, 0x0B, 0x03})
_ACK_PROPS = frozenset({0x1F, 0x26})
_DISCONNECT_PROPS = frozenset({0x11, 0x1F, 0x26, 0x1C})
_REPEATABLE = frozenset({USER_PROPERTY, SUBSCRIPTION_ID})

# Fixed-header flags the spec prescribes for each type (PUBLISH's carry dup/qos/retain).
_REQUIRED_FLAGS = {t: 0 for t in range(1, 16)} | {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}
_CLIENT_TO_SERVER = frozenset({CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ})

_U16_STRUCT = struct.Struct(">H")


class CodecError(MalformedPacket):
    """Bytes that are not valid MQTT 5 from a server; the connection must be dropped."""


# -------------------------------------------------------------------- decoded packets


@dataclass(frozen=True, slots=True)
class ConnAck:
    reason_code: int  # 0 success, >= 0x80 refused (e.g. 0x86 bad user name or password)
    session_present: bool
    receive_maximum: int = 65_535  # how many of our QoS 1 publishes may be unacknowledged
    server_keepalive: int | None = None  # overrides the keepalive we asked for
    maximum_qos: int = 2
    reason_string: str | None = None


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reason_codes: tuple[int, ...]  # granted QoS 0..2, or >= 0x80 refused, one per filter


@dataclass(frozen=True, slots=True)
class InboundPublish:
    """A PUBLISH as our own frozen value: only the fields and properties the gateway uses."""

    topic: str
    payload: bytes
    qos: int
    packet_id: int | None  # None for QoS 0
    retain: bool = False
    dup: bool = False
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int = 0
    reason_string: str | None = None


@dataclass(frozen=True, slots=True)
class OtherPacket:
    """A well-framed server packet this client never asks for (PUBREC, UNSUBACK, AUTH...)."""

    packet_type: int
    body: bytes


Packet = ConnAck | SubAck | InboundPublish | PubAck | PingResp | Disconnect | OtherPacket


# -------------------------------------------------------------------- decoding


class PacketReader:
    """Incremental decoder: feed it socket chunks, get back every complete packet in order.

    A partial packet is kept as a list of chunks until its declared length has arrived, so a
    large packet trickling in costs one join, not a copy per chunk.
    """

    def __init__(self, max_packet_len: int = MAX_PACKET_LEN) -> None:
        self._max_len = max_packet_len
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._need = 0  # bytes the pending tail must reach before decoding is worth trying
        self._failed = False

    def feed(self, data: bytes) -> list[Packet]:
        if self._failed:
            raise CodecError("the stream already failed to decode")
        if self._pending:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need:
                return []
            data = b"".join(self._pending)
            self._pending.clear()
        packets: list[Packet] = []
        view = memoryview(data)
        size, pos = len(data), 0
        try:
            while pos < size:
                header = decode_fixed_header(view[pos:], self._max_len)
                if header is None:
                    self._need = size - pos + 1
                    break
                first, remaining, header_len = header
                end = pos + header_len + remaining
                if end > size:
                    self._need = end - pos
                    break
                packets.append(_decode(first, data, pos + header_len, end))
                pos = end
        except CodecError:
            self._failed = True
            raise
        except MalformedPacket as exc:  # from the shared framing and field cursor
            self._failed = True
            raise CodecError(str(exc)) from exc
        if pos < size:
            tail = data[pos:]
            self._pending = [tail]
            self._pending_len = len(tail)
        else:
            self._pending_len = 0
        return packets

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet held back for the next feed."""
        return self._pending_len


def decode_packet(data: bytes) -> Packet:
    """Decode exactly one complete packet (tests, tools); CodecError on anything else."""
    reader = PacketReader()
    packets = reader.feed(data)
    if len(packets) != 1 or reader.buffered:
        raise CodecError(f"expected one complete packet, got {len(packets)} (+{reader.buffered} B)")
    return packets[0]


# one return per MQTT packet type:
def _decode(first: int, data: bytes, start: int, end: int) -> Packet:  # noqa: PLR0911
    ptype, flags = first >> 4, first & 0x0F
    if ptype == PUBLISH:  # the hot path: checked first
        return _decode_publish(flags, data, start, end)
    if ptype == 0 or ptype in _CLIENT_TO_SERVER:
        raise CodecError(f"packet type {ptype} is never sent by a server")
    if flags != _REQUIRED_FLAGS[ptype]:
        raise CodecError(f"packet type {ptype} with reserved flags 0x{flags:x}")
    r = Reader(data, start, end)
    if ptype == PUBACK:
        packet_id = _packet_id(r)
        reason = r.u8("PUBACK reason code") if r.remaining() else 0
        if r.remaining():
            _properties(r, _ACK_PROPS, "PUBACK")
        _expect_end(r, "PUBACK")
        return PubAck(packet_id, reason)
    if ptype == PINGRESP:
        _expect_end(r, "PINGRESP")
        return PingResp()
    if ptype == CONNACK:
        return _decode_connack(r)
    if ptype == SUBACK:
        packet_id = _packet_id(r)
        _properties(r, _ACK_PROPS, "SUBACK")
        codes = r.take(r.remaining(), "SUBACK reason codes")
        if not codes:
            raise CodecError("SUBACK without reason codes")
        return SubAck(packet_id, tuple(codes))
    if ptype == DISCONNECT:
        reason = r.u8("DISCONNECT reason code") if r.remaining() else 0
        props = _properties(r, _DISCONNECT_PROPS, "DISCONNECT") if r.remaining() else {}
        _expect_end(r, "DISCONNECT")
        reason_string = props.get(REASON_STRING)
        return Disconnect(reason, reason_string if isinstance(reason_string, str) else None)
    return OtherPacket(ptype, bytes(data[start:end]))


def _decode_publish(flags: int, data: bytes, start: int, end: int) -> InboundPublish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise CodecError("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise CodecError("PUBLISH with DUP set at QoS 0")
    r = Reader(data, start, end)
    topic = r.utf8("topic name")
    if not topic:
        # Only a topic alias may stand for an empty name, and this client never allows the
        # server any (Topic Alias Maximum stays at its default of 0).
        raise CodecError("PUBLISH with an empty topic name")
    if "+" in topic or "#" in topic:
        raise CodecError("PUBLISH topic name contains a wildcard")
    packet_id = _packet_id(r) if qos else None
    content_type = response_topic = correlation_data = None
    if not r.remaining():
        raise CodecError("PUBLISH without a property length")
    if data[r.pos]:
        props = _properties(r, _PUBLISH_PROPS, "PUBLISH")
        if TOPIC_ALIAS in props:
            raise CodecError("PUBLISH with a topic alias, which was never allowed")
        content_type = props.get(CONTENT_TYPE)
        response_topic = props.get(RESPONSE_TOPIC)
        correlation_data = props.get(CORRELATION_DATA)
    else:
        r.pos += 1  # property length 0: the common case, no parsing
    return InboundPublish(
        topic,
        data[r.pos : end],
        qos,
        packet_id,
        bool(flags & 0x01),
        dup,
        content_type if isinstance(content_type, str) else None,
        response_topic if isinstance(response_topic, str) else None,
        correlation_data if isinstance(correlation_data, bytes) else None,
    )


def _decode_connack(r: Reader) -> ConnAck:
    ack_flags = r.u8("CONNACK flags")
    if ack_flags & 0xFE:
        raise CodecError("CONNACK with reserved flags set")
    reason = r.u8("CONNACK reason code")
    # A 3.1.1-only broker answers a v5 CONNECT with a 2-byte CONNACK (code 1, unacceptable
    # protocol version): read it as a refusal rather than as garbage.
    props = _properties(r, _CONNACK_PROPS, "CONNACK") if r.remaining() else {}
    _expect_end(r, "CONNACK")
    session_present = bool(ack_flags & 0x01)
    if session_present and reason >= 0x80:
        raise CodecError("CONNACK refusal with session present")
    receive_max = props.get(RECEIVE_MAXIMUM, 65_535)
    if receive_max == 0:
        raise CodecError("CONNACK Receive Maximum 0")
    keepalive = props.get(SERVER_KEEPALIVE)
    maximum_qos = props.get(MAXIMUM_QOS, 2)
    reason_string = props.get(REASON_STRING)
    assert isinstance(receive_max, int) and isinstance(maximum_qos, int)
    if maximum_qos > 1:
        maximum_qos = 2  # only 0 and 1 may be sent; absence means 2
    return ConnAck(
        reason,
        session_present,
        receive_max,
        keepalive if isinstance(keepalive, int) else None,
        maximum_qos,
        reason_string if isinstance(reason_string, str) else None,
    )


def _packet_id(r: Reader) -> int:
    packet_id = r.u16("packet identifier")
    if packet_id == 0:
        raise CodecError("packet identifier 0")
    return packet_id


def _expect_end(r: Reader, what: str) -> None:
    if r.remaining():
        raise CodecError(f"{r.remaining()} unexpected bytes at the end of {what}")


PropertyValue = int | str | bytes


# one branch per MQTT 5 property type:
def _properties(r: Reader, allowed: frozenset[int], what: str) -> dict[int, PropertyValue]:  # noqa: PLR0912
    """Read a property list; return the last value of each (user properties are checked only)."""
    length = r.varint(f"{what} property length")
    if length > r.remaining():
        raise CodecError(f"{what} properties run past the end of the packet")
    end = r.pos + length
    found: dict[int, PropertyValue] = {}
    while r.pos < end:
        ident = r.varint(f"{what} property identifier")
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None or ident not in allowed:
            raise CodecError(f"property 0x{ident:02x} is not allowed in {what}")
        if ident in found and ident not in _REPEATABLE:
            raise CodecError(f"property 0x{ident:02x} appears twice in {what}")
        value: PropertyValue
        if kind == _BYTE:
            value = r.u8("byte property")
        elif kind == _U16:
            value = r.u16("two-byte property")
        elif kind == _U32:
            value = int.from_bytes(r.take(4, "four-byte property"), "big")
        elif kind == _VARINT:
            value = r.varint("varint property")
            if ident == SUBSCRIPTION_ID and value == 0:
                raise CodecError("subscription identifier 0")
        elif kind == _UTF8:
            value = r.utf8("string property")
        elif kind == _BINARY:
            value = r.binary("binary property")
        else:  # a user property: a name and a value, both strings
            value = r.utf8("user property name")
            r.utf8("user property value")
        if r.pos > end:
            raise CodecError(f"a {what} property runs past the property length")
        found[ident] = value
    return found


# -------------------------------------------------------------------- encoding


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_PACKET_LEN:
        raise ValueError(f"varint {value} out of range")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _binary(raw)


def _binary(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise ValueError("string or binary field longer than 65535 bytes")
    return _U16_STRUCT.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _props(items: Iterable[tuple[int, PropertyValue]]) -> bytes:
    out = bytearray()
    for ident, value in items:
        kind = _PROPERTY_TYPES[ident]
        out += encode_varint(ident)
        if kind == _BYTE:
            assert isinstance(value, int)
            out.append(value)
        elif kind == _U16:
            assert isinstance(value, int)
            out += value.to_bytes(2, "big")
        elif kind == _U32:
            assert isinstance(value, int)
            out += value.to_bytes(4, "big")
        elif kind == _VARINT:
            assert isinstance(value, int)
            out += encode_varint(value)
        elif kind == _UTF8:
            assert isinstance(value, str)
            out += _utf8(value)
        elif kind == _BINARY:
            assert isinstance(value, bytes)
            out += _binary(value)
        else:
            raise ValueError("user properties are not encoded by this client")
    return encode_varint(len(out)) + bytes(out)


def encode_connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    session_expiry: int = 0,
    receive_maximum: int = 65_535,
    username: str | None = None,
    password: bytes | str | None = None,
) -> bytes:
    if not 0 <= keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {keepalive} out of range")
    if not 1 <= receive_maximum <= 0xFFFF:
        raise ValueError(f"receive maximum {receive_maximum} out of range")
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    props: list[tuple[int, PropertyValue]] = []
    if session_expiry:
        props.append((SESSION_EXPIRY, session_expiry))
    if receive_maximum != 65_535:
        props.append((RECEIVE_MAXIMUM, receive_maximum))
    body = _utf8("MQTT") + bytes((5, flags)) + keepalive.to_bytes(2, "big") + _props(props)
    body += _utf8(client_id)
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _binary(password.encode() if isinstance(password, str) else password)
    return _packet(CONNECT << 4, body)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    if not 1 <= packet_id <= 0xFFFF or qos not in (0, 1, 2):
        raise ValueError("bad packet identifier or QoS")
    body = _U16_STRUCT.pack(packet_id) + b"\x00" + _utf8(topic_filter) + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def encode_publish(  # noqa: PLR0913 - the PUBLISH fields as keywords
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    packet_id: int | None = None,
    retain: bool = False,
    dup: bool = False,
    content_type: str | None = None,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
) -> bytes:
    if qos not in (0, 1, 2) or (packet_id is None) != (qos == 0):
        raise ValueError("QoS 1 and 2 need a packet identifier, QoS 0 must not have one")
    props: list[tuple[int, PropertyValue]] = []
    if content_type is not None:
        props.append((CONTENT_TYPE, content_type))
    if response_topic is not None:
        props.append((RESPONSE_TOPIC, response_topic))
    if correlation_data is not None:
        props.append((CORRELATION_DATA, correlation_data))
    first = PUBLISH << 4 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = _utf8(topic)
    if packet_id is not None:
        body += _U16_STRUCT.pack(packet_id)
    return _packet(first, body + _props(props) + payload)


def encode_puback(packet_id: int, reason_code: int = 0) -> bytes:
    if reason_code:
        return bytes((PUBACK << 4, 3)) + _U16_STRUCT.pack(packet_id) + bytes((reason_code,))
    return bytes((PUBACK << 4, 2)) + _U16_STRUCT.pack(packet_id)


def encode_pubacks(packet_ids: Iterable[int]) -> bytes:
    """Success PUBACKs for many packets as one buffer: one write for a committed group."""
    pack = _U16_STRUCT.pack
    return b"".join(b"\x40\x02" + pack(pid) for pid in packet_ids)


PINGREQ_BYTES = bytes((PINGREQ << 4, 0))
PINGRESP_BYTES = bytes((PINGRESP << 4, 0))


def encode_disconnect(reason_code: int = 0, reason_string: str | None = None) -> bytes:
    if reason_string is not None:
        body = bytes((reason_code,)) + _props([(REASON_STRING, reason_string)])
        return _packet(DISCONNECT << 4, body)
    if reason_code:
        return bytes((DISCONNECT << 4, 1, reason_code))
    return bytes((DISCONNECT << 4, 0))


def encode_connack(
    reason_code: int,
    *,
    session_present: bool = False,
    receive_maximum: int | None = None,
    server_keepalive: int | None = None,
) -> bytes:
    props: list[tuple[int, PropertyValue]] = []
    if receive_maximum is not None:
        props.append((RECEIVE_MAXIMUM, receive_maximum))
    if server_keepalive is not None:
        props.append((SERVER_KEEPALIVE, server_keepalive))
    body = bytes((1 if session_present else 0, reason_code)) + _props(props)
    return _packet(CONNACK << 4, body)


def encode_suback(packet_id: int, reason_codes: Iterable[int]) -> bytes:
    return _packet(SUBACK << 4, _U16_STRUCT.pack(packet_id) + b"\x00" + bytes(reason_codes))
