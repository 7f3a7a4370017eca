"""The gateway store's schema version and its ordered migrations (like the cloud's, without
importing it: the gateway process imports nothing of the cloud's).

The version lives in `schema_versions` (component "gateway"), the shape the cloud uses. Version 1
is the schema the gateway had before it was versioned; its statements are idempotent (CREATE ...
IF NOT EXISTS, ADD COLUMN IF NOT EXISTS), so a file from that release (tables, no version row)
goes through them unchanged and is stamped 1, and a new file is created by them. A later change
is a new Migration with the next version, applied once, in its own transaction. A file a newer
release migrated further is refused: this code does not know its schema.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import duckdb

from edge.storage.connection import DuckConnection, StoreError
from edge.storage.schema import SCHEMA

log = logging.getLogger("iotsphere.store")

COMPONENT = "gateway"
VERSIONS_TABLE = """CREATE TABLE IF NOT EXISTS schema_versions (
    component VARCHAR PRIMARY KEY, version INTEGER NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # 1, 2, 3 ...: applied in order, each exactly once
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            SCHEMA,
            # Added after the first release, before versioning: a cursor for syncing auth events.
            "ALTER TABLE auth_failures ADD COLUMN IF NOT EXISTS seq BIGINT",
        ),
    ),
)
LATEST = max(m.version for m in MIGRATIONS)


class SchemaTooNew(StoreError):
    """The file was migrated by a newer release (message for the user)."""


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The file's schema version: 0 when it has none (new, or from before versioning)."""
    if not _has_table(con, "schema_versions"):
        return 0
    rows = con.execute(
        "SELECT version FROM schema_versions WHERE component = ?", [COMPONENT]
    ).fetchall()
    return int(rows[0][0]) if rows else 0


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary", [name]
    ).fetchall()
    return bool(rows[0][0])


def check_version(version: int, what: Path | str) -> None:
    """Refuse a schema this release does not know (one line, for the user)."""
    if version > LATEST:
        raise SchemaTooNew(
            f"{what} has gateway schema version {version}, newer than this release knows"
            f" ({LATEST}): upgrade iotsphere, or restore a backup made by this release"
        )


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Bring the file at `path` to LATEST; returns the version it had (0: none)."""
    found = stored_version(con)
    check_version(found, path)
    if found == 0 and _has_table(con, "readings"):
        log.info("store: %s predates schema versions; stamping it as version 1", path)
    for m in MIGRATIONS:
        if m.version <= found:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(VERSIONS_TABLE)
            for statement in m.statements:
                con.execute(statement)
            con.execute(
                "INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", [COMPONENT, m.version]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        log.debug("store: %s migrated to schema version %d", path, m.version)
    return found


def open_migrated(db: DuckConnection) -> int:
    """migrate() on a store's new connection, closed again when it fails (a refused file stays
    free for the next process)."""
    try:
        return migrate(db.con, db.path)
    except BaseException:
        db.con.close()
        raise
