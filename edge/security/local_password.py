"""The local status page password: an argon2id hash in the data dir, set at install.

`iotsphere gateway password set` writes it (mode 0600, replaced atomically); the running gateway
reads the file at each login, so setting or changing it needs no restart. Verification is
deliberately slow (argon2id), so the caller runs it off the event loop and the status page
limits attempts with edge.security.lockout.
"""

from __future__ import annotations

import os
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

FILE_NAME = "status_password"
MIN_LENGTH = 8
MAX_LENGTH = 1024  # argon2 takes any length; an unbounded one would be a CPU lever

# argon2-cffi's defaults (RFC 9106 "low memory" profile: 64 MiB, t=3) fit a Pi.
_HASHER = PasswordHasher()


class PasswordError(Exception):
    """A password that cannot be set, or a hash file that cannot be read; one printable line."""


def password_path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordError(f"the password may have at most {MAX_LENGTH} characters")


def set_password(data_dir: Path, password: str) -> Path:
    """Hash and store; replaces an earlier password. Returns the file written."""
    check_new_password(password)
    encoded = _HASHER.hash(password)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = password_path(data_dir)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(encoded + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise PasswordError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def load_hash(data_dir: Path) -> str | None:
    """The stored hash, or None when no password is set."""
    try:
        text = password_path(data_dir).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PasswordError(f"cannot read {password_path(data_dir)}: {exc}") from exc
    return text or None


def verify(encoded: str, password: str) -> bool:
    """Constant-time argon2 verification; a damaged hash verifies nothing."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
