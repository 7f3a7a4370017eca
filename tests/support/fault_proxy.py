"""A fault-injecting HTTP/1.1 proxy for tests: asyncio, 127.0.0.1, in front of one upstream.

The gateway (httpx) talks to the proxy as if it were the cloud (uvicorn). For every request
the proxy draws one fault from a seeded `random.Random` with the current weights:

  PASS            forward the request, return the response.
  DROP_RESPONSE   forward the request, read the upstream's whole response (so the cloud has
                  committed whatever it commits), then close the client connection without
                  sending a byte of it: "the response was lost after the commit".
  RESET           reset the client connection (SO_LINGER 0, so the kernel sends RST) at a
                  random point: before anything reached the upstream, part-way through the
                  request (the upstream connection is reset too, so the cloud sees a torn
                  request), or part-way through the response (after the commit).
  DELAY           hold the request, or the response, for a random time before passing it
                  on. A hold longer than the client's timeout makes the client give up and
                  resend while the original is still on its way: the cloud then sees the
                  same batch twice, the late copy last.

Per request, not per connection: httpx keeps a connection alive and sends many requests on
it, so a fault decided per connection would hit only the first request of a long-lived
connection and let every later one through. The proxy therefore parses HTTP/1.1 framing on
the client side (request head; body by Content-Length or chunked; responses by
Content-Length, chunked, no-body statuses or read-to-close) and decides per request. Each
request goes to the upstream on a fresh connection, closed after its response: for the
upstream this is equivalent (HTTP semantics do not depend on connection reuse), and it keeps
an upstream keep-alive timeout or restart from ever being mistaken for an injected fault.
When the upstream cannot be reached (the cloud is restarting) the proxy answers 502, as a
real reverse proxy would; that is counted as `upstream_down`, and no fault is drawn for that
request, so every injected fault meets a running upstream (an upstream that goes away while
it has the request is counted as `upstream_lost`, also answered 502).

Reproducibility: tracked requests (the sync batches) and the others draw from two separate
seeded streams, and every decision consumes exactly the same number of draws, so the k-th
batch request that reaches a running upstream always meets the same fault (with the same
reset point, cut and delay), however many config requests or outages came between. How many
batch requests a run makes still depends on timing, as in any real-time test; `plan(seed, n)`
shows the first n decisions, so a test can pick a seed whose early decisions cover every
fault kind.

Counters (`stats()`) count every fault kind overall and for requests whose path starts with
`track_prefix` (the sync batch endpoint), so a test can require that each kind really hit the
requests it cares about and cannot pass vacuously. `resent_after_drop` counts requests whose
body equals one whose response was dropped (or reset after the upstream answered): the client
resent a batch the upstream had already answered.

`ThreadedFaultProxy` runs the proxy on its own event loop in a thread, for synchronous tests
that block on subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger("tests.support.fault_proxy")
T = TypeVar("T")

MAX_HEAD = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})


class Fault(enum.Enum):
    PASS = "pass"
    DROP_RESPONSE = "drop_response"
    RESET = "reset"
    DELAY = "delay"


class ResetPoint(enum.Enum):
    BEFORE_FORWARD = "before_forward"
    MID_REQUEST = "mid_request"
    MID_RESPONSE = "mid_response"


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything random about one request, drawn up front in a fixed number of draws."""

    fault: Fault
    reset_point: ResetPoint
    delay_s: float
    delay_request: bool  # DELAY: hold the request (else the response)
    cut: float  # RESET mid-request/mid-response: the fraction of the bytes sent first

    @classmethod
    def draw(
        cls,
        rng: random.Random,
        weights: tuple[tuple[Fault, ...], tuple[float, ...]],
        delay_s: tuple[float, float],
    ) -> Decision:
        fault = rng.choices(*weights)[0]  # one random() call
        points = list(ResetPoint)
        point = points[min(int(rng.random() * len(points)), len(points) - 1)]
        return cls(fault, point, rng.uniform(*delay_s), rng.random() < 0.5, rng.random())


def plan(
    seed: int,
    n: int,
    weights: Mapping[Fault, float],
    delay_s: tuple[float, float] = (0.1, 1.0),
) -> list[Decision]:
    """The first n decisions a FaultProxy with this seed makes for tracked requests."""
    rng = random.Random(f"{seed}/tracked")
    table = _weight_table(weights)
    return [Decision.draw(rng, table, delay_s) for _ in range(n)]


