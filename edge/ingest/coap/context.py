"""The gateway's aiocoap server: aiocoap 0.4, with four per-request costs taken out.

Profiled at 1,000-2,500 confirmable requests/s (py-spy and cProfile, bench/ingest_coap.py):
- `Context.render_to_pipe` named every rendering task `"Rendering for %r" % request`; that
  repr formats the sender's address through `ipaddress` (9% of all samples) for a name only a
  debugger reads. Every request also went through `error_to_message` (a second Pipe with its
  callbacks) and, with OSCORE devices configured, the OSCORE site wrapper, only to turn
  exceptions into error responses. Here an unprotected request (no OSCORE option: it cannot
  be an OSCORE request) goes straight to `plain_handler`, which never raises
  (edge.ingest.coap.ingress answers every failure itself) and adds the answer to the pipe now or
  from a callback once the reading is committed: no task per request either. Protected
  requests take aiocoap's path, minus the task name.
- The UDP transport read one datagram per wakeup: `read_in_bursts`.
- The answer cache kept full Messages for 247 s: `keep_answers_small`, `tune_for_the_site`.
Everything else (message layer, deduplication, piggy-backed and separate answers) stays
aiocoap's. These wrap aiocoap internals, so pyproject pins aiocoap to 0.4.x; if the wrapped
attributes are missing, the ingress logs a warning and leaves those parts stock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiocoap
from aiocoap.numbers.constants import TransportTuning
from aiocoap.numbers.types import ACK
from aiocoap.pipe import error_to_message, run_driving_pipe

log = logging.getLogger("iotsphere.coap")

PlainHandler = Callable[[Any], None]  # (aiocoap Pipe): adds the one response, now or later


class GatewayCoapContext(aiocoap.Context):  # type: ignore[misc]  # aiocoap is untyped
    plain_handler: PlainHandler | None = None

    def render_to_pipe(self, pipe: Any) -> None:
        handler = self.plain_handler
        if handler is not None and pipe.request.opt.oscore is None:
            # Unlike aiocoap's run_driving_pipe there is nothing to cancel when the peer loses
            # interest (it reused the token): the commit goes on, aiocoap drops the late answer.
            handler(pipe)
            return
        run_driving_pipe(error_to_message(pipe, self.log), self._render_to_pipe(pipe))


def _udp_transports(context: aiocoap.Context) -> Iterator[Any]:
    """aiocoap's datagram transports under a server context (aiocoap 0.4's layering: token
    manager -> message manager -> message interface -> transport)."""
    for interface in getattr(context, "request_interfaces", []):
        token_interface = getattr(interface, "token_interface", None)
        messages = getattr(token_interface, "message_interface", None)
        transport = getattr(messages, "transport", None)
        if transport is not None:
            yield transport


def server_socket(context: aiocoap.Context) -> socket.socket | None:
    """The UDP socket an aiocoap server context bound (for its port and buffer size)."""
    for transport in _udp_transports(context):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            return sock  # type: ignore[no-any-return]
    return None


# aiocoap's UDP transport reads one datagram per readiness event, so under load every request
# costs a whole event-loop iteration (an epoll call, and a recvmsg on the socket's error queue
# that finds nothing). Reading on while datagrams are queued, up to this many per wakeup, keeps
# timers and commit callbacks waiting at most a few milliseconds.
READS_PER_WAKEUP = 16


def read_in_bursts(context: aiocoap.Context) -> int:
    """Make each of the context's UDP transports read up to READS_PER_WAKEUP datagrams per
    wakeup; returns how many transports were changed (0: aiocoap changed shape)."""
    changed = 0
    for transport in _udp_transports(context):
        sock = transport.get_extra_info("socket")
        stock = getattr(transport, "_read_ready", None)
        if sock is None or stock is None or not hasattr(transport, "_protocol"):
            continue
        transport._read_ready = functools.partial(_read_burst, stock, sock, transport)
        changed += 1
    return changed


def _read_burst(stock: Callable[[], None], sock: socket.socket, transport: Any) -> None:
    stock()  # the error queue and the first datagram, exactly as aiocoap reads them
    size = transport.max_size
    for _ in range(READS_PER_WAKEUP - 1):
        protocol = transport._protocol
        if protocol is None:  # closed while handling the last datagram
            return
        try:
            data, ancdata, flags, addr = sock.recvmsg(size, 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            protocol.error_received(exc)
            return
        protocol.datagram_msg_received(data, ancdata, flags, addr)


# -- datagrams aiocoap cannot decode ------------------------------------------------------------
#
# aiocoap drops an unparsable datagram with a warning each, and lets a UnicodeDecodeError from a
# string option (e.g. a Uri-Path that is not UTF-8: 40 02 00 01 b1 ff) escape into the event loop,
# which logged a ~2 KB traceback per datagram. Anyone can send such datagrams, so they are counted
# and logged at most once per MALFORMED_LOG_EVERY_S; the datagram is dropped (no answer) as
# aiocoap drops the unparsable ones.

MALFORMED_LOG_EVERY_S = 10.0
_UNPARSABLE_PREFIX = "Ignoring unparsable message"


class MalformedDatagrams(logging.Filter):
    """Counts undecodable datagrams; filters aiocoap's line per datagram into one summary line."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._logged_at = -MALFORMED_LOG_EVERY_S
        self._unlogged = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_UNPARSABLE_PREFIX):
            self.seen(record.args[0] if isinstance(record.args, tuple) and record.args else None)
            return False
        return True

    def seen(self, address: object) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= MALFORMED_LOG_EVERY_S:
            log.warning(
                "CoAP: %d undecodable datagram(s) dropped (%d in all; the last from %s)",
                self._unlogged,
                self.count,
                address,
            )
            self._logged_at = now
            self._unlogged = 0


