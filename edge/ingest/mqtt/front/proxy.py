"""The gateway's LAN-facing MQTT port: audit and lockout in front of the private Mosquitto.

Why a front at all: Mosquitto 2.0 logs a refused CONNECT as "Sending CONNACK to 127.0.0.1
(0, 5)", without the username, so per-username lockout cannot be driven from its log. The front
reads the client's CONNECT (to learn username and client id), refuses locked-out clients itself,
forwards everything else to the broker on loopback and reads the broker's CONNACK to learn the
outcome. After a successful CONNACK it only copies bytes; Mosquitto stays the authority for
credentials, sessions, QoS and ACLs.

The copying is done with asyncio Protocols rather than streams: each received chunk is written
to the other socket from the event loop's callback, with no task switch per chunk (streams
cost about twice the added latency per QoS 1 round trip, measured on loopback).

Per connection:
    read CONNECT --malformed/timeout--> audit, count against the address, close
        |--locked--> CONNACK refusal (3.x 5 / v5 0x97), audit "locked_out", close
        '--> connect upstream --down--> CONNACK server unavailable, count, close
               forward CONNECT, read CONNACK --refused--> audit, count failure, forward, close
                                             '--accepted--> forward, copy bytes both ways
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from enum import Enum, auto
from typing import Any, Literal

from common.clock import Clock
from edge.ingest.listener import BoundedListener, ConnectionCaps, ListenerStats
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
from edge.ingest.mqtt.front.telemetry import (
    MAX_IN_FLIGHT,
    Intake,
    ReplySink,
    TapCounters,
    TelemetryTap,
)
from edge.security.device_auth import DeviceAuthenticator, Refused
from edge.security.lockout import LockoutTracker

log = logging.getLogger(__name__)

AuthEventKind = Literal["auth_failure", "lockout"]

# CONNACK codes that mean "these credentials are not accepted": only these count towards a
# lockout. Broker-side conditions (3.x 3, v5 0x88 server unavailable, 0x89 busy, ...) and client
# bugs (identifier rejected) are audited but must not lock a whole site out when the broker
# restarts or misbehaves.
_V3_REASONS = {4: "bad_credentials", 5: "not_authorized"}
_V5_REASONS = {0x86: "bad_credentials", 0x87: "not_authorized"}


def connack_reason(protocol_level: int, code: int) -> tuple[str, bool]:
    """(audit reason, counts towards lockout) for a refusing CONNACK code."""
    reasons = _V5_REASONS if protocol_level >= 5 else _V3_REASONS
    reason = reasons.get(code)
    if reason is None:
        return f"refused:{code}", False
    return reason, True


class MqttFrontError(Exception):
    """The front cannot do its job (e.g. it cannot listen); carries one printable line."""


@dataclass(frozen=True, slots=True)
class AuthEvent:
    at_ms: int
    kind: AuthEventKind
    address: str
    username: str | None
    client_id: str | None
    reason: str
    key: str | None = None  # the lockout key, for kind "lockout" and reason "locked_out"


@dataclass(frozen=True, slots=True)
class FrontStats:
    connections_total: int = 0
    active: int = 0
    refused_locked: int = 0
    auth_failures: int = 0  # CONNACK refusals from the broker
    malformed: int = 0  # CONNECTs that were garbage, too large, unsupported or too slow
    no_connect: int = 0  # connections that closed or idled out before sending any byte
    upstream_errors: int = 0  # broker unreachable, or it closed without a CONNACK
    over_capacity: int = 0  # connections closed at once: a connection cap was reached
    refused_storage: int = 0  # CONNECTs refused while the store could not commit
    audit_sink_errors: int = 0
    bytes_up: int = 0  # client -> broker
    bytes_down: int = 0  # broker -> client
    direct_sessions: int = 0  # token logins (ThingsBoard style) served by the front alone


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    active: int = 0
    refused_locked: int = 0
    auth_failures: int = 0
    malformed: int = 0
    no_connect: int = 0
    upstream_errors: int = 0
    refused_storage: int = 0
    audit_sink_errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    direct_sessions: int = 0


@dataclass(frozen=True, slots=True)
class TelemetryTerms:
    """What the front needs to take telemetry itself (without it, it only forwards bytes).

    `device_auth` admits token logins (username = token, no password: ThingsBoard firmware);
    `replies` publishes problem documents and v5 responses through the broker; `storing`
    says whether the store can commit now: while it cannot (a full disk), CONNECTs are refused
    as "server unavailable" rather than admitted, refused at their first PUBLISH, and
    reconnected at once in a loop."""

    intake: Intake
    replies: ReplySink
    device_auth: DeviceAuthenticator | None = None
    storing: Callable[[], bool] | None = None


_STAT_FIELDS = tuple(f.name for f in fields(_Counters))
# Without the gateway's plan (edge.ingest.listener.plan_caps), e.g. in tests of the front alone.
DEFAULT_CAPS = ConnectionCaps(max_connections=10_000, max_per_address=10_000)


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    # asyncio already sets TCP_NODELAY on TCP transports; set it explicitly because a delayed
    # small PUBACK through two hops would cost up to 40 ms per QoS 1 message with Nagle on.
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else "unknown"


class _Phase(Enum):
    READ_CONNECT = auto()  # collecting the client's CONNECT
    ESTABLISH = auto()  # lockout check, upstream connect, waiting for the broker's CONNACK
    PIPE = auto()  # copying bytes both ways
    CLOSED = auto()


class _Side(asyncio.Protocol):
    """One socket of a session. In the pipe phase `peer` is set and data goes straight to the
    other socket from the event loop's callback: no task switch, no copy, no parsing."""

    __slots__ = ("client", "peer", "session", "tap")

    def __init__(self, session: _Session, *, client: bool) -> None:
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


