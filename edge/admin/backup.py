"""`gateway backup` / `gateway restore`: a gateway's data dir as one .tar.gz.

The archive holds what a restored gateway needs to run and sync, and nothing it rebuilds:
- manifest.json: format, schema version, creation time, the files below;
- gateway.duckdb: the store (devices and token hashes, readings, rules, alerts, sync cursors),
  copied between two commits by the running gateway's store actor (edge.storage.snapshot);
- gateway.toml, identity.json + gateway.key (the cloud enrollment), status_password (the local
  status page's login), oscore/ (devices' OSCORE contexts), tls/ (the certificate devices
  trust, so a restored gateway keeps it) — those that exist.
Left out: broker/ (Mosquitto's files, rebuilt from the store at start), run/ and admin.secret
(created at start). The archive holds the gateway's private key: it is written mode 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import duckdb

from common.backup_files import MANIFEST, utc_now_iso, wal_of, write_tar_gz
from edge.app.config import GatewayConfig
from edge.storage.migrations import check_version, stored_version

FORMAT = "iotsphere-gateway-backup"
DATABASE = "gateway.duckdb"
SMALL_FILES = ("gateway.toml", "identity.json", "gateway.key", "status_password")
DIRECTORIES = ("oscore", "tls")
CONTENTS_HELP = (
    "a .tar.gz with manifest.json, the store (gateway.duckdb: devices, readings, rules, alerts,"
    " sync cursors) and those of gateway.toml, identity.json, gateway.key, status_password,"
    " oscore/ and tls/ that exist; it holds the gateway's private keys (written mode 0600)"
)


class BackupError(Exception):
    """A refused backup or restore: one line for the user, and its exit code (1 or 2)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fold_wal(db_file: Path) -> int:
    """Open a copied database (replaying a WAL copied beside it) and checkpoint it into one
    file; its schema version."""
    con = duckdb.connect(str(db_file))
    try:
        version = stored_version(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    wal_of(db_file).unlink(missing_ok=True)
    return version


def write_archive(
    dest: Path, snapshot: Path, data_dir: Path, schema_version: int
) -> dict[str, Any]:
    """Pack the snapshot and the data dir's small files into dest (replaced atomically)."""
    members = [name for name in (*SMALL_FILES, *DIRECTORIES) if (data_dir / name).exists()]
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "schema_version": schema_version,
        "created_at": utc_now_iso(),
        "files": [DATABASE, *members],
    }
    size = write_tar_gz(
        dest, manifest, [(snapshot, DATABASE), *((data_dir / n, n) for n in members)]
    )
    return {"file": str(dest), "bytes": size, **manifest}


def _read_manifest(tar: tarfile.TarFile, source: Path) -> dict[str, Any]:
    not_backup = BackupError(f"{source} is not an iotsphere gateway backup", 2)
    try:
        member = tar.extractfile(MANIFEST)
        manifest = json.loads(member.read()) if member is not None else None
    except (KeyError, ValueError, tarfile.TarError, OSError) as exc:
        raise not_backup from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise not_backup
    files = manifest.get("files")
    allowed = {DATABASE, *SMALL_FILES, *DIRECTORIES}
    if not isinstance(files, list) or DATABASE not in files or not set(files) <= allowed:
        raise not_backup
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise not_backup
    check_version(version, source)
    return manifest


def extract(source: Path, staging: Path) -> dict[str, Any]:
    """Unpack a backup into staging, checked: its manifest, the names it holds, the store's
    schema version (a newer release's is refused). Returns the manifest."""
    try:
        with tarfile.open(source, "r:gz") as tar:
            manifest = _read_manifest(tar, source)
            names = set(manifest["files"])
            wanted = [m for m in tar.getmembers() if m.name.split("/", 1)[0] in names]
            tar.extractall(staging, members=wanted, filter="data")
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise BackupError(
            f"{source} is not an iotsphere gateway backup, or damaged: {exc}", 2
        ) from exc
    db = staging / DATABASE
    if not db.is_file():
        raise BackupError(f"{source} is not an iotsphere gateway backup (no {DATABASE})", 2)
    try:
        check_version(fold_wal(db), source)
    except duckdb.Error as exc:
        raise BackupError(f"{source}: its store cannot be opened: {exc}", 2) from exc
    return manifest


def install(staging: Path, manifest: dict[str, Any], cfg: GatewayConfig) -> None:
    """Move the unpacked files into the data dir, replacing what is there (a stale WAL of the
    old store is removed: replayed onto the restored file, it would corrupt it)."""
    data_dir = cfg.data_dir
    wal_of(cfg.db_path).unlink(missing_ok=True)
    for name in manifest["files"]:
        src, dst = staging / name, data_dir / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        os.replace(src, cfg.db_path if name == DATABASE else dst)
    # Not in the backup, so not the restored gateway's (a gateway.toml stays: the installer's)
    for name in (*SMALL_FILES, *DIRECTORIES):
        if name not in manifest["files"] and name != "gateway.toml":
            path = data_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