def drop_undecodable(context: aiocoap.Context, counter: MalformedDatagrams) -> int:
    """Route the context's undecodable datagrams to `counter`; returns the transports changed."""
    changed = 0
    for transport in _udp_transports(context):
        protocol = getattr(transport, "_protocol", None)
        original = getattr(protocol, "datagram_msg_received", None)
        if protocol is None or original is None:
            continue

        def guarded(data: bytes, ancdata: Any, flags: int, address: Any,
                    original: Callable[..., None] = original) -> None:  # fmt: skip
            try:
                original(data, ancdata, flags, address)
            except UnicodeDecodeError:  # from Message.decode: a string option not UTF-8
                counter.seen(address)

        protocol.datagram_msg_received = guarded
        if isinstance(getattr(protocol, "log", None), logging.Logger):
            protocol.log.addFilter(counter)
        changed += 1
    return changed


def grow_receive_buffer(sock: socket.socket, wanted: int) -> int:
    """Ask for a `wanted`-byte receive buffer; returns what the kernel granted (it caps the
    request at net.core.rmem_max and reports double the usable size, see socket(7))."""
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < wanted:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if granted < wanted:
            log.info(
                "CoAP receive buffer %d KiB (asked %d KiB; raise net.core.rmem_max for more)",
                granted // 1024,
                wanted // 1024,
            )
    return granted


# -- the deduplication cache ---------------------------------------------------------------------
#
# aiocoap keeps every answer for EXCHANGE_LIFETIME after its request arrived, so that a
# retransmitted confirmable request gets the same answer (RFC 7252 4.5; this is what stores a
# retransmitted reading once). Stock, that is 247 s of full response Messages, each holding its
# request and options: measured 3.7 KB per request, 265 MB after 64,000 requests in a trivial
# server, and growing with the request rate (a Pi at 1,000 requests/s would hold ~900 MB).


@dataclass(frozen=True, slots=True)
class SentAnswer:
    """All a retransmitted request needs of the answer it got: the same datagram, to the same
    address (what aiocoap's UDP transport reads of a message it sends)."""

    mtype: Any
    mid: int
    remote: Any
    datagram: bytes

    def encode(self) -> bytes:
        return self.datagram


# 247 s assumes a datagram may take 100 s across the internet (MAX_LATENCY). Devices talk to a
# gateway on their own site's network: 5 s is generous there, and a sender stops retransmitting
# after MAX_TRANSMIT_SPAN (45 s), so 45 + 2 x 5 + 2 = 57 s still covers every retransmission.
LAN_MAX_LATENCY_S = 5.0


def tune_for_the_site(empty_ack_delay_s: float) -> None:
    """aiocoap reads these from TransportTuning for the messages it decodes; the class defaults
    are the only knob, and this process runs no other CoAP context."""
    TransportTuning.EMPTY_ACK_DELAY = empty_ack_delay_s
    TransportTuning.MAX_LATENCY = LAN_MAX_LATENCY_S


def keep_answers_small(context: aiocoap.Context) -> int:
    """Cache each piggy-backed answer as its datagram (SentAnswer) instead of the Message.

    Wraps the message managers' `_send_initially` (aiocoap 0.4): an ACK whose (address, mid)
    is a recent request is stored slim and sent; anything else (separate confirmable answers,
    which aiocoap retransmits from the Message) goes the stock way. Returns the number of
    message managers wrapped (0 means aiocoap changed shape; the caller says so)."""
    wrapped = 0
    for interface in getattr(context, "request_interfaces", []):
        manager = getattr(interface, "token_interface", None)
        recent = getattr(manager, "_recent_messages", None)
        original = getattr(manager, "_send_initially", None)
        transport = getattr(manager, "message_interface", None)
        if not isinstance(recent, dict) or original is None or transport is None:
            continue
        manager._send_initially = functools.partial(  # type: ignore[union-attr]
            _send_initially, recent, original, transport.send
        )
        wrapped += 1
    return wrapped


def _send_initially(
    recent: dict[tuple[Any, int], Any],
    original: Callable[..., None],
    send: Callable[[Any], None],
    message: Any,
    messageerror_monitor: Any = None,
) -> None:
    if message.mtype is ACK:
        key = (message.remote, message.mid)
        if key in recent:
            if not isinstance(message, SentAnswer):
                message = SentAnswer(message.mtype, message.mid, message.remote, message.encode())
            recent[key] = message
            send(message)
            return
    original(message, messageerror_monitor)
