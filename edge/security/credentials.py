"""Device tokens: generated once, shown once, stored only as hashes.

Two hashes per token, each for one reader:
- PBKDF2-SHA512 with a random salt, in exactly the format Mosquitto's dynamic-security plugin
  stores, so the gateway can rebuild the broker's credentials from DuckDB without the token;
- SHA-256 as a lookup key for CoAP/HTTP, where the token is in the URL. A token has 192 random
  bits, so a fast hash is not guessable (a slow hash protects low-entropy passwords only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from common.tokens import new_cli_token

TOKEN_BYTES = 24  # 192 bits
PBKDF2_ITERATIONS = 1000  # Mosquitto hashes on every CONNECT: keep CONNECT storms affordable
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class TokenHashes:
    lookup: str
    pw_hash: str
    pw_salt: str
    pw_iterations: int


def valid_device_id(device_id: str) -> bool:
    # fullmatch: with match, "$" also accepts a trailing newline ("dev\n" was a device id)
    return bool(DEVICE_ID_RE.fullmatch(device_id))


def new_token() -> str:
    return new_cli_token(TOKEN_BYTES)


def token_lookup(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_token(token: str, iterations: int = PBKDF2_ITERATIONS) -> TokenHashes:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), salt, iterations)
    return TokenHashes(
        lookup=token_lookup(token),
        pw_hash=base64.b64encode(digest).decode(),
        pw_salt=base64.b64encode(salt).decode(),
        pw_iterations=iterations,
    )


def verify_token(token: str, pw_hash: str, pw_salt: str, iterations: int) -> bool:
    digest = hashlib.pbkdf2_hmac("sha512", token.encode(), base64.b64decode(pw_salt), iterations)
    return hmac.compare_digest(base64.b64encode(digest).decode(), pw_hash)
