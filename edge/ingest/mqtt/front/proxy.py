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
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, fields
from typing import Any, Literal

from common.clock import Clock
from edge.ingest.listener import BoundedListener, ConnectionCaps, ListenError, ListenerStats
from edge.ingest.mqtt.front.packets import (
    ConnectInfo,
)
from edge.ingest.mqtt.front.session import Session
from edge.ingest.mqtt.front.telemetry import (
    Intake,
    ReplySink,
    TapCounters,
)
from edge.security.device_auth import DeviceAuthenticator
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


class MqttFront:
    def __init__(  # noqa: PLR0913 - its collaborators are injected, each a test seam
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
        tls: tuple[int, ssl.SSLContext] | None = None,
        plain: bool = True,
    ) -> None:
        self._bind = bind
        self._port = port
        # MQTT over TLS: (port, context) of a second port under the same caps and sessions
        self._tls = tls
        self._plain = plain
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
        self._sessions: set[Session] = set()
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
    def tls_port(self) -> int | None:
        """The bound MQTT-over-TLS port, None when it is off."""
        return self._listener.tls_port if self._listener is not None else None

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
        # MQTT over TLS goes through the same listener: the same caps, counts and sessions.
        listener = BoundedListener("MQTT", lambda: Session(self).client_side, self._caps)
        try:
            await listener.start_ports(self._bind, self._port if self._plain else None, self._tls)
        except ListenError as exc:
            what = "MQTT over TLS" if exc.tls else "MQTT"
            raise MqttFrontError(
                f"cannot listen for {what} on {self._bind}:{exc.port}: {exc.reason}"
            ) from exc
        self._listener = listener
        self._listener_stats = listener.stats
        log.info(
            "MQTT front on %s (%s%s) -> %s:%d", self._bind,
            f"port {listener.port}" if self._plain else "no plain port",
            f", TLS port {listener.tls_port}" if self._tls else "", *self._upstream,
        )  # fmt: skip

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

    def _spawn(self, coro: Coroutine[Any, Any, None], session: Session) -> asyncio.Task[None]:
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
