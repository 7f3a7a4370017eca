"""Gateway identity and per-request signing: Ed25519 keys, short-lived EdDSA JWTs.

The gateway owns an Ed25519 key pair (generated at enrollment; only the public key leaves the
machine). Every request it makes to the cloud carries `Authorization: Bearer <jwt>`, a token
signed with that key, valid for 60 s, and bound to that one request:

  iss  gateway id            aud  "iotsphere-cloud"        jti  random nonce
  iat  issued (s)            exp  iat + 60 s
  htm  HTTP method           htu  request target (path and query, as sent)
  bsh  base64url(SHA-256(body)), no padding

so a captured token cannot be replayed (jti seen), reused for another request (htm/htu/bsh),
or kept (exp). Verification pins the algorithm to EdDSA: a token saying "none" or "HS256"
(e.g. HMAC-signed with the public key as the secret) is refused before any key is used.

Clocks: the verifier uses an injected clock and a leeway (default 10 min) for iat and exp, so
a field gateway whose clock drifted a few minutes still syncs; the skew it measured is
returned (VerifiedRequest.skew_ms, clock_skewed beyond 5 min) for the cloud to flag the
gateway and its readings. Beyond the leeway the 401 carries the cloud's time
(problem extra "server_time_ms"): RequestSigner.calibrate() takes it, so a gateway with a
wrong clock signs in the cloud's time from then on, while its readings keep their own.

Errors: GatewayAuthError (a ProblemError, 401) and its subclasses; the replay cache refusing
work when full is a 503 (fail closed: only verified tokens enter it, so only enrolled
gateways can fill it). Key files: GatewayKeyError, a local error with a message for the CLI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.atomic_file import write_atomic
from common.clock import Clock
from common.problem import Problem, ProblemError
from common.sync_clocks import CLOCK_SKEW_FLAG_MS

AUDIENCE: Final = "iotsphere-cloud"
ALGORITHM: Final = "EdDSA"
TOKEN_TYPE: Final = "iotsphere-gw+jwt"  # a user's JWT can never pass for a gateway's
TOKEN_TTL_S: Final = 60
MAX_TTL_S: Final = 300  # longer-lived tokens are refused: they would pin replay-cache memory
DEFAULT_LEEWAY_S: Final = 600
SKEW_FLAG_MS: Final = CLOCK_SKEW_FLAG_MS
MAX_TOKEN_CHARS: Final = 4096
DEFAULT_REPLAY_CACHE_SIZE: Final = 100_000
_REQUIRED: Final = ("iss", "aud", "iat", "exp", "jti", "htm", "htu", "bsh")


# -- errors ----------------------------------------------------------------------------------


class GatewayAuthError(ProblemError):
    """A gateway request that is not authenticated: a 401 problem document."""

    slug = "gateway-unauthorized"
    status = 401

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(
            Problem(self.slug, "Gateway authentication failed", self.status, detail, extra=extra)
        )


class InvalidToken(GatewayAuthError):
    """Malformed, wrongly signed, wrong algorithm or audience, missing or mistyped claims."""


class TokenExpired(GatewayAuthError):
    """exp is past (beyond the leeway); the problem carries server_time_ms."""


class TokenNotYetValid(GatewayAuthError):
    """iat is in the future beyond the leeway; the problem carries server_time_ms."""


class RequestMismatch(GatewayAuthError):
    """The token was made for another method, path or body."""


class UnknownGateway(GatewayAuthError):
    """No active gateway with this id (never enrolled, or revoked: not told apart)."""


class TokenReplayed(GatewayAuthError):
    """This token's jti has been accepted before."""


class ReplayCacheFull(GatewayAuthError):
    """Too many live tokens to remember; refuse rather than forget (retry shortly)."""

    slug = "gateway-auth-unavailable"
    status = 503


class GatewayKeyError(Exception):
    """The gateway's key file cannot be written or used (message for the user)."""


# -- keys ------------------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path, *, overwrite: bool = False) -> None:
    """Write the key as PKCS#8 PEM, mode 0600, atomically (temp file, fsync, rename)."""
    if path.exists() and not overwrite:
        raise GatewayKeyError(f"{path} exists: this gateway already has a key")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, 0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The key saved by save_private_key; refuses a file others can read (like ssh)."""
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except OSError as exc:
        raise GatewayKeyError(f"cannot read the gateway key {path}: {exc.strerror}") from exc
    if mode & 0o077:
        raise GatewayKeyError(
            f"the gateway key {path} is readable by others (mode {mode:o}): chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise GatewayKeyError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise GatewayKeyError(f"{path} is not an Ed25519 key")
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The 32 raw public key bytes, standard base64: what enrollment sends."""
    return base64.b64encode(public_key_bytes(key)).decode()


def parse_public_key_b64(text: str) -> bytes:
    """The raw key bytes from enrollment's base64; ValueError unless a valid Ed25519 key."""
    try:
        raw = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError("public_key must be base64") from exc
    if len(raw) != 32:
        raise ValueError("public_key must be 32 bytes (a raw Ed25519 public key)")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


