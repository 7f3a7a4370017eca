"""The front's view of an admitted connection's packet stream, both ways (pure, no I/O).

Why the front frames the stream at all: a device's QoS 1/2 telemetry is acknowledged by the
gateway itself once committed (edge.ingest.mqtt.front.telemetry), so the front has to find PUBLISH
packets in what the device sends and insert PUBACK/PUBREC into what the broker sends, at a
packet boundary. Everything else passes through as bytes (Mosquitto stays the authority on
the rest of the protocol); the parsing here is what the front needs to decide, no more.

- `ClientPackets` splits the device -> broker stream into whole packets (bounded size).
- `parse_publish` reads a PUBLISH's topic, QoS, packet id and the v5 properties the ingest
  path uses (content type, response topic, correlation data, topic alias).
- `BrokerFramer` follows the broker -> device stream's boundaries and drops the PINGRESPs that
  answer the front's own keep-alive PINGREQs.

Wire references: MQTT 3.1.1 section 3 and MQTT 5.0 sections 2.2 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.ingest.mqtt.front.packets import MalformedPacket, Reader, decode_fixed_header

PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 3, 4, 5, 6, 7
SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT = 8, 10, 12, 14

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"

# The largest packet a device may send through the front: telemetry is at most 64 KiB a
# message, and the private Mosquitto is configured with the same max_packet_size.
MAX_CLIENT_PACKET = 1024 * 1024

# v5 PUBLISH properties (section 3.3.2.3) and their encodings.
_CONTENT_TYPE, _RESPONSE_TOPIC, _CORRELATION, _TOPIC_ALIAS = 0x03, 0x08, 0x09, 0x23
_PUBLISH_PROPERTY_KINDS = {
    0x01: "byte",  # payload format indicator
    0x02: "u32",  # message expiry interval
    0x03: "utf8",  # content type
    0x08: "utf8",  # response topic
    0x09: "binary",  # correlation data
    0x0B: "varint",  # subscription identifier (server -> client only, skipped)
    0x23: "u16",  # topic alias
    0x26: "pair",  # user property
}

# v5 reason codes the front sends itself.
V5_NO_SUBSCRIPTION_EXISTED = 0x11
V5_NOT_AUTHORIZED = 0x87
V5_PACKET_ID_NOT_FOUND = 0x92
V5_TOPIC_ALIAS_INVALID = 0x94
V5_PACKET_TOO_LARGE = 0x95
V5_QUOTA_EXCEEDED = 0x97
V5_PAYLOAD_FORMAT_INVALID = 0x99
V5_PROTOCOL_ERROR = 0x82
V3_SUBACK_FAILURE = 0x80


@dataclass(slots=True)  # not frozen: built once per message, and frozen __init__ costs 2x
class PublishView:
    """A device's PUBLISH as the front needs it; `payload` is a copy, safe to keep."""

    topic: str
    qos: int
    packet_id: int | None
    dup: bool
    retain: bool
    payload: bytes
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    topic_alias: int | None = None


