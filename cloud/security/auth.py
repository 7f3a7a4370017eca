"""Users' credentials: argon2id passwords, JWT access tokens (RFC 8725), refresh tokens and
failed-login throttling. No I/O here beyond the signing-secret file; time is injected.

RFC 8725 choices: the algorithm is pinned (HS256 with a 256-bit secret from the data dir; the
token's own `alg` header is never trusted, so alg=none and algorithm confusion fail), the
header `typ` is explicit (`at+jwt`, RFC 9068) so other JWTs cannot be replayed as access tokens,
and `exp`, `iat`, `iss`, `aud`, `sub` are required and checked. Expiry is checked against the
injected clock, not PyJWT's wall clock, so tests can move time.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud.storage.errors import StoreError
from cloud.storage.interface import Role, User
from common.clock import Clock
from common.tokens import new_cli_token

ALGORITHM = "HS256"
TOKEN_TYPE = "at+jwt"


class AuthError(Exception):
    """A credential was refused (becomes 401 with WWW-Authenticate: Bearer)."""


# -- passwords --------------------------------------------------------------------------------

# argon2id with OWASP's minimum profile (19 MiB, 2 passes, 1 lane): ~60 ms here, where the
# library default (64 MiB, 3 passes, 4 lanes) costs ~300 ms of a 2-core box per login attempt.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# verified against when the e-mail is unknown, so both paths cost the same (no enumeration)
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


# -- secrets and opaque tokens ----------------------------------------------------------------


def load_or_create_secret(path: Path) -> bytes:
    """The JWT signing key: 32 random bytes, created once with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) < 32:
            raise ValueError(f"{path}: signing key shorter than 256 bits") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def new_opaque_token() -> str:
    return new_cli_token(32)


def token_digest(token: str) -> str:
    """What the store keeps of a refresh/enrollment token (high-entropy: no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


# -- access tokens ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: every query is scoped by org_id."""

    user_id: str
    org_id: str
    role: Role
    token_version: int = 0  # the user's token version the access token was issued under

    def may(self, needed: Role) -> bool:
        return self.role.rank >= needed.rank


class TokenService:
    def __init__(self, key: bytes, clock: Clock, *, issuer: str, audience: str, ttl_s: int) -> None:
        self._key = key
        self._clock = clock
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s

    @property
    def signing_key(self) -> bytes:
        """The HS256 key (tests sign hostile tokens with it; `cloud copy` moves it)."""
        return self._key

    def issue(self, principal: Principal) -> str:
        now = self._clock.now_ms() // 1000
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.user_id,
            "org": principal.org_id,
            "role": principal.role.value,
            TOKEN_VERSION_CLAIM: principal.token_version,
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE})

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != TOKEN_TYPE:
                raise AuthError("not an access token")
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # pinned: never taken from the token
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    # exp, iat and nbf are checked below against the injected clock
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        now = self._clock.now_ms() / 1000
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", claims["iat"])
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (exp, iat, nbf)):
            raise AuthError("invalid token: exp/iat/nbf not numeric")
        if now >= exp:
            raise AuthError("token expired")
        # A token from the future was not issued by this clock (or was forged with the key):
        # refused beyond a small leeway for clocks of several workers.
        if iat > now + CLOCK_LEEWAY_S:
            raise AuthError("invalid token: issued in the future")
        if nbf > now + CLOCK_LEEWAY_S:
            raise AuthError("token not yet valid")
        # tokens issued before versions existed carry none: version 0, every user's first
        version = claims.get(TOKEN_VERSION_CLAIM, 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise AuthError("invalid token: token_version not an integer")
        try:
            return Principal(str(claims["sub"]), str(claims["org"]), Role(claims["role"]), version)
        except (KeyError, ValueError) as exc:
            raise AuthError("invalid token: bad org/role claims") from exc


CLOCK_LEEWAY_S = 30
TOKEN_VERSION_CLAIM = "token_version"


class KnownUsers:
    """Whether an access token's subject is still an enabled user of the token's org whose
    sessions were not ended since (the token's version is the user's), and with which role now.
    Looked up at most every `ttl_s` per user, so a user deleted, disabled, moved or whose
    password changed loses access within that time, not at the token's expiry (at once in
    this process: the API forgets the user when it changes them); a subject that never existed
    (a token signed with a leaked key, or from another deployment) is refused at once."""

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[User | None]],
        clock: Clock,
        ttl_s: float = 2.0,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._ttl_s = ttl_s
        self._seen: dict[str, tuple[float, User | None]] = {}

    async def current(self, principal: Principal) -> Principal:
        now = self._clock.monotonic()
        hit = self._seen.get(principal.user_id)
        if hit is None or now - hit[0] >= self._ttl_s:
            try:
                user = await self._lookup(principal.user_id)
            except StoreError:
                # The store is down: the request's own queries fail with their 503 (after
                # their retries, as the dashboard flow says); this check does not turn that
                # into a different answer. Nothing is served without the store anyway. A
                # verdict seen before still stands.
                if hit is None:
                    return principal
                user = hit[1]
            else:
                if len(self._seen) >= self.MAX_ENTRIES:
                    self._seen.clear()
                self._seen[principal.user_id] = (now, user)
        else:
            user = hit[1]
        if user is None or user.org_id != principal.org_id:
            raise AuthError("the token's user does not exist (any more)")
        if user.disabled:
            raise AuthError("the token's user is disabled")
        if user.token_version != principal.token_version:
            raise AuthError("token revoked: the user's sessions were ended")
        return _as_now(user)

    def forget(self, user_id: str) -> None:
        """Look the user up again on their next request (this process just changed them)."""
        self._seen.pop(user_id, None)


def _as_now(user: User) -> Principal:
    return Principal(user.id, user.org_id, user.role, user.token_version)
