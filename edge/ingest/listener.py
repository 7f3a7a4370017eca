"""Bounded TCP listeners: the gateway accepts its LAN connections itself, within caps.

Why not `loop.create_server`: asyncio 3.11's accept loop, on EMFILE/ENFILE, logs an ERROR with
a traceback ("socket.accept() out of system resource"), schedules a retry in 1 s and then keeps
looping over the same backlog, scheduling one retry per failed accept; each retry fails the same
way, so the retries multiply. Measured under `ulimit -n 1024` with 1,100 slowloris sockets:
20,288 tracebacks (9 MB of log) in 12 s, and no device got through until the 10 s header and
CONNECT timeouts freed descriptors. Here:

- a connection over a cap is closed as soon as it is accepted, before a byte is read: at most
  `max_connections` open at once on a listener and `max_per_address` from one source address,
  so a flood from one address cannot take a listener, and all listeners together stay below
  the process's descriptor limit (`plan_caps`);
- when accept() fails (out of descriptors), the listener stops reading its socket for 0.1 s,
  doubling up to 1 s, reset by the next accepted connection; connections wait in the kernel's
  backlog meanwhile;
- refusals and accept failures are counted (`ListenerStats`) and logged at most once per
  `LOG_EVERY_S` per listener, as a summary line.

The pieces that decide (ConnectionGate, AcceptBackoff, LogThrottle, plan_caps) do no I/O.
docs/decisions/listener-caps.md has the figures.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from common.backoff import Backoff

log = logging.getLogger("iotsphere.listener")

LOG_EVERY_S = 10.0  # at most one summary line per listener and kind in this long
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # as the MQTT CONNECT and HTTP header timeouts
ACCEPTS_PER_WAKEUP = 100  # as asyncio: the listening socket is drained in bursts
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 1.0
# An MQTT connection can hold two descriptors: its own and, for a password login, its pipe to
# the private Mosquitto. HTTP connections hold one.
FDS_PER_MQTT_CONNECTION = 2
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@functools.lru_cache(maxsize=4096)  # a few sensors, thousands of requests: parse each once
def plain_address(address: str) -> str:
    """One spelling per source: an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class Refusal(Enum):
    MAX_CONNECTIONS = "max_connections"
    PER_ADDRESS = "max_connections_per_address"


@dataclass(frozen=True, slots=True)
class ConnectionCaps:
    max_connections: int  # open at once on the listener
    max_per_address: int  # open at once from one source address


# -- sizing from the descriptor limit (pure) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapPlan:
    nofile: int  # the soft RLIMIT_NOFILE the plan is for
    reserve: int  # descriptors left for everything but the LAN listeners
    mqtt: ConnectionCaps
    http: ConnectionCaps
    wanted_nofile: int  # the limit under which the configured caps would hold unscaled

    @property
    def scaled(self) -> bool:
        return self.nofile < self.wanted_nofile

    def to_dict(self) -> dict[str, int]:
        return {"fd_limit": self.nofile, "fd_reserve": self.reserve,
                "fd_limit_wanted": self.wanted_nofile}  # fmt: skip


def wanted_nofile(mqtt_max: int, http_max: int, reserve: int) -> int:
    return reserve + FDS_PER_MQTT_CONNECTION * mqtt_max + http_max


