"""Audit and lockout for OSCORE-protected CoAP requests (RFC 8613), around aiocoap's wrapper.

Why a site outside OscoreSiteWrapper: aiocoap refuses a bad protected request itself (unknown
security context, failed decryption, malformed COSE, replay) before any of our code runs, so
those attempts would be neither audited nor counted, while a wrong token on
`/api/v1/{token}/telemetry` is both. OscoreGuard is the CoAP root site, in front of the wrapper:

- a request without the OSCORE option goes to the wrapper untouched (the token path has its
  own lockout, in edge.security.device_auth);
- a protected request is refused while its source address is locked out, with the token
  path's unprotected 4.29 + Max-Age + problem document, before any decryption is spent on it;
- otherwise the wrapper handles it unchanged, through a pipe proxy that shows how it ended: a
  protected answer means the request decrypted under its context; a raise, an unprotected
  answer or no answer is a failed attempt, audited under the kid and counted. Both go through
  the CoAP DeviceAuthenticator, so the same LockoutTracker (shared with the token, HTTP and
  MQTT paths), audit rate limit and security.lockout alert apply. A UDP source address is
  not proven, so these failures never lock the address itself (edge.security.lockout); an address
  locked by proven (TCP) failures is still refused here.
  The client gets exactly what it got without the guard.

The kid names the attempt ("oscore:<kid hex>") in audit rows, but is never locked: it is sent
in clear in every request, so anyone who saw one of a device's datagrams could lock the device
out by sending garbage under its kid, and locking it would stop no guesser (the keys are
128-bit AES keys, not guessable secrets like a token typed in). A flood of forged attempts is
bounded by the audit rate limit; each costs one AEAD check.

Reasons (audit rows and the CoAP authenticator's `failures` in `gateway status`):

    unknown_context  no context has the kid            aiocoap: 4.01 "Security context not found"
    decrypt_failed   the kid is known, the AEAD check failed         4.00 "Decryption failed"
    replay           the sequence number was seen already   unprotected 4.01 "Replay detected"
    decode_error     the OSCORE option or the COSE object is malformed (4.02, or 5.00 when
                     aiocoap's own parse of the option fails), or the outer code is not
                     POST/FETCH (4.05)

aiocoap answers a failed NON request with silence, so its reason comes from what is looked up
before handing it over (the context by kid, that context's replay window); a NON that is both
a replay and undecryptable counts as a replay, a malformed COSE object inside it as
decrypt_failed.

Not a failure: the protected 4.01 Echo challenge (RFC 8613 B.1.2) that aiocoap sends when a
replay window was lost in a crash. It is only sent for a request that decrypted under its
context (the device's first request after the restart, or a replay of one), so counting it
would lock out a NAT full of honest devices after every crash of the gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiocoap
import aiocoap.error
import aiocoap.interfaces
import aiocoap.oscore
from aiocoap import Message

from edge.ingest.coap.ingress import CoapReply, to_message, to_request
from edge.security.device_auth import DeviceAuthenticator

log = logging.getLogger("iotsphere.coap.oscore")

KID_KEY_PREFIX = "oscore:"
# Our kids are 6 bytes (AES-CCM-16-64-128 allows 7). A longer claimed kid belongs to no context;
# a bounded prefix names it well enough and keeps lockout keys and audit rows small.
KID_KEY_MAX_BYTES = 16

FailureReason = Literal["unknown_context", "decrypt_failed", "replay", "decode_error"]

# What aiocoap's wrapper raises for a request it refuses (aiocoap 0.4: oscore_sitewrapper),
# past the checks _Attempt already made. Anything else (e.g. protecting the answer failed) is
# the gateway's problem, not the client's, and is passed on without counting.
_RAISED: tuple[tuple[type[BaseException], FailureReason], ...] = (
    (aiocoap.oscore.DecodeError, "decode_error"),
    (aiocoap.error.MethodNotAllowed, "decode_error"),
    (aiocoap.error.BadOption, "decode_error"),
    (aiocoap.error.Unauthorized, "unknown_context"),
    (aiocoap.error.BadRequest, "decrypt_failed"),
)
REPLAY_PAYLOAD = b"Replay detected"  # aiocoap's unprotected answer to a CON replay
EDHOC_PATH = (".well-known", "edhoc")  # handled by the wrapper before any OSCORE check
PROTECTED_METHODS = (aiocoap.POST, aiocoap.FETCH)


def kid_key(kid: bytes) -> str:
    """The name of a claimed kid in lockout keys and the audit log."""
    return KID_KEY_PREFIX + kid[:KID_KEY_MAX_BYTES].hex()


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What is known of a protected request before aiocoap handles it."""

    key: str | None  # kid_key, or None when the request names no kid
    address: str
    early_reason: FailureReason | None  # certain to fail, and why (aiocoap checks these first)
    seen_before: bool  # its sequence number is outside the context's replay window


