"""CoAP ingress: `POST coap://GATEWAY/api/v1/{token}/telemetry`, answered after the commit.

aiocoap does the wire work (parsing, CON/ACK, separate responses, and the deduplication that
makes a retransmitted confirmable request with the same message id get the stored answer
instead of being handled twice). At the boundary an aiocoap Message becomes a frozen
CoapRequest and a CoapReply becomes a Message again; between the two everything is ours:
lockout and token check (edge.security.device_auth), block-wise assembly with a size bound
(aiocoap's own Block1 spool has none), then edge.ingest.intake, which returns after the durable
commit.

Answers (CONTRACT.md "Devices over CoAP and HTTP"): 2.04 stored; 4.00 bad payload, 4.15 unknown
format, 4.13 over 64 KiB, each with the problem document as diagnostic payload and stored as a
rejection; 4.01 bad token; 4.29 with Max-Age while locked out; 5.03 with Max-Age when the gateway
cannot take more right now or cannot store (a full disk too: CoAP has no 5.07; nothing stored).

OSCORE (RFC 8613): `POST /telemetry` protected with a device's security context
(edge.ingest.coap.oscore_contexts). aiocoap's OscoreSiteWrapper unprotects it (refusing unknown
contexts, failed decryption and replays itself, with 4.01 / 4.00 before anything is stored; the
edge.ingest.coap.oscore_guard around it audits those and counts them for the address lockout)
and hands the inner request on with an OSCOREAddress as its remote; the registry turns that into
the device id, and the request goes through the same DeviceIngest. `/telemetry` without OSCORE is
4.01.

Unprotected requests skip the OSCORE layers (edge.ingest.coap.context: a per-request cost at load).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.interfaces
from aiocoap import Code, Message
from aiocoap.numbers import OptionNumber
from aiocoap.optiontypes import BlockOption

from common.clock import Clock
from common.codecs import PayloadError
from common.problem import Problem
from edge.ingest.coap.blockwise import (
    Block1,
    Block1Assembler,
    BlockContinue,
    BlockIncomplete,
    BlockTooLarge,
)
from edge.ingest.coap.context import (
    GatewayCoapContext,
    MalformedDatagrams,
    drop_undecodable,
    grow_receive_buffer,
    keep_answers_small,
    read_in_bursts,
    server_socket,
    tune_for_the_site,
)
from edge.ingest.coap.oscore_contexts import OscoreRegistry
from edge.ingest.intake import (
    SERVICE_UNAVAILABLE,
    DeviceIngest,
    InFlight,
    IngestUnavailable,
    Pending,
)
from edge.ingest.listener import plain_address
from edge.security.device_auth import Admitted, DeviceAuthenticator

# Piggy-backed answers: a 2.04 waits for the DuckDB commit, often longer than aiocoap's 0.1 s
# before it sends an empty ACK and then a separate confirmable response the device must ACK
# (three datagrams instead of one). 1 s stays well inside a device's first retransmission
# (ACK_TIMEOUT 2 s x 1-1.5).
EMPTY_ACK_DELAY_S = 1.0
# Sensors wake in bursts; the kernel's default UDP buffer (208 KiB) holds ~270 small
# datagrams, and a datagram dropped there costs its device a 2-3 s retransmission wait.
RECEIVE_BUFFER_BYTES = 1 << 20
log = logging.getLogger("iotsphere.coap")

TRANSPORT = "coap"
STOP_GRACE_S = 5.0  # how long stop() lets requests waiting for a commit finish


class CoapIngressError(Exception):
    """The CoAP listener cannot run (e.g. the port is taken); one printable line."""


# -- frozen values at the aiocoap boundary -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoapRequest:
    method: str  # "POST", "GET", ...
    path: tuple[str, ...]
    content_format: int | None
    payload: bytes
    address: str  # the sender's IP (IPv4-mapped IPv6 shown as IPv4)
    sender: tuple[Any, ...]  # address and port: identifies one block-wise transfer
    block1: Block1 | None = None
    size1: int | None = None
    oscore_device: str | None = None  # set when OSCORE-protected: the context's device
    bad_options: tuple[int, ...] = ()  # critical options nobody here understands (-> 4.02)


@dataclass(frozen=True, slots=True)
class CoapReply:
    status: int  # HTTP-style number: 204 -> 2.04 ("Changed"), 231 -> 2.31, 400 -> 4.00, ...
    payload: bytes = b""
    max_age: int | None = None
    block1: Block1 | None = None
    size1: int | None = None

    @classmethod
    def problem(cls, problem: Problem, **kw: Any) -> CoapReply:
        # RFC 7252 5.5.2: an error response's payload is a diagnostic message for humans; the
        # problem document is that, readable and parseable.
        return cls(problem.status, problem.to_json(), **kw)


CHANGED = 204
CONTINUE = 231


def coap_code(status: int) -> Code:
    """204 -> 2.04, 413 -> 4.13, 503 -> 5.03 (the HTTP-number convention of RFC 8075)."""
    if status == CHANGED:
        return Code.CHANGED
    if status == CONTINUE:
        return Code.CONTINUE
    return Code(((status // 100) << 5) | (status % 100))


def to_request(msg: Message, oscore_device: str | None = None) -> CoapRequest:
    """aiocoap Message -> CoapRequest (nothing of aiocoap travels further)."""
    # An OSCORE request's remote is an OSCOREAddress wrapping the UDP peer.
    remote = getattr(msg.remote, "underlying_address", None) or msg.remote
    sockaddr = getattr(remote, "sockaddr", None)
    sender: tuple[Any, ...] = tuple(sockaddr[:2]) if sockaddr else (str(remote), 0)
    block1 = msg.opt.block1
    cf = msg.opt.content_format
    unknown = tuple(
        int(o.number)
        for o in msg.opt.option_list()
        if int(o.number) & 1 and int(o.number) not in _KNOWN_OPTIONS
    )
    return CoapRequest(
        method=str(msg.code).split(" ")[0] if msg.code.is_request() else str(msg.code),
        path=tuple(msg.opt.uri_path),
        content_format=None if cf is None else int(cf),
        payload=bytes(msg.payload),
        address=plain_address(str(sender[0])),
        sender=sender,
        block1=None
        if block1 is None
        else Block1(block1.block_number, bool(block1.more), block1.size_exponent),
        size1=msg.opt.size1,
        oscore_device=oscore_device,
        bad_options=unknown,
    )


def to_message(reply: CoapReply) -> Message:
    msg = Message(code=coap_code(reply.status), payload=reply.payload)
    if reply.max_age is not None:
        msg.opt.max_age = reply.max_age
    if reply.block1 is not None:
        b = reply.block1
        msg.opt.block1 = BlockOption.BlockwiseTuple(b.number, b.more, b.size_exponent)
    if reply.size1 is not None:
        msg.opt.size1 = reply.size1
    return msg


@dataclass(slots=True)
class CoapStats:
    requests: int = 0
    accepted: int = 0  # 2.04 after commit
    rejected: int = 0  # 4.00 / 4.13 / 4.15 (stored as rejections)
    unauthorized: int = 0  # 4.01
    locked_out: int = 0  # 4.29
    unavailable: int = 0  # 5.03: overloaded or stopping, nothing stored
    not_found: int = 0  # 4.04 (wrong path)
    bad_method: int = 0  # 4.05
    bad_option: int = 0  # 4.02: an unrecognised critical option (RFC 7252 5.4.1)
    block_continues: int = 0  # 2.31 answers to Block1 parts
    block_incomplete: int = 0  # 4.08
    internal_errors: int = 0  # 5.00 (a bug: logged with its traceback)
    readings: int = 0
    oscore_requests: int = 0  # protected POST /telemetry that reached the handler
    oscore_required: int = 0  # 4.01: /telemetry without OSCORE


NOT_FOUND = Problem(
    "not-found",
    "No such resource",
    404,
    "telemetry goes to POST /api/v1/{token}/telemetry (or OSCORE-protected POST /telemetry)",
)
METHOD_NOT_ALLOWED = Problem(
    "method-not-allowed", "Method not allowed", 405, "use POST for telemetry"
)
INTERNAL = Problem("internal-error", "Internal error", 500, "the gateway failed; it was logged")
# Options aiocoap knows (and so parsed); an odd number is critical (RFC 7252 5.4.1).
_KNOWN_OPTIONS = frozenset(int(n) for n in OptionNumber.__members__.values())


def bad_option_problem(numbers: tuple[int, ...]) -> Problem:
    shown = ", ".join(str(n) for n in numbers[:8])
    return Problem(
        "bad-option",
        "Unrecognised critical option",
        402,
        f"critical option(s) {shown} not understood by this gateway; nothing was stored",
    )


OSCORE_REQUIRED = Problem(
    "unauthorized",
    "OSCORE required",
    401,
    "POST /telemetry must be protected with the device's OSCORE security context; "
    "token devices use POST /api/v1/{token}/telemetry",
)


def _unavailable(exc: IngestUnavailable) -> CoapReply:
    """5.03 with Max-Age, whatever the cause: CoAP has no 5.07 for a full disk (RFC 7252
    12.1.2), and the problem document says which it is."""
    return CoapReply.problem(exc.problem_as(SERVICE_UNAVAILABLE), max_age=exc.retry_after_s)


def _too_large(limit: int) -> Problem:
    return PayloadError.too_large(f"the payload exceeds {limit} bytes").problem


@dataclass(frozen=True, slots=True)
class Awaiting:
    """A request whose answer waits for its commit."""

    pending: Pending
    block1: Block1 | None  # echoed in the answer to the last block of a Block1 transfer
    size1: int | None = None


class TelemetryHandler:
    """CoapRequest in, CoapReply out; awaits the commit for telemetry."""

    def __init__(
        self, auth: DeviceAuthenticator, ingest: DeviceIngest, assembler: Block1Assembler
    ) -> None:
        self._auth = auth
        self._ingest = ingest
        self._blocks = assembler
        self.stats = CoapStats()

    async def handle(self, req: CoapRequest) -> CoapReply:
        """The answer, after the commit when there is one to wait for."""
        first = self.start(req)
        if isinstance(first, CoapReply):
            return first
        with contextlib.suppress(IngestUnavailable):  # finish() answers it
            await asyncio.shield(first.pending.committed)
        return self.finish(first)

    # one CoAP answer per outcome:
    def start(self, req: CoapRequest) -> CoapReply | Awaiting:  # noqa: PLR0911
        """Everything up to the commit, without awaiting: an answer now, or the commit to wait
        for (then `finish`). The CoAP fast path answers from the commit's done-callback."""
        st = self.stats
        st.requests += 1
        if req.bad_options:
            st.bad_option += 1
            return CoapReply.problem(bad_option_problem(req.bad_options))
        path = req.path
        if path == ("telemetry",):
            return self._start_oscore(req)
        if len(path) != 4 or path[:2] != ("api", "v1") or path[3] != "telemetry" or not path[2]:
            st.not_found += 1
            return CoapReply.problem(NOT_FOUND)
        if req.method != "POST":
            st.bad_method += 1
            return CoapReply.problem(METHOD_NOT_ALLOWED)
        verdict = self._auth.admit(path[2], req.address)
        if not isinstance(verdict, Admitted):
            if verdict.problem.status == 429:
                st.locked_out += 1
                return CoapReply.problem(verdict.problem, max_age=verdict.retry_after_s)
            st.unauthorized += 1
            return CoapReply.problem(verdict.problem)
        return self._accept(req, verdict.device.device_id, path[2])

    def _start_oscore(self, req: CoapRequest) -> CoapReply | Awaiting:
        """`POST /telemetry`: the identity is the OSCORE context's device, nothing else."""
        st = self.stats
        if req.oscore_device is None:
            st.oscore_required += 1
            st.unauthorized += 1
            return CoapReply.problem(OSCORE_REQUIRED)
        if req.method != "POST":
            st.bad_method += 1
            return CoapReply.problem(METHOD_NOT_ALLOWED)
        st.oscore_requests += 1
        return self._accept(req, req.oscore_device, "oscore:" + req.oscore_device)

    def _accept(self, req: CoapRequest, device_id: str, transfer: str) -> CoapReply | Awaiting:
        """Block-wise assembly, then ingest; `transfer` tells one device's transfers apart."""
        st = self.stats
        payload = req.payload
        try:
            if req.block1 is not None:
                key = (req.sender, transfer, req.content_format)
                result = self._blocks.feed(key, req.block1, payload, req.size1)
                if isinstance(result, BlockContinue):
                    st.block_continues += 1
                    return CoapReply(CONTINUE, block1=req.block1)
                if isinstance(result, BlockIncomplete):
                    st.block_incomplete += 1
                    return CoapReply.problem(
                        Problem("request-entity-incomplete", "Block missing", 408, result.reason)
                    )
                if isinstance(result, BlockTooLarge):
                    limit = self._blocks.max_bytes
                    pending = self._ingest.submit_rejection(
                        device_id, payload, _too_large(limit), TRANSPORT
                    )
                    return Awaiting(pending, None, limit)
                payload = result.payload
            pending = self._ingest.submit(device_id, payload, req.content_format, TRANSPORT)
        except IngestUnavailable as exc:
            st.unavailable += 1
            return _unavailable(exc)
        return Awaiting(pending, req.block1)

    def finish(self, awaiting: Awaiting) -> CoapReply:
        """The answer once `awaiting.pending.committed` is done."""
        st = self.stats
        try:
            result = awaiting.pending.outcome()
        except IngestUnavailable as exc:
            st.unavailable += 1
            return _unavailable(exc)
        if result.problem is None:
            st.accepted += 1
            st.readings += result.readings
            return CoapReply(CHANGED, block1=awaiting.block1)
        st.rejected += 1
        size1 = awaiting.size1
        if result.problem.status == 413 and size1 is None:
            size1 = self._blocks.max_bytes
        return CoapReply.problem(result.problem, block1=awaiting.block1, size1=size1)