def plan_caps(nofile: int, reserve: int, mqtt_max: int, http_max: int, per_address: int) -> CapPlan:
    """Caps for the MQTT and HTTP listeners that fit in `nofile - reserve` descriptors.

    When the configured caps do not fit, both shrink in proportion. A per-address cap is never
    more than a quarter of its listener's cap, so one address cannot take a whole listener."""
    wanted = wanted_nofile(mqtt_max, http_max, reserve)
    budget = max(nofile - reserve, 0)
    demand = wanted - reserve
    if demand > budget:
        mqtt_max = max(1, mqtt_max * budget // demand)
        http_max = max(1, http_max * budget // demand)

    def caps(total: int) -> ConnectionCaps:
        return ConnectionCaps(total, max(1, min(per_address, total // 4)))

    return CapPlan(nofile, reserve, caps(mqtt_max), caps(http_max), wanted)


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise the soft descriptor limit towards `wanted` (never above the hard limit, never
    down); returns (soft, hard) after. systemd's default is soft 1,024, hard 524,288, and
    expects a program that does not use select() to raise its own soft limit; asyncio uses
    epoll. The private Mosquitto, started after this, inherits the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit to %d: %s", target, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def open_fds() -> int | None:
    """Descriptors this process holds now (Linux: /proc/self/fd), None where unknown."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return None


# -- deciding (pure) -----------------------------------------------------------------------------


class ConnectionGate:
    """Open connections per source address and in all; admits or says which cap is full."""

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> Refusal | None:
        if self.open >= self.caps.max_connections:
            return Refusal.MAX_CONNECTIONS
        held = self._by_address.get(address, 0)
        if held >= self.caps.max_per_address:
            return Refusal.PER_ADDRESS
        self._by_address[address] = held + 1
        self.open += 1
        return None

    def release(self, address: str) -> None:
        held = self._by_address.get(address, 0)
        if held <= 0:
            raise ValueError(f"release without admit for {address}")
        if held == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = held - 1
        self.open -= 1

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)


class AcceptBackoff:
    """How long to stop accepting after a failed accept(): 0.1 s doubling to 1 s; reset by
    an accepted connection."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> None:
        self._backoff = Backoff(first_s, max_s)  # no jitter: one process, one listener

    def failed(self) -> float:
        return self._backoff.next_s()

    def succeeded(self) -> None:
        self._backoff.reset()


class LogThrottle:
    """Counts events and says whether to log now (at most once per `every_s`); `pending` is
    how many events the line about to be logged covers."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self.pending = 0
        self._logged_at: float | None = None

    def event(self, now: float) -> bool:
        self.pending += 1
        if self._logged_at is not None and now - self._logged_at < self.every_s:
            return False
        self._logged_at = now
        return True

    def logged(self) -> None:
        self.pending = 0


# -- the listener ----------------------------------------------------------------------------


@dataclass(slots=True)
class ListenerStats:
    max_connections: int = 0
    max_connections_per_address: int = 0
    open: int = 0  # connections open now
    accepted: int = 0  # connections admitted since start
    refused_max_connections: int = 0  # closed at once: the listener was full
    refused_per_address: int = 0  # closed at once: their address held its share
    accept_failures: int = 0  # accept() failed: out of descriptors (or memory)
    accept_paused_s: float = 0.0  # time spent not accepting after those failures
    tls_handshake_failures: int = 0  # TLS port: closed in the handshake (wrong CA, timeout)

    @property
    def refused(self) -> int:
        return self.refused_max_connections + self.refused_per_address


class _Tracked(asyncio.Protocol):
    """Passes every callback to the connection's own protocol; frees its place in the gate
    when the connection is gone."""

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._inner.connection_lost(exc)


class ListenError(OSError):
    """A port that could not be bound (`tls`: the TLS one)."""

    def __init__(self, port: int, tls: bool, cause: OSError) -> None:
        super().__init__(*((cause.errno, cause.strerror) if cause.errno else (str(cause),)))
        self.port, self.tls = port, tls
        self.reason = cause.strerror or str(cause)


class BoundedListener:
    """A listening TCP socket (one per address `bind` resolves to) with its own accept loop.

    `factory` builds the protocol of each admitted connection; `refusal` (optional) gives the
    bytes sent to a refused one before it is closed (an HTTP 503), nothing for MQTT. close()
    stops listening; open connections are their protocols' to end. start() may be called once
    more with a TLS context: that port's connections are TLS (handshake within 10 s), under the
    same caps and counts, and a refused one is closed without the refusal bytes."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], asyncio.Protocol],
        caps: ConnectionCaps,
        *,
        refusal: Callable[[Refusal], bytes] | None = None,
        backlog: int = 128,
    ) -> None:
        self.name = name
        self._factory = factory
        self._gate = ConnectionGate(caps)
        self._refusal = refusal
        self._backlog = backlog
        self._sockets: list[socket.socket] = []
        self._tls: dict[socket.socket, ssl.SSLContext] = {}  # the TLS ones among _sockets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backoff = AcceptBackoff()
        self._paused: asyncio.TimerHandle | None = None
        self._refused_log = LogThrottle()
        self._failed_log = LogThrottle()
        self._setup_log = LogThrottle()
        self._tasks: set[asyncio.Task[object]] = set()
        self.stats = ListenerStats(caps.max_connections, caps.max_per_address)

    @property
    def port(self) -> int:
        """The plain port (the TLS one when there is no plain one)."""
        if not self._sockets:
            raise OSError(f"the {self.name} listener is not listening")
        plain = [s for s in self._sockets if s not in self._tls] or self._sockets
        return int(plain[0].getsockname()[1])

    @property
    def tls_port(self) -> int | None:
        tls = [s for s in self._sockets if s in self._tls]
        return int(tls[0].getsockname()[1]) if tls else None

    @property
    def caps(self) -> ConnectionCaps:
        return self._gate.caps

    async def start(self, bind: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Bind and listen (raises OSError as create_server would), then accept."""
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            bind or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        new: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in infos:
                if (family, address) in seen:
                    continue
                seen.add((family, address))
                sock = socket.socket(family, kind, proto)
                self._sockets.append(sock)
                new.append(sock)
                if tls is not None:
                    self._tls[sock] = tls
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        for sock in new:
            loop.add_reader(sock.fileno(), self._accept, sock)

    async def start_ports(
        self, bind: str, port: int | None, tls: tuple[int, ssl.SSLContext] | None
    ) -> None:
        """The plain port (None: none) and the TLS one (port, context) when given; on a
        failure nothing stays open and ListenError names the port."""
        ports: list[tuple[int, ssl.SSLContext | None]] = [] if port is None else [(port, None)]
        for number, context in ports + ([tls] if tls is not None else []):
            try:
                await self.start(bind, number, context)
            except OSError as exc:
                self.close()
                raise ListenError(number, context is not None, exc) from exc

    def close(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for sock in self._sockets:
            if self._loop is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        self._tls.clear()

    # -- accepting ---------------------------------------------------------------------------

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the peer gave up while queued
            except OSError as exc:
                self._accept_failed(exc)
                return
            self._backoff.succeeded()
            address = plain_address(str(peer[0])) if isinstance(peer, tuple) else str(peer)
            refused = self._gate.admit(address)
            tls = self._tls.get(sock)
            if refused is not None:
                self._refuse(conn, address, refused, tls is None)
                continue
            self.stats.accepted += 1
            self.stats.open = self._gate.open
            self._serve(conn, address, tls)

    def _serve(self, conn: socket.socket, address: str, tls: ssl.SSLContext | None) -> None:
        assert self._loop is not None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._gate.release(address)
                self.stats.open = self._gate.open

        def made() -> asyncio.Protocol:
            return _Tracked(self._factory(), release)

        if tls is None:
            setup = self._loop.connect_accepted_socket(made, conn)
        else:
            setup = self._loop.connect_accepted_socket(
                made, conn, ssl=tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S
            )
        task = self._loop.create_task(setup)
        self._tasks.add(task)

        def done(t: asyncio.Task[object]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or t.exception() is not None:
                release()
                conn.close()
                if tls is not None and isinstance(t.exception(), (OSError, TimeoutError)):
                    self.stats.tls_handshake_failures += 1  # a wrong CA, a port scan: no log
                    return
                if not t.cancelled() and self._setup_log.event(self._loop_time()):
                    log.error("%s: %d connection(s) not set up since the last such line (the "
                              "last from %s)", self.name, self._setup_log.pending, address,
                              exc_info=t.exception())  # fmt: skip
                    self._setup_log.logged()

        task.add_done_callback(done)

    def _refuse(self, conn: socket.socket, address: str, why: Refusal, answer: bool) -> None:
        st = self.stats
        if why is Refusal.MAX_CONNECTIONS:
            st.refused_max_connections += 1
        else:
            st.refused_per_address += 1
        try:
            if self._refusal is not None and answer:
                conn.setblocking(False)
                conn.send(self._refusal(why))
        except OSError:
            pass  # gone already, or its buffer is full: closing is the answer then
        finally:
            conn.close()
        assert self._loop is not None
        if self._refused_log.event(self._loop.time()):
            caps = self._gate.caps
            log.warning(
                "%s: %d connection(s) refused at the caps since the last such line (%d in all: "
                "%d at max_connections=%d, %d at max_connections_per_address=%d; the last from "
                "%s); at most one such line per %.0f s",
                self.name, self._refused_log.pending, st.refused,
                st.refused_max_connections, caps.max_connections,
                st.refused_per_address, caps.max_per_address, address, LOG_EVERY_S,
            )  # fmt: skip
            self._refused_log.logged()

    def _accept_failed(self, exc: OSError) -> None:
        """Out of descriptors (or another accept failure): stop reading the listening socket
        for a while instead of retrying at once; the kernel keeps the backlog meanwhile."""
        assert self._loop is not None
        self.stats.accept_failures += 1
        delay = self._backoff.failed()
        self.stats.accept_paused_s += delay
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        if self._paused is not None:
            self._paused.cancel()
        self._paused = self._loop.call_later(delay, self._resume)
        if self._failed_log.event(self._loop.time()):
            what = "out of file descriptors" if exc.errno in _OUT_OF_FDS else "accept() failed"
            log.error(
                "%s: %s (%s); accepting paused for %.1f s (%d failure(s) since the last such "
                "line, %d in all; %d connections open here); at most one such line per %.0f s",
                self.name, what, exc.strerror or exc, delay, self._failed_log.pending,
                self.stats.accept_failures, self._gate.open, LOG_EVERY_S,
            )  # fmt: skip
            self._failed_log.logged()

    def _resume(self) -> None:
        self._paused = None
        assert self._loop is not None
        for sock in self._sockets:
            if sock.fileno() >= 0:
                self._loop.add_reader(sock.fileno(), self._accept, sock)