class _WatchedPipe:
    """Stands in for the request's pipe: every answer is forwarded as it comes, and the last
    one is kept so the guard can tell how the request ended."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.request = pipe.request
        self.last: Message | None = None

    def add_response(self, response: Message, is_last: bool = False) -> None:
        self.last = response
        self._pipe.add_response(response, is_last=is_last)

    def __getattr__(self, name: str) -> Any:
        # Anything else a later aiocoap asks of a pipe goes to the real one.
        return getattr(self._pipe, name)


class OscoreGuard(aiocoap.interfaces.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """The CoAP root site when OSCORE is on: `inner` is aiocoap's OscoreSiteWrapper, and
    `credentials` the same server credentials it looks contexts up in."""

    def __init__(self, inner: Any, credentials: Any, auth: DeviceAuthenticator) -> None:
        super().__init__()
        self._inner = inner
        self._credentials = credentials
        self._auth = auth

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        raise NotImplementedError("render_to_pipe handles every request")

    async def render(self, request: Message) -> Message:
        raise NotImplementedError("render_to_pipe handles every request")

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if request.opt.uri_path == EDHOC_PATH:  # the wrapper's own resource, never OSCORE
            await self._inner.render_to_pipe(pipe)
            return
        try:
            unprotected = aiocoap.oscore.verify_start(request)
        except aiocoap.oscore.NotAProtectedMessage:
            await self._inner.render_to_pipe(pipe)
            return
        except (aiocoap.oscore.DecodeError, IndexError):
            # An OSCORE option that does not parse (aiocoap's parser raises IndexError for some
            # truncated ones): a failed attempt too, which the wrapper refuses the same way.
            unprotected = None
        attempt = self._attempt(request, unprotected)
        refused = self._auth.check(None, attempt.address)  # kids are never locked (above)
        if refused is not None:
            reply = CoapReply.problem(refused.problem, max_age=refused.retry_after_s)
            pipe.add_response(to_message(reply), is_last=True)
            return
        watched = _WatchedPipe(pipe)
        try:
            await self._inner.render_to_pipe(watched)
        except aiocoap.oscore.ReplayErrorWithEcho:
            log.debug("OSCORE: Echo challenge to %s from %s", attempt.key, attempt.address)
            raise
        except Exception as exc:
            reason = attempt.early_reason or _reason_of(exc)
            if reason is not None:
                self._auth.record_failure(attempt.key, attempt.address, reason, count_key=False)
            raise  # aiocoap renders it (or logs it) exactly as without the guard
        last = watched.last
        if last is not None and last.opt.oscore is not None:
            self._auth.record_success(None, attempt.address)
            return
        reason = _unanswered(attempt, last)
        self._auth.record_failure(attempt.key, attempt.address, reason, count_key=False)

    def _attempt(self, request: Message, unprotected: dict[Any, Any] | None) -> _Attempt:
        address = to_request(request).address  # the same address the token path counts
        if unprotected is None:
            return _Attempt(None, address, "decode_error", False)
        kid = unprotected.get(aiocoap.oscore.COSE_KID)
        key = kid_key(kid) if isinstance(kid, bytes) else None
        # In the order aiocoap's wrapper checks (oscore_sitewrapper.render_to_pipe).
        if request.code not in PROTECTED_METHODS:
            return _Attempt(key, address, "decode_error", False)
        try:
            context = self._credentials.find_oscore(unprotected)
        except KeyError:
            return _Attempt(key, address, "unknown_context", False)
        return _Attempt(key, address, None, _seen_before(context, unprotected))


def _reason_of(exc: BaseException) -> FailureReason | None:
    for cls, reason in _RAISED:
        if isinstance(exc, cls):
            return reason
    return None


def _unanswered(attempt: _Attempt, last: Message | None) -> FailureReason:
    """The reason of a failure aiocoap did not raise: an unprotected answer, or none (NON)."""
    if attempt.early_reason is not None:
        return attempt.early_reason
    if last is not None and last.code == aiocoap.UNAUTHORIZED and last.payload == REPLAY_PAYLOAD:
        return "replay"
    return "replay" if attempt.seen_before else "decrypt_failed"


def _seen_before(context: Any, unprotected: dict[Any, Any]) -> bool:
    """Whether the context would refuse the request's sequence number as a replay (read only:
    the window changes only when a request decrypts)."""
    piv = unprotected.get(aiocoap.oscore.COSE_PIV)
    window = getattr(context, "recipient_replay_window", None)
    if not isinstance(piv, bytes) or window is None:
        return False
    if not window.is_initialized():
        # Lost in a crash: with Echo recovery aiocoap challenges instead of refusing.
        return getattr(context, "echo_recovery", None) is None
    return not window.is_valid(int.from_bytes(piv, "big"))
