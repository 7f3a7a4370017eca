"""Token -> device authentication for the transports with the token in the URL (CoAP, HTTP).

Two parts, both without I/O:
- DeviceDirectory: every device's token lookup digest (sha256, edge.security.credentials) mapped
  to its id, held in memory. The gateway loads it from DuckDB at start and keeps it current on add
  and revoke, so a request never waits behind ingest for a database lookup, a flood of wrong tokens
  costs no store work, and a revoked device is refused from the moment revoke returns (local
  CLI or the cloud's revocation list: both end in Gateway.revoke_device).
- DeviceAuthenticator: lockout before authentication, failure counting after it, and the audit
  events, with the same LockoutTracker (and so the same per-address counts) as the MQTT front.
  The identity key is a digest of the presented token, never the token: keys end up in audit
  rows and alerts. admit() is the token path; its steps (check, record_failure,
  record_success) are public so that credentials checked elsewhere (OSCORE, which aiocoap
  verifies: edge.ingest.coap.oscore_guard) share the same counts, audit rate and lockout alert.

Guessing is bounded by the per-address lockout (a wrong token from a fresh address costs the
guesser one of max_failures_per_address tries); the per-token key stops a device that keeps
sending a revoked or mistyped token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from common.clock import Clock
from common.problem import Problem
from edge.security.lockout import LockoutTracker
from edge.storage.records import AuthFailure

log = logging.getLogger("iotsphere.device_auth")

# How a token is named in lockout keys and audit rows: enough of its digest to tell two apart.
TOKEN_KEY_PREFIX = "token:"
TOKEN_KEY_HEX = 16
# Audit rows are durable writes; UDP source addresses can be forged, so a flood from
# ever-new addresses must not turn into a flood of store writes. Beyond this rate audit
# events are counted (audit_suppressed) but not written.
AUDIT_EVENTS_PER_S = 50.0
AUDIT_BURST = 200.0
# A locked-out sender keeps sending: audit its refusals once per key per this many seconds.
LOCKED_AUDIT_EVERY_S = 10.0
MAX_LOCKED_AUDIT_KEYS = 10_000


def token_digest(token: str) -> str:
    """The lookup digest stored in devices.token_lookup (edge.security.credentials.token_lookup)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_key(digest: str) -> str:
    """The name of a presented token in lockout keys and the audit log."""
    return TOKEN_KEY_PREFIX + digest[:TOKEN_KEY_HEX]


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    device_type: str | None


