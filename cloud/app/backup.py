"""`iotsphere cloud backup FILE`: the embedded DuckDB store and the data dir's secrets as one
.tar.gz, consistent while `cloud serve` runs.

The running server copies its file under its store's lock (cloud.storage.db.Database: every
query holds it, so none runs): CHECKPOINT writes every committed transaction into the file,
then the file is copied (and a WAL the checkpoint could not empty, replayed when the copy is
opened). Requests wait for the copy. PostgreSQL is backed up with its own tools (pg_dump).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

import duckdb

from cloud.app.settings import DB_FILE, JWT_SECRET_FILE
from cloud.storage.db import Database
from common.backup_files import copy_with_wal, utc_now_iso, wal_of, write_tar_gz

log = logging.getLogger("iotsphere.cloud.backup")

FORMAT = "iotsphere-cloud-backup"
CONTENTS_HELP = (
    f"a .tar.gz with manifest.json, the store ({DB_FILE}: users, gateways, devices, telemetry,"
    f" rules, alerts, channels) and {JWT_SECRET_FILE} (the key that signs users' tokens; the file"
    " is written mode 0600). To restore, stop `cloud serve` and unpack it into the data dir"
)
NOT_EMBEDDED = "cloud backup covers the embedded DuckDB store; back up PostgreSQL with pg_dump"


class NotEmbedded(Exception):
    """The store is PostgreSQL."""


def snapshot_path(data_dir: Path) -> Path:
    """Where the server puts the copy for the CLI, which packs it and deletes it."""
    return data_dir / "run" / f"snapshot-{secrets.token_hex(8)}.duckdb"


def snapshot(db: object, dest: Path) -> None:
    """Copy the store's DuckDB file (db: the store's `db`) to dest between two queries (runs in
    a worker thread). Raises NotEmbedded for PostgreSQL, StoreError when the copy fails."""
    if not isinstance(db, Database):
        raise NotEmbedded(NOT_EMBEDDED)

    def copy(conn: duckdb.DuckDBPyConnection) -> None:
        try:
            conn.execute("CHECKPOINT")
        except duckdb.Error as exc:  # loses nothing: the WAL is copied too
            log.warning("backup: checkpoint failed, copying the WAL too: %s", exc)
        copy_with_wal(Path(db.path), dest)

    db.run_sync(copy)


def schema_versions(db_file: Path) -> dict[str, int]:
    """The copy's schema versions by component, its WAL folded into the file."""
    con = duckdb.connect(str(db_file))
    try:
        rows = con.execute("SELECT component, version FROM schema_versions").fetchall()
        con.execute("CHECKPOINT")
    finally:
        con.close()
    wal_of(db_file).unlink(missing_ok=True)
    return {str(c): int(v) for c, v in sorted(rows)}


def write_archive(dest: Path, copy: Path, data_dir: Path) -> dict[str, Any]:
    extra = [JWT_SECRET_FILE] if (data_dir / JWT_SECRET_FILE).exists() else []
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "schema_versions": schema_versions(copy),
        "created_at": utc_now_iso(),
        "files": [DB_FILE, *extra],
    }
    members = [(copy, DB_FILE), *((data_dir / name, name) for name in extra)]
    return {"file": str(dest), "bytes": write_tar_gz(dest, manifest, members), **manifest}