class _Session:
    """One device connection and, once admitted, its upstream connection to the broker."""

    def __init__(self, front: MqttFront) -> None:
        self.front = front
        self.counters = front._c
        self.phase = _Phase.READ_CONNECT
        self.address = "unknown"
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.client_side = _Side(self, client=True)
        self.upstream_side: _Side | None = None
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
        _set_nodelay(transport)
        if not client:
            self.upstream = transport
            return
        self.client = transport
        self.address = _peer_address(transport)
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
        if self.phase is not _Phase.READ_CONNECT:
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
        self.phase = _Phase.ESTABLISH
        self.task = self.front._spawn(self._establish(info), self)

    def eof(self, client: bool) -> bool:
        if not client and self.phase is _Phase.ESTABLISH:
            # The admission task decides (refusal, or closed without CONNACK) and closes.
            self._no_connack()
            return False
        if self.phase is not _Phase.PIPE:
            if client and self.phase is _Phase.READ_CONNECT:
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
        elif self.phase is _Phase.ESTABLISH:
            self._no_connack()
            return
        # One side gone ends the session; close() still flushes what the other side has queued.
        self.close()

    def _no_connack(self) -> None:
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(None)

    def set_reading(self, client: bool, *, paused: bool) -> None:
        transport = self.client if client else self.upstream
        if transport is None or transport.is_closing() or self.phase is not _Phase.PIPE:
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
        self.upstream_side = _Side(self, client=False)
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
        self.write_client(encode_connack_v5(0, MAX_IN_FLIGHT) if v5 else build_connack(4, 0))
        self.phase = _Phase.PIPE
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
            self.phase = _Phase.PIPE
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
        self.phase = _Phase.PIPE
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
        if self.phase is not _Phase.READ_CONNECT:
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
        if self.phase is _Phase.CLOSED:
            return
        if self.tap is not None:
            self.tap.detach()
        self.phase = _Phase.CLOSED
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


