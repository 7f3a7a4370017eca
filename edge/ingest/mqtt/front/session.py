"""One device connection through the MQTT front: read its CONNECT, admit or refuse it, open
the upstream connection to the broker, then pipe bytes (or tap telemetry) both ways.

Each side is an asyncio Protocol (Side) feeding one Session; the copying happens in the event
loop's callbacks, with no task switch per chunk (streams cost about twice the added latency per
QoS 1 round trip, measured on loopback). The states are in Phase; the front (edge.ingest.mqtt.
front.proxy.MqttFront) owns the listener, the counters and the audit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from enum import Enum, auto
from typing import TYPE_CHECKING

from edge.ingest.mqtt.front.packets import (
    V3_UNACCEPTABLE_PROTOCOL,
    ConnectInfo,
    MalformedPacket,
    RefusalReason,
    UnsupportedProtocol,
    build_connack,
    build_connack_refusal,
    parse_connack,
    parse_connect,
)
from edge.ingest.mqtt.front.stream import encode_connack_v5
from edge.ingest.mqtt.front.telemetry import MAX_IN_FLIGHT, TelemetryTap
from edge.security.device_auth import DeviceAuthenticator, Refused

if TYPE_CHECKING:
    from edge.ingest.mqtt.front.proxy import MqttFront

log = logging.getLogger("edge.ingest.mqtt.front.proxy")  # one logger for the front


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    # asyncio already sets TCP_NODELAY on TCP transports; set it explicitly because a delayed
    # small PUBACK through two hops would cost up to 40 ms per QoS 1 message with Nagle on.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else "unknown"


class Phase(Enum):
    READ_CONNECT = auto()  # collecting the client's CONNECT
    ESTABLISH = auto()  # lockout check, upstream connect, waiting for the broker's CONNACK
    PIPE = auto()  # copying bytes both ways
    CLOSED = auto()


class Side(asyncio.Protocol):
    """One socket of a session. In the pipe phase `peer` is set and data goes straight to the
    other socket from the event loop's callback: no task switch, no copy, no parsing."""

    __slots__ = ("client", "peer", "session", "tap")

    def __init__(self, session: Session, *, client: bool) -> None:
        self.session = session
        self.client = client
        self.peer: asyncio.Transport | None = None
        self.tap: TelemetryTap | None = None  # set instead of peer when telemetry is taken

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.session.made(self.client, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None:
            tap = self.tap
            if tap is None:
                self.session.handshake_data(self.client, data)
            elif self.client:
                tap.client_data(data)
            else:
                tap.broker_data(data)
            return
        peer.write(data)
        counters = self.session.counters
        if self.client:
            counters.bytes_up += len(data)
        else:
            counters.bytes_down += len(data)

    def eof_received(self) -> bool:
        return self.session.eof(self.client)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost(self.client, exc)

    # Back-pressure: when one socket's send buffer fills, stop reading the other one, so a slow
    # reader slows its sender instead of growing a buffer in the gateway.
    def pause_writing(self) -> None:
        self.session.set_reading(not self.client, paused=True)

    def resume_writing(self) -> None:
        self.session.set_reading(not self.client, paused=False)


class Session:
    """One device connection and, once admitted, its upstream connection to the broker."""

    def __init__(self, front: MqttFront) -> None:
        self.front = front
        self.counters = front._c
        self.phase = Phase.READ_CONNECT
        self.address = "unknown"
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.client_side = Side(self, client=True)
        self.upstream_side: Side | None = None
        self.head = bytearray()  # client bytes up to and after the CONNECT
        self.down = bytearray()  # broker bytes up to and after the CONNACK
        self.connack: asyncio.Future[tuple[int, int] | None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.eofs: set[bool] = set()
        self.closed = front._loop().create_future()  # set when the client socket is gone
        self.tap: TelemetryTap | None = None
        self.info: ConnectInfo | None = None

    # -- protocol callbacks ------------------------------------------------------------------

    def made(self, client: bool, transport: asyncio.Transport) -> None:
        set_nodelay(transport)
        if not client:
            self.upstream = transport
            return
        self.client = transport
        self.address = peer_address(transport)
        front = self.front
        self.counters.connections_total += 1
        self.counters.active += 1
        front._sessions.add(self)
        # Connections over the caps never get here: the listener closes them at accept.
        self.timer = front._loop().call_later(front._connect_timeout_s, self._connect_timeout)

    def handshake_data(self, client: bool, data: bytes) -> None:
        if not client:
            self.down += data
            if self.connack is not None and not self.connack.done():
                try:
                    got = parse_connack(self.down)
                except MalformedPacket as exc:
                    log.warning("bad CONNACK from MQTT broker: %s", exc)
                    got = None
                    self.connack.set_result(None)
                if got is not None:
                    self.connack.set_result(got)
            return
        self.head += data
        if self.phase is not Phase.READ_CONNECT:
            return  # arrived with the CONNECT before reading paused; forwarded with it
        try:
            info = parse_connect(self.head)
        except UnsupportedProtocol as exc:
            log.info("MQTT CONNECT from %s: %s", self.address, exc)
            # What Mosquitto answers too; a 3.1.1-shaped CONNACK is the one old clients read.
            self._reply_and_close(build_connack(4, V3_UNACCEPTABLE_PROTOCOL))
            self._bad_connect("unsupported_protocol")
            return
        except MalformedPacket as exc:
            log.info("malformed MQTT CONNECT from %s: %s", self.address, exc)
            self.close()
            self._bad_connect("malformed_connect")
            return
        if info is None:
            return  # parse_connect bounds self.head: it raises past MAX_CONNECT_LEN
        self._cancel_timer()
        assert self.client is not None
        # Hold further client bytes in the kernel until the broker has admitted the client.
        self.client.pause_reading()
        self.phase = Phase.ESTABLISH
        self.task = self.front._spawn(self._establish(info), self)

    def eof(self, client: bool) -> bool:
        if not client and self.phase is Phase.ESTABLISH:
            # The admission task decides (refusal, or closed without CONNACK) and closes.
            self._no_connack()
            return False
        if self.phase is not Phase.PIPE:
            if client and self.phase is Phase.READ_CONNECT:
                self._cancel_timer()
                if self.head:
                    self._bad_connect("incomplete_connect")
                else:
                    # A port probe or health check, not a login attempt: nothing to audit.
                    self.counters.no_connect += 1
            self.close()
            return False
        if client and self.tap is not None and not self.tap.upstream:
            self.close()  # served by the front alone: what it owes is already written
            return False
        # Half-close: pass the EOF on and keep the other direction flowing for a while.
        other = self.upstream if client else self.client
        if other is not None and other.can_write_eof() and not other.is_closing():
            with contextlib.suppress(OSError):
                other.write_eof()
        self.eofs.add(client)
        if len(self.eofs) == 2:
            self.close()
            return False
        if self.timer is None:
            self.timer = self.front._loop().call_later(self.front._half_close_linger_s, self.close)
        return True

    def lost(self, client: bool, exc: Exception | None) -> None:
        if exc is not None:
            log.debug(
                "MQTT %s connection of %s lost: %s",
                "client" if client else "broker",
                self.address,
                exc,
            )
        if client:
            self.counters.active -= 1
            self.front._sessions.discard(self)
            if not self.closed.done():
                self.closed.set_result(None)
        elif self.phase is Phase.ESTABLISH:
            self._no_connack()
            return
        # One side gone ends the session; close() still flushes what the other side has queued.
        self.close()

    def _no_connack(self) -> None:
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(None)

    def set_reading(self, client: bool, *, paused: bool) -> None:
        transport = self.client if client else self.upstream
        if transport is None or transport.is_closing() or self.phase is not Phase.PIPE:
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # -- the admission step (the only part that awaits) --------------------------------------

    async def _establish(self, info: ConnectInfo) -> None:
        front, address = self.front, self.address
        self.info = info
        terms = front._telemetry
        if terms is not None and terms.storing is not None and not terms.storing():
            # Not an authentication failure: nothing is audited or counted for lockout.
            self.counters.refused_storage += 1
            self._reply_and_close(
                build_connack_refusal(info.protocol_level, RefusalReason.SERVER_UNAVAILABLE)
            )
            return
        if terms is not None and terms.device_auth is not None and not info.has_password:
            self._admit_token(info, terms.device_auth)
            return
        decision = front._tracker.check(info.username, address)
        if decision.locked:
            self.counters.refused_locked += 1
            front._emit("auth_failure", address, info, "locked_out", decision.key)
            self._reply_and_close(
                build_connack_refusal(info.protocol_level, RefusalReason.LOCKED_OUT)
            )
            return

        loop = front._loop()
        self.connack = loop.create_future()
        self.upstream_side = Side(self, client=False)
        side = self.upstream_side
        try:
            async with asyncio.timeout(front._upstream_timeout_s):
                await loop.create_connection(lambda: side, *front._upstream)
        except (OSError, TimeoutError) as exc:
            self.counters.upstream_errors += 1
            log.warning("MQTT broker %s:%d unreachable: %r", *front._upstream, exc)
            self._reply_and_close(
                build_connack_refusal(info.protocol_level, RefusalReason.SERVER_UNAVAILABLE)
            )
            return
        assert self.upstream is not None
        # The CONNECT and whatever the client pipelined behind it go up unchanged; with the
        # telemetry tap, only the CONNECT: what follows it is the tap's to read.
        upto = info.packet_len if front._telemetry is not None else len(self.head)
        self.upstream.write(self.head[:upto])
        del self.head[:upto]
        self.counters.bytes_up += upto
        try:
            async with asyncio.timeout(front._upstream_timeout_s):
                got = await self.connack
        except TimeoutError:
            log.warning("MQTT broker sent no CONNACK within %ss", front._upstream_timeout_s)
            got = None
        if got is None:
            self.counters.upstream_errors += 1
            log.warning("MQTT broker closed %r from %s without CONNACK", info.client_id, address)
            front._emit("auth_failure", address, info, "no_connack")
            self.close()
            return
        code, ack_len = got
        if code != 0:
            front._broker_refused(info, address, code)
            # Forward only the CONNACK: after a refusal the broker closes and so do we.
            self._reply_and_close(bytes(self.down[:ack_len]))
            return
        front._tracker.record_success(info.username, address)
        self._start_pipe()

    def _admit_token(self, info: ConnectInfo, auth: DeviceAuthenticator) -> None:
        """A token login: the front authenticates it (lockout, audit) and serves it alone."""
        level = info.protocol_level
        if not info.client_id and (level == 3 or (level == 4 and not info.clean_start)):
            # What Mosquitto answers a password login, before it checks credentials: 3.1.1
            # rejects an empty client id without a clean session [MQTT-3.1.3-8], 3.1 any.
            self._reply_and_close(
                build_connack_refusal(info.protocol_level, RefusalReason.IDENTIFIER_REJECTED)
            )
            return
        result = auth.admit(info.username or "", self.address)
        if isinstance(result, Refused):
            reason = (
                RefusalReason.LOCKED_OUT
                if result.problem.status == 429
                else RefusalReason.NOT_AUTHORIZED
            )
            self._reply_and_close(build_connack_refusal(info.protocol_level, reason))
            return
        client = self.client
        assert client is not None and self.front._telemetry is not None
        if client.is_closing():
            self.close()
            return
        self.counters.direct_sessions += 1
        v5 = info.protocol_level >= 5
        if v5:
            # An empty client id is assigned one, as Mosquitto does ("auto-" and a UUID).
            assigned = "" if info.client_id else f"auto-{str(uuid.uuid4()).upper()}"
            self.write_client(encode_connack_v5(0, MAX_IN_FLIGHT, assigned))
        else:
            self.write_client(build_connack(4, 0))
        self.phase = Phase.PIPE
        rest = bytes(self.head[info.packet_len :])
        self._tap(result.device.device_id, info, rest, upstream=False)
        client.resume_reading()

    def _tap(self, device_id: str, info: ConnectInfo, rest: bytes, *, upstream: bool) -> None:
        terms = self.front._telemetry
        assert terms is not None
        tap = TelemetryTap(
            self,
            device_id,
            v5=info.protocol_level >= 5,
            keepalive_s=info.keepalive,
            intake=terms.intake,
            replies=terms.replies,
            counters=self.front.tap_counters,
            upstream=upstream,
        )
        self.tap = self.client_side.tap = tap
        if self.upstream_side is not None:
            self.upstream_side.tap = tap
        self.head.clear()
        if rest:
            tap.client_data(rest)

    def _start_pipe(self) -> None:
        client, upstream = self.client, self.upstream
        assert client is not None and upstream is not None and self.upstream_side is not None
        if client.is_closing() or upstream.is_closing():
            self.close()
            return
        if self.front._telemetry is not None and self.info is not None:
            self.phase = Phase.PIPE
            down, self.down = bytes(self.down), bytearray()
            self._tap(self.info.username or "", self.info, bytes(self.head), upstream=True)
            assert self.tap is not None
            self.tap.broker_data(down)  # the CONNACK and whatever the broker queued
            client.resume_reading()
            return
        # Everything the broker sent so far (CONNACK, maybe queued messages of a persistent
        # session) goes out first; from here on the sides write to each other directly.
        client.write(self.down)
        self.counters.bytes_down += len(self.down)
        self.head.clear()
        self.down.clear()
        self.phase = Phase.PIPE
        self.client_side.peer = upstream
        self.upstream_side.peer = client
        client.resume_reading()

    # -- endings -----------------------------------------------------------------------------

    def _bad_connect(self, reason: str) -> None:
        self._cancel_timer()
        self.counters.malformed += 1
        self.front._emit("auth_failure", self.address, None, reason)
        # Counted against the address only: the username of a broken CONNECT is not trusted.
        self.front._count_failure(self.address, None, None)

    def _connect_timeout(self) -> None:
        self.timer = None
        if self.phase is not Phase.READ_CONNECT:
            return
        if self.head:
            self._bad_connect("connect_timeout")
        else:
            self.counters.no_connect += 1
        self.close()

    def _reply_and_close(self, data: bytes) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.write(data)
            self.counters.bytes_down += len(data)
        self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- what the telemetry tap uses (TapHost) ---------------------------------------------------

    def write_client(self, data: bytes | bytearray) -> None:
        if self.client is not None and not self.client.is_closing():
            self.client.write(data)
            self.counters.bytes_down += len(data)

    def write_upstream(self, data: bytes | bytearray) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.write(data)
            self.counters.bytes_up += len(data)

    def pause_client(self, paused: bool) -> None:
        self.set_reading(True, paused=paused)

    def denied(self, topic: str) -> None:
        self.front._emit("auth_failure", self.address, self.info, f"publish_denied ({topic})")

    def close(self) -> None:
        """End the session, letting each socket flush what is queued for it."""
        if self.phase is Phase.CLOSED:
            return
        if self.tap is not None:
            self.tap.detach()
        self.phase = Phase.CLOSED
        self._cancel_timer()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.close()

    def abort(self) -> None:
        self.close()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort()
