"""The gateway's aiocoap server context: aiocoap's, minus two per-request costs at full load.

Profiled at 1,000 confirmable requests/s (py-spy, bench/ingest_coap.py), aiocoap 0.4's
`Context.render_to_pipe` was a fifth of the gateway's event-loop time:
- it names every rendering task `"Rendering for %r" % request`, and that repr formats the
  sender's address through `ipaddress` (9% of all samples) for a name only a debugger reads;
- every request goes through `error_to_message` (a second Pipe with its callbacks, 6%) and,
  with OSCORE devices configured, through the OSCORE site wrapper, only to turn exceptions
  into error responses.

Here an unprotected request (no OSCORE option: it cannot be an OSCORE request) goes straight
to `plain_handler`, which never raises (edge.coap_ingress answers every failure itself) and
adds the answer to the pipe now or from a callback once the reading is committed: no task per
request either.
Protected requests take aiocoap's path unchanged, except for the task name. Everything below
(message layer, deduplication, piggy-backed and separate answers) stays aiocoap's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import aiocoap
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


def server_socket(context: aiocoap.Context) -> socket.socket | None:
    """The UDP socket an aiocoap server context bound (for its port and buffer size)."""
    for interface in getattr(context, "request_interfaces", []):
        token_interface = getattr(interface, "token_interface", None)
        messages = getattr(token_interface, "message_interface", None)
        transport = getattr(messages, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            return sock  # type: ignore[no-any-return]
    return None


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