def _weight_table(weights: Mapping[Fault, float]) -> tuple[tuple[Fault, ...], tuple[float, ...]]:
    items = [(f, float(w)) for f, w in weights.items() if w > 0]
    if not items:
        raise ValueError("at least one fault needs a positive weight")
    return tuple(f for f, _ in items), tuple(w for _, w in items)


class ProtocolError(Exception):
    """The peer sent something this proxy does not understand (closes the connection)."""


@dataclass(frozen=True, slots=True)
class HttpMessage:
    """One request or response as raw bytes, plus what framing needed from the head."""

    head: bytes  # start line and headers, with the final CRLF CRLF
    body: bytes  # as on the wire (chunked stays chunked)
    start_line: str
    headers: tuple[tuple[str, str], ...]

    @property
    def raw(self) -> bytes:
        return self.head + self.body

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def wants_close(self) -> bool:
        return "close" in (self.header("connection") or "").lower()


def _parse_head(head: bytes) -> tuple[str, tuple[tuple[str, str], ...]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return lines[0], tuple(headers)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        out += size_line
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                line = await reader.readuntil(b"\r\n")
                out += line
                if line == b"\r\n":
                    return bytes(out)
        out += await reader.readexactly(size + 2)


async def read_message(
    reader: asyncio.StreamReader, *, response_to: str | None = None
) -> HttpMessage | None:
    """Read one HTTP/1.1 message; None on a clean EOF before its first byte.

    `response_to` is the request method when reading a response (HEAD has no body).
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed inside a message head") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError("message head too large") from exc
    start, headers = _parse_head(head)
    msg = HttpMessage(head, b"", start, headers)
    if response_to is not None:
        status = int(start.split(" ", 2)[1])
        if response_to == "HEAD" or status in NO_BODY_STATUSES or 100 <= status < 200:
            return msg
    te = (msg.header("transfer-encoding") or "").lower()
    length = msg.header("content-length")
    if "chunked" in te:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(int(length))
    elif response_to is not None:
        body = await reader.read()  # delimited by the upstream closing the connection
    else:
        body = b""  # a request without a length has no body
    return HttpMessage(head, body, start, headers)


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


_BAD_GATEWAY = (
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 17\r\n"
    b"connection: close\r\n\r\nupstream is down\n"
)


class FaultProxy:
    """See the module docstring. Use `start()` / `aclose()` on the loop it serves from."""

    def __init__(
        self,
        upstream_port: int,
        *,
        seed: int,
        weights: Mapping[Fault, float] | None = None,
        delay_s: tuple[float, float] = (0.1, 1.0),
        track_prefix: str = "/api/v1/sync/batches",
        upstream_host: str = "127.0.0.1",
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._rng_tracked = random.Random(f"{seed}/tracked")
        self._rng_other = random.Random(f"{seed}/other")
        self._weights: tuple[tuple[Fault, ...], tuple[float, ...]] = ((Fault.PASS,), (1.0,))
        self.set_weights(weights or {Fault.PASS: 1.0})
        self.delay_s = delay_s
        self.track_prefix = track_prefix
        self.port = 0
        self.counts: Counter[str] = Counter()  # every request
        self.tracked: Counter[str] = Counter()  # requests under track_prefix
        self._dropped_bodies: set[bytes] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- control ---------------------------------------------------------------------------

    def set_weights(self, weights: Mapping[Fault, float]) -> None:
        """Switch the fault mix (e.g. PASS only while enrolling); takes effect per request."""
        self._weights = _weight_table(weights)

    def stats(self) -> dict[str, dict[str, int]]:
        return {"all": dict(self.counts), "tracked": dict(self.tracked)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", 0, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- per connection --------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._count("client_error", None)
            log.debug("client connection ended: %r", exc)
        except asyncio.CancelledError:
            # aclose() cancels us; end quietly (asyncio's stream callback would otherwise
            # log the cancellation as an error).
            log.debug("client connection closed by the proxy's shutdown")
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    def _count(self, key: str, path: str | None) -> None:
        self.counts[key] += 1
        if path is not None and path.startswith(self.track_prefix):
            self.tracked[key] += 1

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the client connection is finished."""
        request = await read_message(reader)
        if request is None:
            return False
        method, path = [*request.start_line.split(" "), "", ""][:2]
        digest = hashlib.sha256(request.body).digest() if request.body else b""
        if digest and digest in self._dropped_bodies:
            self._count("resent_after_drop", path)
        self._count("requests", path)
        upstream = await self._open_upstream()
        if upstream is None:
            # Faults are drawn only with the upstream up, so each one meets a live cloud.
            self._count("upstream_down", path)
            return await self._bad_gateway(writer)
        try:
            return await self._with_fault(request, method, path, digest, writer, *upstream)
        finally:
            upstream[1].transport.abort()

    async def _with_fault(
        self,
        request: HttpMessage,
        method: str,
        path: str,
        digest: bytes,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        tracked = path.startswith(self.track_prefix)
        rng = self._rng_tracked if tracked else self._rng_other
        decision = Decision.draw(rng, self._weights, self.delay_s)
        fault = decision.fault
        self._count(fault.value, path)
        if fault is Fault.RESET:
            point = decision.reset_point
            self._count(f"reset_{point.value}", path)
            if point is ResetPoint.BEFORE_FORWARD:
                _abort_with_rst(writer)
                return False
            if point is ResetPoint.MID_REQUEST:
                await self._torn_request(request, up_writer, decision.cut)
                _abort_with_rst(writer)
                return False
        if fault is Fault.DELAY and decision.delay_request:
            self._count("delay_request", path)
            await asyncio.sleep(decision.delay_s)
            fault = Fault.PASS  # the rest of this request passes through

        response = await self._exchange(request, method, up_reader, up_writer)
        if response is None:  # e.g. the cloud was stopped while it had the request
            self._count("upstream_lost", path)
            return await self._bad_gateway(writer)
        status = int(response.start_line.split(" ", 2)[1])

        if fault is Fault.DROP_RESPONSE:
            self._count(f"drop_response_{status}", path)
            if digest:
                self._dropped_bodies.add(digest)
            return False  # the caller aborts: the client sees the connection close unanswered
        if fault is Fault.RESET:  # MID_RESPONSE: after the upstream answered
            self._count(f"reset_mid_response_{status}", path)
            if digest:
                self._dropped_bodies.add(digest)
            raw = response.raw
            writer.write(raw[: int(decision.cut * (len(raw) - 1))])  # never all of it
            await writer.drain()
            _abort_with_rst(writer)
            return False
        if fault is Fault.DELAY:
            self._count("delay_response", path)
            await asyncio.sleep(decision.delay_s)
        writer.write(response.raw)
        await writer.drain()
        return not (request.wants_close() or response.wants_close())

    @staticmethod
    async def _bad_gateway(writer: asyncio.StreamWriter) -> bool:
        writer.write(_BAD_GATEWAY)
        await writer.drain()
        return False

    # -- upstream --------------------------------------------------------------------------

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            return await asyncio.open_connection(*self.upstream, limit=MAX_HEAD)
        except OSError:
            return None

    @staticmethod
    async def _exchange(
        request: HttpMessage,
        method: str,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> HttpMessage | None:
        """Send the request upstream; its response, or None when the upstream dropped the
        connection before a complete response."""
        try:
            up_writer.write(request.raw)
            await up_writer.drain()
            return await read_message(up_reader, response_to=method)
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError):
            return None

    @staticmethod
    async def _torn_request(
        request: HttpMessage, up_writer: asyncio.StreamWriter, cut: float
    ) -> None:
        """Send part of the request upstream (at least a byte, never all), then reset."""
        raw = request.raw
        with contextlib.suppress(ConnectionError, OSError):
            up_writer.write(raw[: max(1, int(cut * (len(raw) - 1)))])
            await up_writer.drain()
            await asyncio.sleep(0.05)  # let the upstream start on it
        _abort_with_rst(up_writer)


async def _as_coro(fn: Callable[[], T]) -> T:
    return fn()


class ThreadedFaultProxy:
    """A FaultProxy on its own event loop in a daemon thread (for synchronous tests).

    Counters are read with `stats()`, weights switched with `set_weights()`; both are plain
    attribute operations under the GIL. `stop()` closes every connection and joins the thread.
    """

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.proxy.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.proxy.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def start(self) -> ThreadedFaultProxy:
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run fn on the proxy's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(_as_coro(fn), self._loop).result(10)

    def set_weights(self, weights: Mapping[Fault, float]) -> None:
        """Switch the fault mix; in effect for every request read after this returns."""
        self._call(lambda: self.proxy.set_weights(weights))

    def stats(self) -> dict[str, dict[str, int]]:
        return self._call(self.proxy.stats)

    @property
    def url(self) -> str:
        return self.proxy.url

    def __enter__(self) -> ThreadedFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
