"""What the gateway's and the cloud's backups share: copying a DuckDB file with its WAL, and
writing a .tar.gz with a manifest atomically, the `backup FILE` subcommand (no duckdb import:
common/ stays dependency-light).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.cli import CliError

MANIFEST = "manifest.json"


def wal_of(path: Path) -> Path:
    """DuckDB's write-ahead log beside a database file."""
    return path.with_name(path.name + ".wal")


def copy_with_wal(src: Path, dest: Path) -> None:
    """Copy a database file that nothing writes to right now (its owner holds its lock, after a
    CHECKPOINT), and its WAL when one is left: opening the copy replays it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    wal_of(dest).unlink(missing_ok=True)
    wal = wal_of(src)
    if wal.exists() and wal.stat().st_size > 0:
        shutil.copyfile(wal, wal_of(dest))


def utc_now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_tar_gz(dest: Path, manifest: dict[str, Any], members: Sequence[tuple[Path, str]]) -> int:
    """Write dest (mode 0600, replaced atomically): manifest.json, then each (path, name in the
    archive), directories whole. Returns its size in bytes."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(body), int(time.time()), 0o600
            tar.addfile(info, io.BytesIO(body))
            for path, name in members:
                tar.add(path, arcname=name)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest.stat().st_size


def backup_destination(raw: str) -> Path:
    """FILE of `... backup FILE`: a file in an existing directory (else a usage error)."""
    dest = Path(raw).absolute()
    if not dest.parent.is_dir() or dest.is_dir():
        raise CliError(f"{dest}: name a file in an existing directory", 2)
    return dest


def pack_snapshot(
    dest: Path,
    copy: Path,
    pack: Callable[[], dict[str, Any]],
    errors: tuple[type[BaseException], ...] = (OSError,),
) -> dict[str, Any]:
    """pack() the store's copy into dest; the copy (and its WAL) removed whatever happens."""
    try:
        return pack()
    except errors as exc:
        raise CliError(f"backup to {dest} failed: {exc}") from exc
    finally:
        copy.unlink(missing_ok=True)
        wal_of(copy).unlink(missing_ok=True)


def add_backup_parser(
    sub: Any, *, help: str, description: str, add_args: Callable[..., None], handler: Any
) -> None:
    """A `backup FILE` subcommand (the gateway's and the cloud's)."""
    backup = sub.add_parser("backup", help=help, description=description)
    backup.add_argument("file", metavar="FILE", help="the .tar.gz to write (replaced if it exists)")
    add_args(backup, json_flag=True)
    backup.set_defaults(handler=handler)
