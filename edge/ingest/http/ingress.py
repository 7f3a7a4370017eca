"""The gateway's local HTTP server: device telemetry and (optionally) the local status page.

`POST http://GATEWAY:8080/api/v1/{token}/telemetry` with the CoAP ingress's rules (CONTRACT.md
"Devices over CoAP and HTTP"), built on the same two parts: edge.security.device_auth (lockout,
token, audit) and edge.ingest.intake (classify, commit, then answer). aiohttp does the wire work;
at the boundary a request becomes a frozen HttpRequest, the body is read through a size-bounded
reader, and an HttpReply becomes a response again, so TelemetryHandler is testable without sockets.

Answers: 200 {"status": "accepted", "readings": n} after the commit; 400 bad payload, 415
unknown Content-Type, 413 over 64 KiB (each a problem document, stored as a rejection); 401 bad
token; 429 with Retry-After while locked out; 503 with Retry-After when the gateway cannot take
more now, 507 Insufficient Storage with Retry-After when its disk is full (nothing stored). A
body over the limit is refused without reading past the limit: a declared Content-Length is
refused before the body is read (no "100 Continue" is sent for it), a chunked one after
limit + 1 bytes, and the connection is closed instead of drained.

Requests aiohttp cannot parse get a problem document too (414 for a request line over 8 KiB,
e.g. a giant token; 431 for oversized or too many headers; 400 otherwise), counted and logged
at most once per 10 s rather than a traceback each. The listener is an edge.ingest.listener
BoundedListener: connections over its caps get a 503 problem document and are closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from common.codecs import Limits, PayloadError
from common.problem import Problem
from edge.ingest.coap.ingress import INTERNAL, METHOD_NOT_ALLOWED, NOT_FOUND
from edge.ingest.intake import DeviceIngest, InFlight, IngestUnavailable
from edge.ingest.listener import (
    LOG_EVERY_S,
    BoundedListener,
    ConnectionCaps,
    ListenError,
    ListenerStats,
    LogThrottle,
    Refusal,
    plain_address,
)
from edge.security.device_auth import Admitted, DeviceAuthenticator

log = logging.getLogger("iotsphere.http")

TRANSPORT = "http"
STOP_GRACE_S = 5.0  # how long stop() lets requests waiting for a commit finish
BODY_TIMEOUT_S = 30.0  # a device that stops sending mid-body is answered 408, not waited for
# A request's headers must be complete this long after the connection opened or the previous
# answer went out (aiohttp's keep-alive timer, which also runs while headers trickle in): a
# slowloris socket that sends a header byte now and then is closed instead of held for an hour
# (aiohttp's default keep-alive is 3,630 s), and an idle keep-alive connection as well.
HEADER_TIMEOUT_S = 10.0
PROBLEM_TYPE = "application/problem+json"
TELEMETRY_PATH = "/api/v1/{token}/telemetry"
REFUSED_RETRY_AFTER_S = 5  # what a connection refused at a cap is told
# Without the gateway's plan (edge.ingest.listener.plan_caps), e.g. a test's own HttpIngress.
DEFAULT_CAPS = ConnectionCaps(max_connections=1024, max_per_address=256)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteInstaller = Callable[[web.Application], None]


class HttpIngressError(Exception):
    """The HTTP listener cannot run (e.g. the port is taken); one printable line."""


# -- frozen values at the aiohttp boundary -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    token: str
    content_type: str | None  # None: absent, recognise the payload like MQTT 3
    content_length: int | None  # None: chunked
    address: str | None


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    retry_after: int | None = None
    close: bool = False  # close the connection (an unread body must not be drained)

    @classmethod
    def problem(cls, problem: Problem, **kw: Any) -> HttpReply:
        return cls(problem.status, problem.to_json(), PROBLEM_TYPE, **kw)


class BodyTooLarge(Exception):
    pass


# Reads the request body, at most `limit` bytes; raises BodyTooLarge beyond, TimeoutError.
BodyReader = Callable[[int], Awaitable[bytes]]

REQUEST_TIMEOUT = Problem(
    "request-timeout", "Request body incomplete", 408, "the body did not arrive in time"
)


def too_large(limit: int) -> Problem:
    return PayloadError.too_large(f"the payload exceeds {limit} bytes").problem


def accepted_body(readings: int) -> bytes:
    return json.dumps({"status": "accepted", "readings": readings}).encode()


@dataclass(slots=True)
class HttpStats:
    requests: int = 0  # telemetry requests (any method on the telemetry path)
    accepted: int = 0  # 200 after commit
    rejected: int = 0  # 400 / 413 / 415 (stored as rejections)
    too_large: int = 0  # of rejected: 413
    unauthorized: int = 0  # 401
    locked_out: int = 0  # 429
    unavailable: int = 0  # 503/507: overloaded, stopping or storage failed, nothing stored
    insufficient_storage: int = 0  # of unavailable: 507, the gateway's disk is full
    incomplete: int = 0  # 408: the body did not arrive
    not_found: int = 0  # 404 (any path the server does not serve)
    bad_method: int = 0  # 405
    internal_errors: int = 0  # 500 (a bug: logged with its traceback)
    malformed: int = 0  # requests that could not be parsed: 400, 414 or 431
    readings: int = 0


class TelemetryHandler:
    """HttpRequest (+ a body reader) in, HttpReply out; awaits the commit for telemetry."""

    def __init__(
        self, auth: DeviceAuthenticator, ingest: DeviceIngest, limits: Limits | None = None
    ) -> None:
        self._auth = auth
        self._ingest = ingest
        self._max_bytes = (limits or Limits()).max_bytes
        self.stats = HttpStats()

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    async def handle(self, req: HttpRequest, read_body: BodyReader) -> HttpReply:
        st = self.stats
        st.requests += 1
        # Authentication first: a guesser learns nothing from how its body is judged, and a
        # locked-out sender's body is never read.
        verdict = self._auth.admit(req.token, req.address)
        if not isinstance(verdict, Admitted):
            if verdict.problem.status == 429:
                st.locked_out += 1
                return HttpReply.problem(
                    verdict.problem, retry_after=verdict.retry_after_s, close=True
                )
            st.unauthorized += 1
            return HttpReply.problem(verdict.problem, close=True)
        device_id = verdict.device.device_id
        limit = self._max_bytes
        if req.content_length is not None and req.content_length > limit:
            return await self._finish(
                self._ingest.reject(device_id, b"", too_large(limit), TRANSPORT), close=True
            )
        try:
            payload = await read_body(limit)
        except BodyTooLarge:
            return await self._finish(
                self._ingest.reject(device_id, b"", too_large(limit), TRANSPORT), close=True
            )
        except TimeoutError:
            st.incomplete += 1
            return HttpReply.problem(REQUEST_TIMEOUT, close=True)
        return await self._finish(
            self._ingest.ingest(device_id, payload, req.content_type, TRANSPORT)
        )

    async def _finish(self, pending: Any, *, close: bool = False) -> HttpReply:
        st = self.stats
        try:
            result = await pending
        except IngestUnavailable as exc:
            st.unavailable += 1
            st.insufficient_storage += exc.storage_full
            return HttpReply.problem(exc.problem, retry_after=exc.retry_after_s, close=close)
        if result.problem is None:
            st.accepted += 1
            st.readings += result.readings
            return HttpReply(200, accepted_body(result.readings), close=close)
        st.rejected += 1
        st.too_large += result.problem.status == 413
        return HttpReply.problem(result.problem, close=close)


# -- aiohttp glue ---------------------------------------------------------------------------------


def to_response(reply: HttpReply) -> web.Response:
    resp = web.Response(status=reply.status, body=reply.body)
    resp.content_type = reply.content_type
    if reply.retry_after is not None:
        resp.headers[hdrs.RETRY_AFTER] = str(reply.retry_after)
    if reply.close:
        resp.force_close()
    return resp


def problem_response(problem: Problem, **kw: Any) -> web.Response:
    return to_response(HttpReply.problem(problem, **kw))


def unparsable(exc: BaseException | None, max_line: int) -> Problem:
    """The problem document for a request aiohttp's parser refused."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, bytes | bytearray) and line.startswith((b"/", b"http:", b"https:")):
            return Problem("uri-too-long", "URI too long", 414,
                           f"the request line is longer than {max_line} bytes (a device token "
                           "goes in the path: POST /api/v1/{token}/telemetry)")  # fmt: skip
        return Problem("header-fields-too-large", "Request header fields too large", 431,
                       f"a request header is longer than {max_line} bytes")  # fmt: skip
    if isinstance(exc, HttpProcessingError) and "too many headers" in exc.message.lower():
        return Problem("header-fields-too-large", "Request header fields too large", 431,
                       "the request has too many header fields")  # fmt: skip
    return Problem("bad-request", "Bad request", 400, "the request is not well-formed HTTP/1.1")


