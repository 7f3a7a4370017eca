"""The few MQTT packets the front must understand: CONNECT in, CONNACK out (pure, no I/O).

The front parses only the first packet of each direction. Everything after the broker's CONNACK
is copied as bytes, so this module deliberately knows nothing about PUBLISH, SUBSCRIBE, etc.
Mosquitto stays the authority on the protocol; the checks here are the ones the front needs to
trust the username it audits and the length it forwards, plus the spec's hard structural rules
(a packet we would forward must be a packet the broker would also have to frame the same way).

Wire references: MQTT 3.1 (protocol name "MQIsdp", level 3), 3.1.1 (section 3.1, "MQTT"/4)
and 5.0 (section 3.1 and 3.2, "MQTT"/5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

CONNECT = 0x10  # type 1, flags must be 0000
CONNACK = 0x20  # type 2, flags must be 0000

# A CONNECT is a client id, a will and credentials: 64 KiB is far beyond any real device's and
# keeps a hostile client from making the front buffer the spec's 256 MiB maximum.
MAX_CONNECT_LEN = 64 * 1024
# A v5 CONNACK may carry properties (reason string, user properties); 3.x CONNACK is 4 bytes.
MAX_CONNACK_LEN = 64 * 1024

# (protocol name, level) pairs the front accepts; MQTT 3.1 used "MQIsdp".
_PROTOCOLS = {("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)}

# CONNACK codes: 3.x return codes and v5 reason codes.
V3_NOT_AUTHORIZED = 5
V3_SERVER_UNAVAILABLE = 3
V3_UNACCEPTABLE_PROTOCOL = 1
V3_IDENTIFIER_REJECTED = 2
V5_CLIENT_ID_NOT_VALID = 0x85
V5_NOT_AUTHORIZED = 0x87
V5_QUOTA_EXCEEDED = 0x97
V5_SERVER_UNAVAILABLE = 0x88


Buffer = bytes | bytearray | memoryview


class MalformedPacket(ValueError):
    """The bytes are not a valid packet of the kind expected; the connection must be dropped."""


class UnsupportedProtocol(MalformedPacket):
    """A well-framed CONNECT for a protocol name/level we do not speak (e.g. a future MQTT 6).

    Brokers answer this with a 3.1.1-style CONNACK code 1 before closing, so the front does too.
    """

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"unsupported protocol {name!r} level {level}")
        self.name = name
        self.level = level


class RefusalReason(StrEnum):
    """Why the front itself refuses a CONNECT (the broker refuses for its own reasons)."""

    LOCKED_OUT = "locked_out"
    NOT_AUTHORIZED = "not_authorized"
    SERVER_UNAVAILABLE = "server_unavailable"
    IDENTIFIER_REJECTED = "identifier_rejected"


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    protocol_level: int  # 3 (3.1), 4 (3.1.1) or 5
    client_id: str
    username: str | None
    has_password: bool
    clean_start: bool
    keepalive: int
    packet_len: int  # bytes of buf this CONNECT occupies (fixed header included)


def decode_fixed_header(buf: Buffer, max_len: int) -> tuple[int, int, int] | None:
    """Return (first byte, remaining length, header length), or None while bytes are missing.

    Raises MalformedPacket on a varint longer than 4 bytes or a remaining length above max_len,
    as soon as either is known, so the caller never buffers an oversized packet.
    """
    if not buf:
        return None
    value = 0
    for i in range(4):
        pos = 1 + i
        if pos >= len(buf):
            return None
        byte = buf[pos]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            # The spec wants the minimal encoding ("0x80 0x00" is not zero); Mosquitto checks too.
            if i > 0 and byte == 0:
                raise MalformedPacket("non-minimal remaining length")
            if value > max_len:
                raise MalformedPacket(f"remaining length {value} exceeds {max_len}")
            return buf[0], value, pos + 1
    raise MalformedPacket("remaining length longer than 4 bytes")


class Reader:
    """Bounded cursor over one packet's variable header and payload."""

    __slots__ = ("_buf", "_end", "pos")

    def __init__(self, buf: Buffer, start: int, end: int) -> None:
        self._buf = memoryview(buf)
        self.pos = start
        self._end = end

    def remaining(self) -> int:
        return self._end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.remaining():
            raise MalformedPacket(f"{what} runs past the end of the packet")
        data = bytes(self._buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def binary(self, what: str) -> bytes:
        return self.take(self.u16(what + " length"), what)

    def utf8(self, what: str) -> str:
        raw = self.binary(what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacket(f"{what} is not valid UTF-8") from exc
        # MQTT strings must not contain U+0000; Mosquitto drops such clients, and a NUL in a
        # username would be a way to make the audit log show something other than what was sent.
        if "\x00" in text:
            raise MalformedPacket(f"{what} contains U+0000")
        return text

    def varint(self, what: str) -> int:
        value = 0
        for i in range(4):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise MalformedPacket(f"non-minimal {what}")
                return value
        raise MalformedPacket(f"{what} longer than 4 bytes")

    def skip_properties(self, what: str) -> None:
        # Skipping by the declared length is exact: properties are self-delimited by it, and
        # Mosquitto validates their contents. We only guarantee they stay inside the packet.
        self.take(self.varint(what + " length"), what)


def parse_connect(buf: Buffer, max_len: int = MAX_CONNECT_LEN) -> ConnectInfo | None:
    """Parse the CONNECT at the start of buf; None while more bytes are needed.

    Bytes after the packet (a client may pipeline SUBSCRIBE behind CONNECT) are left alone:
    ConnectInfo.packet_len says where the CONNECT ends.
    """
    whole = _whole_packet(buf, max_len, CONNECT, "CONNECT")
    if whole is None:
        return None
    header_len, packet_len = whole
    r = Reader(buf, header_len, packet_len)

    name = r.utf8("protocol name")
    level = r.u8("protocol level")
    if name not in ("MQTT", "MQIsdp"):
        raise MalformedPacket(f"unknown protocol name {name!r}")
    if (name, level) not in _PROTOCOLS:
        raise UnsupportedProtocol(name, level)
    flags = r.u8("connect flags")
    keepalive = r.u16("keepalive")
    if flags & 0x01:
        raise MalformedPacket("reserved connect flag set")
    will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if not will and (will_qos or will_retain):
        raise MalformedPacket("will QoS/retain set without will flag")
    if level < 5 and has_password and not has_username:
        # 3.x forbids it; v5 allows a password alone (e.g. a token without a user name).
        raise MalformedPacket("password flag without username flag")

    if level == 5:
        r.skip_properties("connect properties")
    client_id = r.utf8("client id")
    if will:
        if level == 5:
            r.skip_properties("will properties")
        r.utf8("will topic")
        r.binary("will payload")
    username = r.utf8("username") if has_username else None
    if has_password:
        r.binary("password")
    if r.remaining():
        raise MalformedPacket(f"{r.remaining()} unexpected bytes after the CONNECT payload")
    return ConnectInfo(
        protocol_level=level,
        client_id=client_id,
        username=username,
        has_password=has_password,
        clean_start=bool(flags & 0x02),
        keepalive=keepalive,
        packet_len=packet_len,
    )


def parse_connack(buf: Buffer, max_len: int = MAX_CONNACK_LEN) -> tuple[int, int] | None:
    """Return (return/reason code, packet length) of the CONNACK at the start of buf, or None.

    The code is the 3.x return code (0 accepted) or the v5 reason code (0 success, >= 0x80
    refused); v5 properties are covered by packet_len and not interpreted.
    """
    whole = _whole_packet(buf, max_len, CONNACK, "CONNACK", min_remaining=2)
    if whole is None:
        return None
    header_len, packet_len = whole
    return buf[header_len + 1], packet_len


def _whole_packet(
    buf: Buffer, max_len: int, first_byte: int, name: str, *, min_remaining: int = 0
) -> tuple[int, int] | None:
    """(fixed header length, packet length) of the `name` packet at the start of buf once all
    of it is there; None while more bytes are needed. Raises MalformedPacket for another
    packet type, or a remaining length under min_remaining (checked before waiting for it)."""
    header = decode_fixed_header(buf, max_len)
    if header is None:
        return None
    first, remaining, header_len = header
    if first != first_byte:
        raise MalformedPacket(f"expected {name}, got first byte 0x{first:02x}")
    if remaining < min_remaining:
        raise MalformedPacket(f"{name} shorter than {min_remaining} bytes")
    packet_len = header_len + remaining
    if len(buf) < packet_len:
        return None
    return header_len, packet_len


def refusal_code(protocol_level: int, reason: RefusalReason) -> int:
    if protocol_level >= 5:
        return {
            RefusalReason.LOCKED_OUT: V5_QUOTA_EXCEEDED,
            RefusalReason.NOT_AUTHORIZED: V5_NOT_AUTHORIZED,
            RefusalReason.SERVER_UNAVAILABLE: V5_SERVER_UNAVAILABLE,
            RefusalReason.IDENTIFIER_REJECTED: V5_CLIENT_ID_NOT_VALID,
        }[reason]
    # 3.x has no "quota exceeded": a locked-out client gets the same "not authorized" as a
    # wrong password, which also tells an attacker nothing about the lockout.
    if reason is RefusalReason.SERVER_UNAVAILABLE:
        return V3_SERVER_UNAVAILABLE
    if reason is RefusalReason.IDENTIFIER_REJECTED:
        return V3_IDENTIFIER_REJECTED
    return V3_NOT_AUTHORIZED


def build_connack(protocol_level: int, code: int) -> bytes:
    """A CONNACK with session-present 0 and the given code (v5: with an empty property list)."""
    if not 0 <= code <= 0xFF:
        raise ValueError(f"CONNACK code {code} out of range")
    if protocol_level >= 5:
        return bytes((CONNACK, 3, 0, code, 0))
    return bytes((CONNACK, 2, 0, code))


def build_connack_refusal(protocol_level: int, reason: RefusalReason) -> bytes:
    """The CONNACK the front sends when it refuses a CONNECT itself (then it closes)."""
    return build_connack(protocol_level, refusal_code(protocol_level, reason))