class _Site(aiocoap.interfaces.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """The whole CoAP server: every request goes to the handler (no .well-known/core, which
    would tell scanners what to try)."""

    def __init__(self, handler: TelemetryHandler, ingress: CoapIngress) -> None:
        super().__init__()
        self._handler = handler
        self._ingress = ingress

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False  # TelemetryHandler assembles, with a size bound

    async def render(self, request: Message) -> Message:
        raise NotImplementedError("render_to_pipe handles every request")

    async def render_to_pipe(self, pipe: Any) -> None:
        pipe.add_response(await self._ingress.respond(pipe.request), is_last=True)


class CoapIngress:
    """The CoAP listener: start() binds, stop() drains requests waiting for commits."""

    def __init__(
        self,
        bind: str,
        port: int,
        auth: DeviceAuthenticator,
        ingest: DeviceIngest,
        clock: Clock,
        oscore: OscoreRegistry | None = None,
    ) -> None:
        self._oscore = oscore
        self._bind = bind
        self._requested_port = port
        self.handler = TelemetryHandler(auth, ingest, Block1Assembler(clock))
        self.auth = auth
        self._context: aiocoap.Context | None = None
        self._port: int | None = None
        self.receive_buffer = 0  # bytes the kernel granted the socket
        self.malformed = MalformedDatagrams()
        self._in_flight = InFlight(STOP_GRACE_S)

    @property
    def port(self) -> int:
        if self._port is None:
            raise CoapIngressError("the CoAP listener is not started")
        return self._port

    @property
    def stats(self) -> CoapStats:
        return self.handler.stats

    def summary(self) -> dict[str, Any]:
        return {
            "port": self._port,
            "receive_buffer_bytes": self.receive_buffer,
            "malformed_datagrams": self.malformed.count,
            **asdict(self.handler.stats),
            "auth": asdict(self.auth.stats),
            "in_flight": self._in_flight.count,
            "oscore_contexts": len(self._oscore) if self._oscore is not None else None,
        }

    async def start(self) -> None:
        site: Any = _Site(self.handler, self)
        if self._oscore is not None:
            from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

            from edge.ingest.coap.oscore_guard import OscoreGuard

            # The guard goes outside aiocoap's wrapper: it is the only place that sees the
            # protected requests aiocoap refuses itself (audit and lockout:
            # edge.ingest.coap.oscore_guard).
            credentials = self._oscore.credentials
            site = OscoreGuard(OscoreSiteWrapper(site, credentials), credentials, self.auth)
        host = self._bind
        try:
            tune_for_the_site(EMPTY_ACK_DELAY_S)
            context = await GatewayCoapContext.create_server_context(
                site, bind=(host, self._requested_port), transports=["udp6"]
            )
        except (OSError, aiocoap.error.Error) as exc:
            raise CoapIngressError(
                f"cannot listen for CoAP on {host}:{self._requested_port} (UDP): {exc}"
            ) from exc
        context.plain_handler = self._answer_plain
        if (
            not keep_answers_small(context)
            or not read_in_bursts(context)
            or not drop_undecodable(context, self.malformed)
        ):
            log.warning("CoAP: aiocoap's internals changed; running it unmodified")
        self._context = context
        sock = server_socket(context)
        if sock is None:
            raise CoapIngressError("the CoAP listener has no UDP socket (aiocoap changed?)")
        self._port = int(sock.getsockname()[1])
        self.receive_buffer = grow_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
        log.info(
            "CoAP ingress listening on %s:%d (UDP, receive buffer %d KiB)",
            host,
            self._port,
            self.receive_buffer // 1024,
        )

    def _answer_plain(self, pipe: Any) -> None:
        """An unprotected request, straight from the context (edge.ingest.coap.context), answered
        without a task: now, or from the commit's done-callback."""
        if self._in_flight.closing:
            pipe.add_response(self._stopping(), is_last=True)
            return
        try:
            first = self.handler.start(to_request(pipe.request))
        except Exception:
            pipe.add_response(self._internal_error(pipe.request), is_last=True)
            return
        if isinstance(first, CoapReply):
            pipe.add_response(to_message(first), is_last=True)
            return
        self._in_flight.begin()
        first.pending.committed.add_done_callback(
            functools.partial(self._answer_committed, pipe, first)
        )

    def _answer_committed(self, pipe: Any, awaiting: Awaiting, _: object) -> None:
        self._in_flight.end()
        try:
            answer = to_message(self.handler.finish(awaiting))
        except Exception:
            answer = self._internal_error(pipe.request)
        pipe.add_response(answer, is_last=True)

    def _stopping(self) -> Message:
        self.handler.stats.requests += 1
        self.handler.stats.unavailable += 1
        err = IngestUnavailable("the gateway is stopping")
        return to_message(CoapReply.problem(err.problem, max_age=err.retry_after_s))

    def _internal_error(self, msg: Message) -> Message:
        # A bug, not a device error: the device gets a problem document, not a traceback.
        self.handler.stats.internal_errors += 1
        log.exception("CoAP request from %s failed", msg.remote)
        return to_message(CoapReply.problem(INTERNAL))

    async def respond(self, msg: Message) -> Message:
        """The answer to a request through the site (OSCORE-protected ones)."""
        if self._in_flight.closing:
            return self._stopping()
        with self._in_flight.request():
            try:
                device = self._oscore.device_of(msg.remote) if self._oscore is not None else None
                return to_message(await self.handler.handle(to_request(msg, device)))
            except Exception:
                return self._internal_error(msg)

    async def stop(self) -> None:
        """Refuse new requests, let those awaiting a commit get their answer, then close."""
        started = time.monotonic()
        drained = await self._in_flight.drain()
        if self._context is None:
            return
        if not drained:
            log.warning(
                "CoAP: %d requests still waiting at stop; unanswered", self._in_flight.count
            )
        # Answers are sent from callbacks scheduled by the commits above: let them go out.
        await asyncio.sleep(0)
        await self._context.shutdown()
        self._context = None
        log.info("CoAP ingress stopped (%.1fs)", time.monotonic() - started)
