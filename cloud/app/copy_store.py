"""`iotsphere cloud copy --to postgresql://...`: move an embedded cloud into PostgreSQL.

Everything the cloud keeps moves: users and their sessions, gateways with their public keys and
sync cursors (so gateways carry on syncing without re-enrollment), readings, rules, alerts,
channels, the notification outbox, and the JWT signing key (so signed-in users stay signed
in). The target is migrated first (the same migrations `cloud serve` runs) and must hold no
cloud yet; each table is copied with COPY in one transaction, so a failed copy leaves the
target as empty as it was. Columns are matched by name: both engines' schemas have the same
tables and columns (tests/cloud/test_cloud_copy.py checks every table arrives), except that
PostgreSQL keys readings by a series id, which the copy fills from the series it creates.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud.app.services import build_services, open_store
from cloud.app.settings import CloudSettings
from cloud.security.auth import load_or_create_secret
from cloud.security.store import JWT_KEY
from cloud.storage.db import Database
from cloud.storage.errors import StoreError
from cloud.storage.pg import PgConn, PgDatabase
from cloud.storage.pg_partitions import DAY_MS, HIGH_MS, LOW_MS, ensure_partitions

log = logging.getLogger("iotsphere.cloud.copy")
CHUNK_ROWS = 50_000
SKIP = frozenset({"schema_versions"})  # each side's own migration history
FILLED = frozenset({("readings", "series_id")})  # filled by the copy (_copy_readings)


@dataclass(frozen=True, slots=True)
class Copied:
    table: str
    rows: int


class TargetNotEmpty(StoreError):
    """The target database already holds a cloud: copying would mix two."""


def copy_cloud(
    source: CloudSettings, target_url: str, progress: Callable[[Copied], None] | None = None
) -> list[Copied]:
    """Copy the embedded cloud of `source.data_dir` into the PostgreSQL at `target_url`.
    Raises StoreError (TargetNotEmpty when the target already has users or gateways)."""
    src = open_store(source)  # the DuckDB file; migrated to this release first
    try:
        build_services(source, src)  # every area migrates its tables
        target = CloudSettings(data_dir=source.data_dir, database_url=target_url)
        dst = open_store(target)
        try:
            build_services(target, dst)
            assert isinstance(src.db, Database) and isinstance(dst.db, PgDatabase)
            key = load_or_create_secret(source.jwt_secret_path)
            return dst.db.run_sync(dst.db.transaction(_copier(src.db, key, progress)))
        finally:
            dst.close()
    finally:
        src.close()


def _copier(
    src: Database, jwt_key: bytes, progress: Callable[[Copied], None] | None
) -> Callable[[PgConn], list[Copied]]:
    def go(c: PgConn) -> list[Copied]:
        _refuse_if_not_empty(c)
        done = []
        for table in _tables(c):
            columns = _shared_columns(src, c, table)
            if columns is None:
                continue  # a table only PostgreSQL has (series: filled with readings)
            if table == "readings":
                _partitions_for(src, c)
                copied = Copied(table, _copy_readings(src, c, columns))
            else:
                copied = Copied(table, _copy_table(src, c, table, columns))
            done.append(copied)
            if progress is not None:
                progress(copied)
        _advance_sequences(c)
        c.execute(
            "INSERT INTO cloud_secrets VALUES (?, ?, 0) ON CONFLICT (name)"
            " DO UPDATE SET value = excluded.value",
            [JWT_KEY, jwt_key.hex()],
        )
        return done

    return go


def _refuse_if_not_empty(c: PgConn) -> None:
    users = c.execute("SELECT count(*) FROM users").fetchall()[0][0]
    gateways = c.execute("SELECT count(*) FROM gateways").fetchall()[0][0]
    if users or gateways:
        raise TargetNotEmpty(
            f"the target database already holds a cloud ({users} users, {gateways} gateways):"
            " copy into an empty database"
        )


def _tables(c: PgConn) -> list[str]:
    """The target's tables, partitions left out (rows go through their parent)."""
    rows = c.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')"
        " AND NOT c.relispartition ORDER BY c.relname"
    ).fetchall()
    return [r[0] for r in rows if r[0] not in SKIP]


def _shared_columns(src: Database, c: PgConn, table: str) -> list[str] | None:
    theirs = src.run_sync(
        lambda s: s.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
            " AND table_schema = 'main'",
            [table],
        ).fetchall()
    )
    if not theirs:
        return None
    ours = c.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
        " AND table_schema = current_schema() ORDER BY ordinal_position",
        [table],
    ).fetchall()
    have = {r[0] for r in theirs}
    missing = [r[0] for r in ours if r[0] not in have and (table, r[0]) not in FILLED]
    if missing:  # a column DuckDB lacks would arrive as its default: say so, do not guess
        log.warning("copy: %s.%s not in the embedded store; left to defaults", table, missing)
    return [r[0] for r in ours if r[0] in have]


def _partitions_for(src: Database, c: PgConn) -> None:
    days = src.run_sync(
        lambda s: s.execute(
            "SELECT DISTINCT ts // ? FROM readings WHERE ts >= ? AND ts < ?",
            [DAY_MS, LOW_MS, HIGH_MS],
        ).fetchall()
    )
    ensure_partitions(c, [int(d[0]) for d in days])


def _copy_readings(src: Database, c: PgConn, columns: list[str]) -> int:
    """readings on PostgreSQL also hold their series' id (cloud.storage.pg_schema), which the
    embedded store lacks: the rows go through a temp table, their series are created, and they
    go in with their ids."""
    shared = [name for name in columns if name != "series_id"]
    cols = ", ".join(shared)
    c.execute(
        f"CREATE TEMP TABLE copied_readings ON COMMIT DROP AS SELECT {cols} FROM readings"
        " WITH NO DATA"
    )
    copied = _copy_table(src, c, "readings", shared, into="copied_readings")
    c.execute(
        "INSERT INTO series (org_id, device_id, metric) SELECT DISTINCT org_id, device_id, metric"
        " FROM copied_readings ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING"
    )
    picked = ", ".join(f"r.{name}" for name in shared)
    c.execute(
        f"INSERT INTO readings ({cols}, series_id) SELECT {picked}, s.id FROM copied_readings r"
        " JOIN series s ON s.org_id = r.org_id AND s.device_id = r.device_id"
        " AND s.metric = r.metric"
    )
    return copied


def _copy_table(
    src: Database, c: PgConn, table: str, columns: list[str], into: str | None = None
) -> int:
    cols = ", ".join(columns)
    copied = 0
    with src.lock:  # one DuckDB connection, used by this thread alone meanwhile
        result = src.current_connection().execute(f"SELECT {cols} FROM {table}")
        cur = c.raw.cursor()
        with cur.copy(f"COPY {into or table} ({cols}) FROM STDIN") as copy:
            while rows := result.fetchmany(CHUNK_ROWS):
                for row in rows:
                    copy.write_row(row)
                copied += len(rows)
    return copied


def _advance_sequences(c: PgConn) -> None:
    """Sequences behind copied rows (e.g. metrics.seq) continue after the largest copied."""
    rows: list[Any] = c.execute(
        "SELECT table_name, column_name, column_default,"
        " pg_get_serial_sequence(table_name, column_name)"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')"
    ).fetchall()
    for table, column, default, owned in rows:
        named = _NEXTVAL.match(default or "")
        sequence = owned or (named.group(1) if named else None)
        if sequence is None:
            continue
        c.execute(f"SELECT setval(?, greatest((SELECT max({column}) FROM {table}), 1))", [sequence])


_NEXTVAL = re.compile(r"nextval\('([^']+)'")