# one branch per MQTT 5 PUBLISH property; the hot path:
def parse_publish(first: int, buf: bytes | bytearray | memoryview, start: int, end: int,  # noqa: PLR0912
                  v5: bool) -> PublishView:  # fmt: skip
    """The PUBLISH whose variable header starts at buf[start] and which ends at buf[end]."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(first & 0x08)
    if not v5 and qos == 1:
        return _parse_v3_qos1(first, buf, start, end)
    r = Reader(buf, start, end)
    topic = r.utf8("topic name")
    if "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH topic name contains a wildcard")
    packet_id = None
    if qos:
        packet_id = r.u16("packet identifier")
        if packet_id == 0:
            raise MalformedPacket("packet identifier 0")
    content_type = response_topic = None
    correlation = None
    alias = None
    if v5:
        length = r.varint("PUBLISH property length")
        if length > r.remaining():
            raise MalformedPacket("PUBLISH properties run past the end of the packet")
        props_end = r.pos + length
        while r.pos < props_end:
            ident = r.varint("property identifier")
            kind = _PUBLISH_PROPERTY_KINDS.get(ident)
            if kind is None:
                raise MalformedPacket(f"property 0x{ident:02x} is not allowed in PUBLISH")
            if kind == "byte":
                r.u8("byte property")
            elif kind == "u16":
                alias = r.u16("topic alias")
            elif kind == "u32":
                r.take(4, "four-byte property")
            elif kind == "varint":
                r.varint("varint property")
            elif kind == "binary":
                correlation = r.binary("correlation data")
            elif kind == "utf8":
                text = r.utf8("string property")
                if ident == _CONTENT_TYPE:
                    content_type = text
                else:
                    response_topic = text
            else:
                r.utf8("user property name")
                r.utf8("user property value")
            if r.pos > props_end:
                raise MalformedPacket("a PUBLISH property runs past the property length")
    payload = bytes(memoryview(buf)[r.pos : end])
    return PublishView(
        topic, qos, packet_id, dup, bool(first & 0x01), payload,
        content_type, response_topic, correlation, alias,
    )  # fmt: skip


def _parse_v3_qos1(first: int, buf: bytes | bytearray | memoryview, start: int,
                   end: int) -> PublishView:  # fmt: skip
    """The common sensor's packet (3.1.1, QoS 1) without a field cursor: the same checks."""
    topic_end = start + 2 + int.from_bytes(buf[start : start + 2], "big")
    if topic_end + 2 > end:
        raise MalformedPacket("topic name runs past the end of the packet")
    try:
        topic = bytes(buf[start + 2 : topic_end]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket("topic name is not valid UTF-8") from exc
    if "\x00" in topic or "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH topic name contains U+0000 or a wildcard")
    packet_id = int.from_bytes(buf[topic_end : topic_end + 2], "big")
    if packet_id == 0:
        raise MalformedPacket("packet identifier 0")
    return PublishView(
        topic, 1, packet_id, bool(first & 0x08), bool(first & 0x01), bytes(buf[topic_end + 2 : end])
    )


def packet_id_of(buf: bytes | bytearray | memoryview, start: int, end: int) -> int:
    """The packet identifier at the start of an ack, SUBSCRIBE or UNSUBSCRIBE body."""
    if end - start < 2:
        raise MalformedPacket("packet shorter than its packet identifier")
    return int.from_bytes(buf[start : start + 2], "big")


def count_topic_filters(buf: bytes | bytearray | memoryview, start: int, end: int, v5: bool,
                        *, with_options: bool) -> int:  # fmt: skip
    """How many filters a SUBSCRIBE (with_options) or UNSUBSCRIBE body carries."""
    r = Reader(buf, start + 2, end)
    if v5:
        r.take(r.varint("property length"), "properties")
    n = 0
    while r.remaining():
        r.utf8("topic filter")
        if with_options:
            r.u8("subscription options")
        n += 1
    if n == 0:
        raise MalformedPacket("SUBSCRIBE/UNSUBSCRIBE without topic filters")
    return n


def encode_ack(packet_type: int, packet_id: int, reason: int = 0, *, v5: bool) -> bytes:
    """PUBACK, PUBREC or PUBCOMP (reason codes only on v5, and only when not success)."""
    first = packet_type << 4
    pid = packet_id.to_bytes(2, "big")
    if v5 and reason:
        return bytes((first, 3)) + pid + bytes((reason,))
    return bytes((first, 2)) + pid


def encode_disconnect_v5(reason: int) -> bytes:
    return bytes((0xE0, 1, reason))


def encode_suback(packet_id: int, codes: list[int], *, v5: bool) -> bytes:
    body = packet_id.to_bytes(2, "big") + (b"\x00" if v5 else b"") + bytes(codes)
    return bytes((0x90, len(body))) + body if len(body) < 128 else _long(0x90, body)


def encode_unsuback(packet_id: int, count: int, *, v5: bool) -> bytes:
    if not v5:
        return b"\xb0\x02" + packet_id.to_bytes(2, "big")
    body = packet_id.to_bytes(2, "big") + b"\x00" + bytes([V5_NO_SUBSCRIPTION_EXISTED] * count)
    return bytes((0xB0, len(body))) + body if len(body) < 128 else _long(0xB0, body)