class MqttFront:
    def __init__(
        self,
        bind: str,
        port: int,
        upstream_host: str,
        upstream_port: int,
        tracker: LockoutTracker,
        on_auth_event: Callable[[AuthEvent], None],
        clock: Clock,
        *,
        connect_timeout_s: float = 10.0,
        upstream_timeout_s: float = 5.0,
        half_close_linger_s: float = 30.0,
        caps: ConnectionCaps = DEFAULT_CAPS,
        telemetry: TelemetryTerms | None = None,
    ) -> None:
        self._bind = bind
        self._port = port
        self._upstream = (upstream_host, upstream_port)
        self._tracker = tracker
        self._on_auth_event = on_auth_event
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._upstream_timeout_s = upstream_timeout_s
        self._half_close_linger_s = half_close_linger_s
        self._caps = caps
        self._listener: BoundedListener | None = None
        self._listener_stats: ListenerStats | None = None  # kept after stop, for status
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._c = _Counters()
        self._telemetry = telemetry
        self.tap_counters = TapCounters()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._listener is None:
            raise MqttFrontError("MQTT front is not listening")
        return self._listener.port

    @property
    def stats(self) -> FrontStats:
        refused = self._listener_stats.refused if self._listener_stats is not None else 0
        return FrontStats(
            **{name: getattr(self._c, name) for name in _STAT_FIELDS}, over_capacity=refused
        )

    @property
    def listener_stats(self) -> ListenerStats | None:
        return self._listener_stats

    def drop_device(self, device_id: str) -> int:
        """End the sessions the front serves alone for a revoked device (the broker ends the
        others itself when dynsec deletes the client); returns how many."""
        ended = [
            s for s in self._sessions if s.tap is not None and not s.tap.upstream
            and s.tap.device_id == device_id
        ]  # fmt: skip
        for session in ended:
            session.close()
        return len(ended)

    async def start(self) -> None:
        if self._listener is not None:
            raise MqttFrontError("MQTT front already started")
        # Over a cap, a connection is closed before its CONNECT is read (no CONNACK: it is not
        # known yet which protocol version the client would parse; Mosquitto does the same).
        listener = BoundedListener("MQTT", lambda: _Session(self).client_side, self._caps)
        try:
            await listener.start(self._bind, self._port)
        except OSError as exc:
            raise MqttFrontError(
                f"cannot listen for MQTT on {self._bind}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._listener = listener
        self._listener_stats = listener.stats
        log.info("MQTT front on %s:%d -> %s:%d", self._bind, self.port, *self._upstream)

    async def stop(self) -> None:
        """Stop listening and end every connection, piped or not."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(s.closed for s in sessions))

    # -- helpers for sessions ----------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _spawn(self, coro: Coroutine[Any, Any, None], session: _Session) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"mqtt-front {session.address}")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("MQTT front session for %s failed", session.address, exc_info=exc)
                session.abort()

        task.add_done_callback(done)
        return task

    def _broker_refused(self, info: ConnectInfo, address: str, code: int) -> None:
        self._c.auth_failures += 1
        reason, counts = connack_reason(info.protocol_level, code)
        self._emit("auth_failure", address, info, reason)
        if counts:
            self._count_failure(address, info.username, info.client_id)

    def _count_failure(self, address: str, username: str | None, client_id: str | None) -> None:
        for key in self._tracker.record_failure(username, address):
            log.warning("MQTT lockout of %r after repeated authentication failures", key)
            self._emit_event(
                AuthEvent(
                    self._clock.now_ms(),
                    "lockout",
                    address,
                    username,
                    client_id,
                    "too_many_failures",
                    key,
                )
            )

    def _emit(
        self, kind: AuthEventKind, address: str, info: ConnectInfo | None, reason: str,
        key: str | None = None,
    ) -> None:  # fmt: skip
        username = info.username if info else None
        client_id = info.client_id if info else None
        self._emit_event(
            AuthEvent(self._clock.now_ms(), kind, address, username, client_id, reason, key)
        )

    def _emit_event(self, event: AuthEvent) -> None:
        try:
            self._on_auth_event(event)
        except Exception:
            # A broken audit sink must not take the MQTT port down with it, but it is loud.
            self._c.audit_sink_errors += 1
            log.exception("audit sink failed for %r", event)
