"""A small tmpfs for full-disk tests, and a filler file that leaves a chosen amount free.

Mounting needs root (CI runs as root); elsewhere the tests that need it are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

CHUNK = 1 << 20


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """`path` as a tmpfs of size_mb MiB until the block ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (to fill a disk for real) needs root; CI runs as root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        # lazy: a process the test started (Mosquitto) may still be closing its files
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave_bytes: int) -> Path:
    """A filler file that takes all the space on path's file system but leave_bytes."""
    filler = path / "filler"
    with filler.open("ab", buffering=0) as f:  # unbuffered: nothing left to fail at close
        block = b"\xa5" * CHUNK
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    # a partial page may stay unwritten: free what is asked for exactly
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_bytes + free_bytes(path)))
    return filler