def body_hash(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


# -- signing ---------------------------------------------------------------------------------


class RequestSigner:
    """Makes the Authorization header for each gateway request."""

    def __init__(
        self,
        gateway_id: str,
        private_key: Ed25519PrivateKey,
        clock: Clock,
        *,
        ttl_s: int = TOKEN_TTL_S,
    ) -> None:
        self.gateway_id = gateway_id
        self._key = private_key
        self._clock = clock
        self._ttl_s = ttl_s
        self.offset_ms = 0  # cloud time minus our time, once calibrate() learnt it

    def calibrate(self, server_time_ms: int) -> None:
        """Sign in the cloud's time from now on (after a 401 carrying server_time_ms)."""
        self.offset_ms = server_time_ms - self._clock.now_ms()

    def token(self, method: str, path: str, body: bytes = b"") -> str:
        iat = (self._clock.now_ms() + self.offset_ms) // 1000
        claims = {
            "iss": self.gateway_id,
            "aud": AUDIENCE,
            "iat": iat,
            "exp": iat + self._ttl_s,
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": path,
            "bsh": body_hash(body),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(method, path, body)}"}


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifiedRequest:
    gateway_id: str
    jti: str
    issued_at_ms: int
    expires_at_ms: int
    skew_ms: int  # the gateway's iat minus the verifier's clock: > 0 when the gateway is ahead

    @property
    def clock_skewed(self) -> bool:
        return abs(self.skew_ms) > SKEW_FLAG_MS


class GatewayVerifier:
    """Checks gateway tokens; remembers accepted jtis until they expire (bounded)."""

    def __init__(
        self,
        public_key_lookup: Callable[[str], bytes | None],
        clock: Clock,
        leeway_s: int = DEFAULT_LEEWAY_S,
        *,
        max_ttl_s: int = MAX_TTL_S,
        replay_cache_size: int = DEFAULT_REPLAY_CACHE_SIZE,
    ) -> None:
        self._lookup = public_key_lookup
        self._clock = clock
        self._leeway_ms = leeway_s * 1000
        self._max_ttl_s = max_ttl_s
        self._cap = replay_cache_size
        self._seen: dict[tuple[str, str], int] = {}  # (iss, jti) -> forget after (ms)
        self._expiry: list[tuple[int, tuple[str, str]]] = []  # heap of the same
        self._lock = threading.Lock()  # endpoints may verify from a thread pool

    def verify_authorization(
        self, header: str | None, *, method: str, path: str, body: bytes
    ) -> VerifiedRequest:
        """verify() on an `Authorization: Bearer <token>` header value."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("missing Authorization: Bearer <gateway token>")
        return self.verify(token.strip(), method=method, path=path, body=body)

    # each verification step refuses with its own reason:
    def verify(self, token: str, *, method: str, path: str, body: bytes) -> VerifiedRequest:  # noqa: PLR0912
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token too long")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        # Pinned before any key is touched: "none", HS256-with-the-public-key and friends die here.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken(f"algorithm must be {ALGORITHM}")
        if header.get("typ") != TOKEN_TYPE:
            raise InvalidToken(f"token type must be {TOKEN_TYPE}")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise InvalidToken("token has no issuer (gateway id)")
        raw_key = self._lookup(iss)
        if raw_key is None:
            raise UnknownGateway("unknown or revoked gateway")
        try:
            key = Ed25519PublicKey.from_public_bytes(raw_key)
        except ValueError as exc:
            raise UnknownGateway("the gateway has no usable key") from exc
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=iss,
                # Times are checked below against the injected clock, not PyJWT's time.time().
                options={
                    "require": list(_REQUIRED),
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token rejected: {exc}") from exc

        iat, exp, jti = claims["iat"], claims["exp"], claims["jti"]
        if type(iat) is not int or type(exp) is not int:
            raise InvalidToken("iat and exp must be integers (seconds)")
        if not 0 < exp - iat <= self._max_ttl_s:
            raise InvalidToken(f"token lifetime must be 1..{self._max_ttl_s} s")
        if not isinstance(jti, str) or not 16 <= len(jti) <= 128:
            raise InvalidToken("jti must be a random string of 16..128 characters")
        now = self._clock.now_ms()
        if exp * 1000 + self._leeway_ms < now:
            raise TokenExpired("token expired", server_time_ms=now)
        if iat * 1000 - self._leeway_ms > now:
            raise TokenNotYetValid("token issued in the future", server_time_ms=now)
        if claims["htm"] != method.upper():
            raise RequestMismatch("token was made for another HTTP method")
        if claims["htu"] != path:
            raise RequestMismatch("token was made for another path")
        if claims["bsh"] != body_hash(body):
            raise RequestMismatch("token was made for another body")
        self._remember(iss, jti, exp * 1000 + self._leeway_ms, now)
        return VerifiedRequest(
            gateway_id=iss,
            jti=jti,
            issued_at_ms=iat * 1000,
            expires_at_ms=exp * 1000,
            skew_ms=iat * 1000 - now,
        )

    def _remember(self, iss: str, jti: str, forget_at: int, now: int) -> None:
        key = (iss, jti)
        with self._lock:
            # Entries whose token can no longer pass the expiry check need not be remembered.
            while self._expiry and self._expiry[0][0] < now:
                _, old = heapq.heappop(self._expiry)
                self._seen.pop(old, None)
            if key in self._seen:
                raise TokenReplayed("token already used")
            if len(self._seen) >= self._cap:
                raise ReplayCacheFull("too many live gateway tokens; retry shortly")
            self._seen[key] = forget_at
            heapq.heappush(self._expiry, (forget_at, key))

    def replay_cache_len(self) -> int:
        with self._lock:
            return len(self._seen)