def encode_connack_v5(code: int, receive_maximum: int, assigned_client_id: str = "") -> bytes:
    """The CONNACK the front sends for sessions it serves alone: no retained messages, no
    wildcard or shared subscriptions, no topic aliases (absent Topic Alias Maximum = 0). A
    client that sent an empty client id gets the one assigned to it (MQTT 5 3.2.2.3.7)."""
    props = b"\x21" + receive_maximum.to_bytes(2, "big") + b"\x25\x00\x28\x00\x2a\x00"
    if assigned_client_id:
        raw = assigned_client_id.encode()
        props += b"\x12" + len(raw).to_bytes(2, "big") + raw
    body = bytes((0, code, len(props))) + props
    return bytes((0x20, len(body))) + body if len(body) < 128 else _long(0x20, body)


def _long(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray((first,))
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out) + body


class ClientPackets:
    """Whole packets out of the device's byte stream; the partial tail waits for more."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_packet: int = MAX_CLIENT_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet

    def feed(self, data: bytes) -> tuple[bytes | bytearray, list[tuple[int, int, int, int]]]:
        """(the buffer, [(first byte, packet start, body start, end)]) for every complete
        packet; offsets index the returned buffer, which the caller uses before the next feed."""
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        view = memoryview(buf)
        out: list[tuple[int, int, int, int]] = []
        pos, size = 0, len(buf)
        one_byte = min(0x80, self._max + 1)  # remaining lengths one byte holds, within max
        try:
            while pos < size:
                if pos + 1 < size and buf[pos + 1] < one_byte:
                    # A remaining length of one byte (a sensor's message): minimal by
                    # construction, within the limit, no varint to walk.
                    end = pos + 2 + buf[pos + 1]
                    if end > size:
                        break
                    out.append((buf[pos], pos, pos + 2, end))
                    pos = end
                    continue
                header = decode_fixed_header(view[pos:], self._max)
                if header is None:
                    break
                first, remaining, header_len = header
                end = pos + header_len + remaining
                if end > size:
                    break
                out.append((first, pos, pos + header_len, end))
                pos = end
        finally:
            view.release()
        if pos < size:
            tail = bytes(buf[pos:])
            self._buf = bytearray(tail)
        else:
            self._buf = bytearray()
        return buf, out


class BrokerFramer:
    """Follows packet boundaries in the broker -> device stream.

    `feed` returns the bytes to pass on (PINGRESPs owed to the front's own PINGREQs removed);
    `at_boundary` says whether a packet may be inserted now. An incomplete fixed header (at
    most 5 bytes) is held back until it is whole."""

    __slots__ = ("_header", "_left", "swallow_pingresps")

    def __init__(self) -> None:
        self._header = bytearray()
        self._left = 0  # body bytes of the current packet still to pass through
        self.swallow_pingresps = 0

    @property
    def at_boundary(self) -> bool:
        return not self._left and not self._header

    def feed(self, data: bytes) -> bytes | bytearray:
        if self._left >= len(data):
            self._left -= len(data)
            return data  # the common case for a large message: no copy
        out = bytearray()
        pos, size = 0, len(data)
        while pos < size:
            if self._left:
                take = min(self._left, size - pos)
                out += data[pos : pos + take]
                pos += take
                self._left -= take
                continue
            header = self._header
            header.append(data[pos])
            pos += 1
            if len(header) < 2 or header[-1] & 0x80:
                if len(header) == 5:
                    raise MalformedPacket("remaining length longer than 4 bytes")
                continue
            remaining = 0
            for i, byte in enumerate(header[1:]):
                remaining |= (byte & 0x7F) << (7 * i)
            if remaining == 0 and header == PINGRESP_BYTES and self.swallow_pingresps:
                self.swallow_pingresps -= 1
            else:
                out += header
                self._left = remaining
            header.clear()
        return out
