"""The gateway's LAN-facing MQTT port: audit and lockout in front of the private Mosquitto.

Why a front at all: Mosquitto 2.0 logs a refused CONNECT as "Sending CONNACK to 127.0.0.1
(0, 5)", without the username, so per-username lockout cannot be driven from its log. The front
reads the client's CONNECT (to learn username and client id), refuses locked-out clients itself,
forwards everything else to the broker on loopback and reads the broker's CONNACK to learn the
outcome. After a successful CONNACK it only copies bytes; Mosquitto stays the authority for
credentials, sessions, QoS and ACLs.

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
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

from common.clock import Clock
from edge.lockout import LockoutTracker
from edge.mqtt_front.packets import (
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

log = logging.getLogger(__name__)

AuthEventKind = Literal["auth_failure", "lockout"]

# Large reads: after CONNACK the front is a byte pipe, and one syscall per 64 KiB keeps the
# Python overhead per message low when many small packets arrive back to back.
_CHUNK = 64 * 1024

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
    over_capacity: int = 0  # connections refused because max_connections were open
    audit_sink_errors: int = 0
    bytes_up: int = 0  # client -> broker
    bytes_down: int = 0  # broker -> client


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    active: int = 0
    refused_locked: int = 0
    auth_failures: int = 0
    malformed: int = 0
    no_connect: int = 0
    upstream_errors: int = 0
    over_capacity: int = 0
    audit_sink_errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


_STAT_FIELDS = tuple(f.name for f in fields(FrontStats))


def _peer_address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer) if peer else "unknown"


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    # asyncio already sets TCP_NODELAY on TCP transports; set it explicitly because a delayed
    # small PUBACK through two hops would cost up to 40 ms per QoS 1 message with Nagle on.
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttFront:
    def __init__(  # noqa: PLR0917 - the positional order is the documented interface
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
        max_connections: int = 10_000,
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
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._c = _Counters()

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise MqttFrontError("MQTT front is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def stats(self) -> FrontStats:
        return FrontStats(**{name: getattr(self._c, name) for name in _STAT_FIELDS})

    async def start(self) -> None:
        if self._server is not None:
            raise MqttFrontError("MQTT front already started")
        try:
            self._server = await asyncio.start_server(
                self._serve, self._bind, self._port, reuse_address=True
            )
        except OSError as exc:
            raise MqttFrontError(
                f"cannot listen for MQTT on {self._bind}:{self._port}: {exc.strerror or exc}"
            ) from exc
        log.info("MQTT front on %s:%d -> %s:%d", self._bind, self.port, *self._upstream)

    async def stop(self) -> None:
        """Stop listening and end every connection, piped or not."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        self._stopping = False

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        c = self._c
        c.connections_total += 1
        c.active += 1
        self._tasks.add(task)
        try:
            if len(self._tasks) > self._max_connections:
                c.over_capacity += 1
                if c.over_capacity == 1 or c.over_capacity % 1000 == 0:
                    log.warning(
                        "MQTT front at max_connections=%d; refused %d connections so far",
                        self._max_connections,
                        c.over_capacity,
                    )
                return
            _set_nodelay(writer)
            await self._session(reader, writer, _peer_address(writer))
        except OSError as exc:
            # Resets and broken pipes are how TCP connections end on a LAN; not an error here.
            log.debug("MQTT connection ended: %s", exc)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # stop() ends connections by cancelling them; finishing normally keeps asyncio's
            # start_server callback from reporting each one as an unhandled error.
            task.uncancel()
        finally:
            c.active -= 1
            self._tasks.discard(task)
            writer.close()

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        got = await self._read_connect(reader, writer, address)
        if got is None:
            return
        info, head = got

        decision = self._tracker.check(info.username, address)
        if decision.locked:
            self._c.refused_locked += 1
            self._emit(
                "auth_failure",
                address=address,
                username=info.username,
                client_id=info.client_id,
                reason="locked_out",
                key=decision.key,
            )
            await self._reply(
                writer, build_connack_refusal(info.protocol_level, RefusalReason.LOCKED_OUT)
            )
            return

        try:
            async with asyncio.timeout(self._upstream_timeout_s):
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except (OSError, TimeoutError) as exc:
            self._c.upstream_errors += 1
            log.warning("MQTT broker %s:%d unreachable: %s", *self._upstream, exc)
            await self._reply(
                writer, build_connack_refusal(info.protocol_level, RefusalReason.SERVER_UNAVAILABLE)
            )
            return
        try:
            _set_nodelay(up_writer)
            # The CONNECT and whatever the client pipelined behind it go up unchanged.
            up_writer.write(head)
            self._c.bytes_up += len(head)
            got_ack = await self._read_connack(up_reader)
            if got_ack is None:
                self._c.upstream_errors += 1
                log.warning(
                    "MQTT broker closed %r from %s without CONNACK", info.client_id, address
                )
                self._emit(
                    "auth_failure",
                    address=address,
                    username=info.username,
                    client_id=info.client_id,
                    reason="no_connack",
                )
                return
            code, ack_len, down = got_ack
            if code != 0:
                self._broker_refused(info, address, code)
                # Forward only the CONNACK: after a refusal the broker closes and so do we.
                await self._reply(writer, down[:ack_len])
                return
            self._tracker.record_success(info.username, address)
            writer.write(down)
            self._c.bytes_down += len(down)
            await self._pipe(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _read_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> tuple[ConnectInfo, bytes] | None:
        buf = bytearray()
        reason: str
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                while True:
                    info = parse_connect(buf)
                    if info is not None:
                        return info, bytes(buf)
                    chunk = await reader.read(_CHUNK)
                    if not chunk:
                        reason = "incomplete_connect"
                        break
                    buf += chunk
        except TimeoutError:
            reason = "connect_timeout"
        except UnsupportedProtocol as exc:
            reason = "unsupported_protocol"
            log.info("MQTT CONNECT from %s: %s", address, exc)
            # What Mosquitto answers too; a 3.1.1-shaped CONNACK is the one old clients read.
            await self._reply(writer, build_connack(4, V3_UNACCEPTABLE_PROTOCOL))
        except MalformedPacket as exc:
            reason = "malformed_connect"
            log.info("malformed MQTT CONNECT from %s: %s", address, exc)
        if not buf:
            # A port probe or health check, not a login attempt: nothing to audit or count.
            self._c.no_connect += 1
            return None
        self._c.malformed += 1
        self._emit("auth_failure", address=address, username=None, client_id=None, reason=reason)
        # Counted against the address only: the username of a broken CONNECT is not trusted.
        self._count_failure(address, None, None)
        return None

    async def _read_connack(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes] | None:
        """(code, CONNACK length, all bytes read) or None if the broker closed or sent junk."""
        buf = bytearray()
        try:
            async with asyncio.timeout(self._upstream_timeout_s):
                while True:
                    got = parse_connack(buf)
                    if got is not None:
                        return got[0], got[1], bytes(buf)
                    chunk = await reader.read(_CHUNK)
                    if not chunk:
                        return None
                    buf += chunk
        except (TimeoutError, MalformedPacket) as exc:
            log.warning("bad CONNACK from MQTT broker: %r", exc)
            return None

    def _broker_refused(self, info: ConnectInfo, address: str, code: int) -> None:
        self._c.auth_failures += 1
        reason, counts = connack_reason(info.protocol_level, code)
        self._emit(
            "auth_failure",
            address=address,
            username=info.username,
            client_id=info.client_id,
            reason=reason,
        )
        if counts:
            self._count_failure(address, info.username, info.client_id)

    def _count_failure(self, address: str, username: str | None, client_id: str | None) -> None:
        for key in self._tracker.record_failure(username, address):
            log.warning("MQTT lockout of %r after repeated authentication failures", key)
            self._emit(
                "lockout",
                address=address,
                username=username,
                client_id=client_id,
                reason="too_many_failures",
                key=key,
            )

    def _emit(
        self,
        kind: AuthEventKind,
        *,
        address: str,
        username: str | None,
        client_id: str | None,
        reason: str,
        key: str | None = None,
    ) -> None:
        event = AuthEvent(self._clock.now_ms(), kind, address, username, client_id, reason, key)
        try:
            self._on_auth_event(event)
        except Exception:
            # A broken audit sink must not take the MQTT port down with it, but it is loud.
            self._c.audit_sink_errors += 1
            log.exception("audit sink failed for %r", event)

    async def _reply(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self._c.bytes_down += len(data)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._upstream_timeout_s):
                await writer.drain()

    # -- the byte pipe -------------------------------------------------------------------

    async def _pipe(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        up = asyncio.create_task(self._copy(client_reader, up_writer, up=True))
        down = asyncio.create_task(self._copy(up_reader, client_writer, up=False))
        try:
            done, pending = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            if pending and all(t.exception() is None for t in done):
                # One side half-closed and its EOF was passed on; let the other side finish
                # what it is sending, but not forever (a peer may never close its half).
                await asyncio.wait(pending, timeout=self._half_close_linger_s)
        finally:
            for task in (up, down):
                task.cancel()
            results = await asyncio.gather(up, down, return_exceptions=True)
        for result in results:
            if isinstance(result, OSError):
                log.debug("MQTT pipe ended: %s", result)
            elif isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                raise result

    async def _copy(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        c = self._c
        while data := await reader.read(_CHUNK):
            writer.write(data)
            if up:
                c.bytes_up += len(data)
            else:
                c.bytes_down += len(data)
            await writer.drain()  # back-pressure: a slow reader slows its sender, no buffering
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