class _ProblemRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, but a request its parser refuses gets a problem document
    (aiohttp answers text/plain and logs a traceback per request: a log flood on demand)."""

    __slots__ = ("_on_malformed",)

    def __init__(
        self, manager: web.Server, on_malformed: Callable[[Problem, str | None], None],
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(manager, **kwargs)
        self._on_malformed = on_malformed

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        if status == 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # a bug: logged as such
        problem = unparsable(exc, self.max_line_size)
        self._on_malformed(problem, request.remote)
        return problem_response(problem, close=True)


def body_reader(request: web.Request) -> BodyReader:
    async def read(limit: int) -> bytes:
        buf = bytearray()
        async with asyncio.timeout(BODY_TIMEOUT_S):
            while True:
                chunk = await request.content.read(limit + 1 - len(buf))
                if not chunk:
                    return bytes(buf)
                buf += chunk
                if len(buf) > limit:
                    raise BodyTooLarge()

    return read


def _plain_address(remote: str | None) -> str | None:
    return None if remote is None else plain_address(remote)


class HttpIngress:
    """The HTTP listener: start() binds, stop() answers requests waiting for commits, closes.

    `extra_routes` installs more routes on the same port (the local status page)."""

    def __init__(
        self,
        bind: str,
        port: int,
        auth: DeviceAuthenticator,
        ingest: DeviceIngest,
        extra_routes: RouteInstaller | None = None,
        caps: ConnectionCaps = DEFAULT_CAPS,
        tls: tuple[int, ssl.SSLContext] | None = None,
        plain: bool = True,
    ) -> None:
        self._bind = bind
        self._caps = caps
        self._requested_port = port
        # HTTPS: (port, context) of a second port serving the same app under the same caps
        self._tls = tls
        self._plain = plain
        self.tls_port: int | None = None
        self.handler = TelemetryHandler(auth, ingest)
        self.auth = auth
        self._extra_routes = extra_routes
        self._runner: web.AppRunner | None = None
        self._listener: BoundedListener | None = None
        self.listener_stats = ListenerStats(caps.max_connections, caps.max_per_address)
        self._malformed_log = LogThrottle()
        self._port: int | None = None
        self._in_flight = InFlight(STOP_GRACE_S)

    @property
    def port(self) -> int:
        if self._port is None:
            raise HttpIngressError("the HTTP listener is not started")
        return self._port

    @property
    def stats(self) -> HttpStats:
        return self.handler.stats

    def summary(self) -> dict[str, Any]:
        return {
            "port": self._port,
            "https_port": self.tls_port,
            **asdict(self.handler.stats),
            "auth": asdict(self.auth.stats),
            "in_flight": self._in_flight.count,
        }

    def _on_malformed(self, problem: Problem, remote: str | None) -> None:
        self.stats.malformed += 1
        if self._malformed_log.event(time.monotonic()):
            log.warning(
                "HTTP: %d unparsable request(s) answered with a problem document since the last "
                "such line (%d in all; the last from %s: %d %s); at most one such line per %.0f s",
                self._malformed_log.pending, self.stats.malformed, remote, problem.status,
                problem.title, LOG_EVERY_S,
            )  # fmt: skip
            self._malformed_log.logged()

    @staticmethod
    def _refusal(why: Refusal) -> bytes:
        detail = (
            "this gateway holds as many HTTP connections as it may"
            if why is Refusal.MAX_CONNECTIONS
            else "this gateway holds as many HTTP connections from your address as it may"
        )
        body = Problem("too-many-connections", "Too many connections", 503,
                       f"{detail}; retry later").to_json()  # fmt: skip
        return (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: " + PROBLEM_TYPE.encode() + b"\r\n"
            b"Retry-After: " + str(REFUSED_RETRY_AFTER_S).encode() + b"\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_route("POST", TELEMETRY_PATH, self._telemetry, expect_handler=self._expect)
        app.router.add_route("*", TELEMETRY_PATH, self._wrong_method)
        if self._extra_routes is not None:
            self._extra_routes(app)
        return app

    async def start(self) -> None:
        # lingering_time=0: after an answer that left a body unread (413, 401, 429), close the
        # connection rather than read and discard up to 10 s of whatever the sender pushes.
        handler_args: dict[str, Any] = {
            "access_log": None,
            "lingering_time": 0,
            "keepalive_timeout": HEADER_TIMEOUT_S,
        }
        runner = self._runner = web.AppRunner(
            self.app(), shutdown_timeout=STOP_GRACE_S, **handler_args
        )
        await runner.setup()
        manager = runner.server
        assert manager is not None
        loop = asyncio.get_running_loop()
        # The runner's server keeps track of the connections (stop() ends them); the listener
        # accepts them, within the caps, instead of a TCPSite.
        listener = BoundedListener(
            "HTTP",
            lambda: _ProblemRequestHandler(manager, self._on_malformed, loop=loop, **handler_args),
            self._caps,
            refusal=self._refusal,
        )
        plain = self._requested_port if self._plain else None
        try:
            await listener.start_ports(self._bind, plain, self._tls)
        except ListenError as exc:
            await runner.cleanup()
            self._runner = None
            what = "HTTPS" if exc.tls else "HTTP"
            raise HttpIngressError(
                f"cannot listen for {what} on {self._bind}:{exc.port} (TCP): {exc}"
            ) from exc
        self._listener = listener
        self.listener_stats = listener.stats
        self._port = listener.port if self._plain else None
        self.tls_port = listener.tls_port
        log.info("HTTP ingress listening on %s: %s%s", self._bind,
                 f"HTTP port {self._port}" if self._plain else "no plain HTTP",
                 f", HTTPS port {self.tls_port}" if self.tls_port else "")  # fmt: skip

    async def stop(self) -> None:
        """Refuse new telemetry, let requests awaiting a commit get their answer, then close."""
        started = time.monotonic()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        drained = await self._in_flight.drain()
        if self._runner is None:
            return
        if not drained:
            log.warning(
                "HTTP: %d requests still waiting at stop; unanswered", self._in_flight.count
            )
        await self._runner.cleanup()
        self._runner = None
        log.info("HTTP ingress stopped (%.1fs)", time.monotonic() - started)

    # -- handlers ---------------------------------------------------------------------------

    async def _expect(self, request: web.Request) -> None:
        """`Expect: 100-continue`: invite the body only when it fits; otherwise the handler
        answers 413 (or 401/429) before the device sends a byte of it."""
        length = request.content_length
        if length is not None and length > self.handler.max_bytes:
            return None
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _telemetry(self, request: web.Request) -> web.StreamResponse:
        if self._in_flight.closing:
            self.stats.requests += 1
            self.stats.unavailable += 1
            err = IngestUnavailable("the gateway is stopping")
            return problem_response(err.problem, retry_after=err.retry_after_s, close=True)
        req = HttpRequest(
            token=request.match_info["token"],
            content_type=request.headers.get(hdrs.CONTENT_TYPE),
            content_length=request.content_length,
            address=_plain_address(request.remote),
        )
        with self._in_flight.request():
            return to_response(await self.handler.handle(req, body_reader(request)))

    async def _wrong_method(self, _request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        self.stats.bad_method += 1
        resp = problem_response(METHOD_NOT_ALLOWED)
        resp.headers[hdrs.ALLOW] = "POST"
        return resp

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error leaves as a problem document; a bug is logged, never shown."""
        resp = await self._answer(request, handler)
        if not request.content.at_eof():
            # The body was not read (an error, or a route that takes none): aiohttp closes the
            # connection rather than drain it (lingering_time=0), so say so, or a keep-alive
            # client sends its next request into a closed socket.
            resp.force_close()
        return resp

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 404:
                self.stats.not_found += 1
                return problem_response(NOT_FOUND)
            if exc.status < 400:
                raise  # redirects are answers, not errors
            slug = (exc.reason or "error").lower().replace(" ", "-")
            return problem_response(Problem(slug, exc.reason, exc.status, exc.text or ""))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.stats.internal_errors += 1
            log.exception("HTTP %s %s failed", request.method, request.path)
            return problem_response(INTERNAL, close=True)