class DeviceDirectory:
    """Active devices by token digest. Revoked devices are removed, so they cannot authenticate."""

    def __init__(self) -> None:
        self._by_digest: dict[str, DeviceIdentity] = {}
        self._digest_of: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows as GatewayStore.devices(include_secrets=True) returns them."""
        for row in rows:
            if row.get("status") == "active" and row.get("token_lookup"):
                self.add(str(row["device_id"]), row.get("type"), str(row["token_lookup"]))

    def add(self, device_id: str, device_type: str | None, digest: str) -> None:
        self.revoke(device_id)  # a re-added device gets a new token; the old one stops working
        self._by_digest[digest] = DeviceIdentity(device_id, device_type)
        self._digest_of[device_id] = digest

    def add_with_token(self, device_id: str, device_type: str | None, token: str) -> None:
        self.add(device_id, device_type, token_digest(token))

    def revoke(self, device_id: str) -> None:
        digest = self._digest_of.pop(device_id, None)
        if digest is not None:
            self._by_digest.pop(digest, None)

    def lookup(self, digest: str) -> DeviceIdentity | None:
        found = self._by_digest.get(digest)
        if found is None:
            return None
        # The dict lookup already matched; the constant-time compare keeps a future change
        # (e.g. prefix indexes) from turning into a timing oracle.
        expected = self._digest_of.get(found.device_id, "")
        return found if hmac.compare_digest(expected, digest) else None


UNAUTHORIZED = Problem(
    slug="unauthorized",
    title="Unknown, revoked or missing device token",
    status=401,
    detail="the token in the path does not belong to an active device of this gateway",
)


def locked_out_problem(retry_after_s: int) -> Problem:
    return Problem(
        slug="locked-out",
        title="Too many failed authentication attempts",
        status=429,
        detail=f"this token or source address is locked out; retry after {retry_after_s} s",
        extra={"retry_after": retry_after_s},
    )


@dataclass(frozen=True, slots=True)
class Admitted:
    device: DeviceIdentity


@dataclass(frozen=True, slots=True)
class Refused:
    problem: Problem  # status 401 or 429
    retry_after_s: int = 0  # for 429: whole seconds until the lock ends (Max-Age, Retry-After)


AuthResult = Admitted | Refused

# (the audit row, the lockout key when this event locked one) -> recorded by the gateway
AuthSink = Callable[[AuthFailure, str | None], None]


@dataclass(slots=True)
class AuthStats:
    admitted: int = 0  # credentials accepted (a token, or an OSCORE request that decrypted)
    bad_token: int = 0
    # failed attempts by reason: "bad_token", and the OSCORE ones of edge.ingest.coap.oscore_guard
    failures: dict[str, int] = field(default_factory=dict)
    locked_out: int = 0
    lockouts: int = 0  # keys newly locked
    audit_suppressed: int = 0  # events over the audit rate, counted only
    audit_sink_errors: int = 0


class DeviceAuthenticator:
    """Admit or refuse one request: lockout check, token lookup, failure counting, audit."""

    def __init__(
        self,
        directory: DeviceDirectory,
        tracker: LockoutTracker,
        clock: Clock,
        sink: AuthSink,
        transport: Literal["coap", "http", "mqtt"],
    ) -> None:
        self._directory = directory
        self._tracker = tracker
        self._clock = clock
        self._sink = sink
        self._transport = transport
        self.stats = AuthStats()
        self._audit_tokens = AUDIT_BURST
        self._audit_refill_at = clock.monotonic()
        self._locked_audited: dict[str, float] = {}

    def admit(self, token: str, address: str | None) -> AuthResult:
        digest = token_digest(token)
        key = token_key(digest)
        refused = self.check(key, address)
        if refused is not None:
            return refused
        device = self._directory.lookup(digest)
        if device is None:
            self.stats.bad_token += 1
            self.record_failure(key, address, "bad_token")
            return Refused(UNAUTHORIZED)
        self.record_success(key, address)
        return Admitted(device)

    # -- the steps of admit(), for credentials checked elsewhere ---------------------------

    def check(self, key: str | None, address: str | None) -> Refused | None:
        """Refused (429, with the seconds to wait) while the key or the address is locked out.

        `key` names the claimed identity in lockout keys and audit rows ("token:<digest>",
        "oscore:<kid>"): never a secret. None counts only the address."""
        decision = self._tracker.check(key, address)
        if not decision.locked:
            return None
        self.stats.locked_out += 1
        retry = max(1, math.ceil(decision.retry_after_s))
        self._audit_locked(decision.key or key or "", address, key)
        return Refused(locked_out_problem(retry), retry)

    def record_failure(
        self, key: str | None, address: str | None, reason: str, *, count_key: bool = True
    ) -> None:
        """One failed attempt: audited as "<reason> (<key>)", counted against the address and,
        with count_key, the key; a key this failure locks is audited as a lockout (which
        raises security.lockout). count_key=False for identities named in clear that an
        attacker could lock on a real device's behalf (OSCORE kids:
        edge.ingest.coap.oscore_guard)."""
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        detail = reason if key is None else f"{reason} ({key})"
        self._audit("auth_failure", address, key, detail, None)
        # A UDP source address proves nothing (it can be forged): CoAP failures never count
        # against the address, or spoofed datagrams could lock a neighbour out.
        proven = self._transport != "coap"
        counted = key if count_key else None
        for locked in self._tracker.record_failure(counted, address, proven=proven):
            self.stats.lockouts += 1
            self._audit("lockout", address, key, f"too_many_failures ({locked})", locked)

    def record_success(self, key: str | None, address: str | None) -> None:
        """Accepted credentials: the key's failures start again (a lock is never lifted)."""
        self._tracker.record_success(key, address)
        self.stats.admitted += 1

    # -- audit ---------------------------------------------------------------------------------

    def _audit_locked(self, lock_key: str, address: str | None, key: str | None) -> None:
        now = self._clock.monotonic()
        last = self._locked_audited.get(lock_key)
        if last is not None and now - last < LOCKED_AUDIT_EVERY_S:
            return
        if len(self._locked_audited) >= MAX_LOCKED_AUDIT_KEYS:
            self._locked_audited.clear()  # worst case: a few extra audit rows
        self._locked_audited[lock_key] = now
        self._audit("auth_failure", address, key, f"locked_out ({lock_key})", None)

    def _audit(
        self, kind: str, address: str | None, key: str | None, reason: str, locked: str | None
    ) -> None:
        # Lockouts are always recorded (they raise the security alert); plain failures only
        # within the audit rate.
        if locked is None and not self._take_audit_token():
            self.stats.audit_suppressed += 1
            return
        failure = AuthFailure(
            at=self._clock.now_ms(),
            kind=kind,
            transport=self._transport,
            address=address,
            username=key,
            client_id=None,
            reason=reason,
        )
        try:
            self._sink(failure, locked)
        except Exception:
            # A broken audit sink must not take the listener down; it is loud and counted.
            self.stats.audit_sink_errors += 1
            log.exception("audit sink failed for %r", failure)

    def _take_audit_token(self) -> bool:
        now = self._clock.monotonic()
        elapsed = max(0.0, now - self._audit_refill_at)
        self._audit_refill_at = now
        self._audit_tokens = min(AUDIT_BURST, self._audit_tokens + elapsed * AUDIT_EVENTS_PER_S)
        if self._audit_tokens < 1.0:
            return False
        self._audit_tokens -= 1.0
        return True
