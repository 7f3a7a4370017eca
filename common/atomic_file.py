"""Writing a small file atomically: a temp file created with its final mode (never briefly
readable by others), fsynced, then renamed over the target; a crash leaves the old file or the
new one, never half of one (the directory is fsynced too)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # Created with its mode from the start (never briefly readable), then fchmod: the umask can
    # only remove bits (a key made 0400 would break a later overwrite).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
