"""readings on TimescaleDB, where the extension is installed and preloaded: a hypertable with
daily chunks instead of daily partitions, compression of old chunks, a continuous aggregate of
5-minute buckets for the bucketed query, retention by drop_chunks. Everything else about
readings (columns, the (series_id, ts) unique index, how a batch goes in) is the native
PostgreSQL path's (cloud.storage.pg_schema, pg_telemetry). See
docs/decisions/cloud-timescaledb.md.

Chosen once, when the core schema is first created (core migration 1, one transaction under
the migration lock): if the server offers the extension, has it in shared_preload_libraries and
runs the Timescale-licensed build (compression and continuous aggregates are not in the Apache
one), migration 1 also turns the just-created, empty readings into a hypertable and records
the choice as the schema_versions row `readings_timescale`. A database created without it keeps
its partitions for good, even if the extension appears later: nothing is re-decided per start.
IOTSPHERE_TIMESCALEDB=off keeps the native partitions where it is installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

from cloud.storage.sql import Migration, SqlConn, SqlDatabase, first

if TYPE_CHECKING:
    from cloud.storage.pg import PgDatabase

log = logging.getLogger("iotsphere.cloud.timescale")

COMPONENT = "readings_timescale"  # its schema_versions row records the choice
DAY_MS = 86_400_000
BUCKET_MS = 300_000  # the continuous aggregate's bucket: the dashboard's 24 h chart asks 5 min
COMPRESS_AFTER_MS = 2 * DAY_MS  # device time; today's and yesterday's chunks take late batches
REFRESH_EVERY = "1 minute"  # how stale a bucket of late readings may be (see telemetry_buckets)
AGGREGATE = "readings_5m"


@dataclass(frozen=True, slots=True)
class Probe:
    """What the server says about TimescaleDB."""

    available: bool  # in pg_available_extensions (installed on the server)
    preloaded: bool  # in shared_preload_libraries (it refuses to work otherwise)
    licensed: bool  # creatable here, timescaledb.license 'timescale': compression, aggregates


def wanted(probe: Probe, setting: str | None) -> bool:
    """Whether a new database gets the TimescaleDB layout (`setting`: IOTSPHERE_TIMESCALEDB)."""
    if (setting or "").strip().lower() in ("off", "0", "false", "no"):
        return False
    return probe.available and probe.preloaded and probe.licensed


def probe(db: PgDatabase) -> Probe:
    row = db.run_sync(
        lambda c: c.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
            " 'timescaledb' = ANY (string_to_array("
            "  replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
        ).fetchall()[0]
    )
    available, preloaded = bool(row[0]), bool(row[1])
    return Probe(available, preloaded, available and preloaded and _licensed(db.url))


def _licensed(url: str) -> bool:
    """Whether we may create the extension here and it is the Timescale-licensed build. Its
    license setting exists only once the extension is loaded into a database: created in a
    transaction that is rolled back, on a connection of its own that is closed afterwards (a
    session that loaded the library refuses to create the extension for real)."""
    import psycopg  # an optional extra, as everything PostgreSQL

    try:
        with (
            psycopg.connect(url, connect_timeout=10) as conn,
            conn.transaction(force_rollback=True),
        ):
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            row = conn.execute("SELECT current_setting('timescaledb.license', true)").fetchone()
    except psycopg.Error as exc:  # e.g. no CREATE privilege on the database
        log.info("TimescaleDB cannot be created here: %s", exc)
        return False
    return bool(row and row[0] == "timescale")


def enabled(c: SqlConn) -> bool:
    """Whether this database's readings are the hypertable (the recorded choice)."""
    rows = c.execute("SELECT 1 FROM schema_versions WHERE component = ?", [COMPONENT]).fetchall()
    return bool(rows)


def core_migrations(db: SqlDatabase, core: Sequence[Migration]) -> tuple[Migration, ...]:
    """The core PostgreSQL migrations for this database: migration 1 extended with LAYOUT when
    the core schema does not exist yet and TimescaleDB is wanted. (When migration 1 has run,
    what it is extended with never runs again.)"""
    if db.run_sync(_core_version) > 0:
        return tuple(core)
    found = probe(cast("PgDatabase", db))
    if not wanted(found, os.environ.get("IOTSPHERE_TIMESCALEDB")):
        if found.available:
            log.info("TimescaleDB not used for readings: %s", found)
        return tuple(core)
    log.info("readings: a TimescaleDB hypertable (chosen once, at the schema's creation)")
    return tuple(
        replace(m, statements=m.statements + LAYOUT) if m.version == 1 else m for m in core
    )


def _core_version(c: SqlConn) -> int:
    row = first(
        c.execute("SELECT version FROM schema_versions WHERE component = 'core'").fetchall()
    )
    return int(row[0]) if row else 0


# A reading's value as a number, as the bucketed query on either engine takes it
_V = "coalesce(value_num, CAST(CAST(value_bool AS INTEGER) AS DOUBLE PRECISION))"
_SERIES = "series_id = (SELECT id FROM series WHERE org_id = ? AND device_id = ? AND metric = ?)"

# Appended to core migration 1, which has just created readings (partitioned, empty): a plain
# table of the same columns takes its place (a partitioned table cannot become a hypertable).
LAYOUT: tuple[str, ...] = (
    "CREATE EXTENSION IF NOT EXISTS timescaledb",
    "CREATE TABLE readings_plain (LIKE readings INCLUDING DEFAULTS)",
    "DROP TABLE readings",  # and its default partition
    "ALTER TABLE readings_plain RENAME TO readings",
    "CREATE UNIQUE INDEX readings_series ON readings (series_id, ts)",
    f"SELECT create_hypertable('readings', by_range('ts', {DAY_MS}))",
    # ts is ms since the epoch: policies on an integer time column need "now" in its unit
    "CREATE FUNCTION iotsphere_now_ms() RETURNS BIGINT LANGUAGE SQL STABLE"
    " AS $$ SELECT CAST(extract(epoch FROM now()) * 1000 AS BIGINT) $$",
    "SELECT set_integer_now_func('readings', 'iotsphere_now_ms')",
    # One compressed batch per series and chunk, in time order: the dashboard's queries are per
    # series and range. cloud_received_at in the order too, only for its min/max per batch: the
    # monitoring loop's cursor filter then skips compressed batches without decompressing them.
    "ALTER TABLE readings SET (timescaledb.compress,"
    " timescaledb.compress_segmentby = 'series_id',"
    " timescaledb.compress_orderby = 'ts, cloud_received_at')",
    f"SELECT add_compression_policy('readings', compress_after => BIGINT '{COMPRESS_AFTER_MS}')",
    # Real-time (materialized_only false): buckets newer than the last refresh come from
    # readings; sums and counts rather than avg, so wider buckets add them up.
    f"CREATE MATERIALIZED VIEW {AGGREGATE} WITH (timescaledb.continuous,"
    " timescaledb.materialized_only = false) AS"
    f" SELECT series_id, time_bucket(BIGINT '{BUCKET_MS}', ts) AS bucket, min({_V}) AS lo,"
    f" max({_V}) AS hi, sum({_V}) AS total, count({_V}) AS nv, count(*) AS n FROM readings"
    " GROUP BY series_id, bucket WITH NO DATA",
    # its own chunks a day wide too (10 days by default), so retention drops them in step
    f"SELECT set_chunk_time_interval('{AGGREGATE}', {DAY_MS})",
    f"SELECT add_continuous_aggregate_policy('{AGGREGATE}', start_offset => NULL,"
    f" end_offset => BIGINT '{BUCKET_MS}', schedule_interval => INTERVAL '{REFRESH_EVERY}')",
    f"INSERT INTO schema_versions VALUES ('{COMPONENT}', 1)",
)


# The bucketed query for bucket widths that are whole multiples of BUCKET_MS (both are aligned
# to the epoch, so each 5-minute bucket lies in one wider bucket): whole 5-minute buckets inside
# [from, to) from the aggregate, the partial ones at the edges from readings, added up per
# requested bucket. Parameters: BUCKETS_PARAMS.
BUCKETS = (
    "SELECT t - ((t % ?) + ?) % ? AS bucket, min(lo), max(hi), sum(total) / nullif(sum(nv), 0),"
    " sum(n) FROM ("
    f" SELECT bucket AS t, lo, hi, total, nv, n FROM {AGGREGATE}"
    f" WHERE {_SERIES} AND bucket >= ? AND bucket < ?"
    " UNION ALL"
    " SELECT ts, v, v, v, CAST(v IS NOT NULL AS INTEGER), 1"
    f" FROM (SELECT ts, {_V} AS v FROM readings WHERE {_SERIES}"
    " AND ts >= ? AND ts < ? AND (ts < ? OR ts >= ?)) r"
    ") parts GROUP BY 1 ORDER BY 1 LIMIT ?"
)


def uses_aggregate(bucket_ms: int) -> bool:
    return bucket_ms % BUCKET_MS == 0


def buckets_params(
    org_id: str, device_id: str, metric: str, from_ms: int, to_ms: int, bucket_ms: int, limit: int
) -> list[object]:
    """BUCKETS' parameters: [a, b) is the run of whole 5-minute buckets inside [from, to)."""
    a = -(-from_ms // BUCKET_MS) * BUCKET_MS  # from, rounded up to a bucket's start
    b = max(a, to_ms // BUCKET_MS * BUCKET_MS)  # to, rounded down; empty when a >= b
    key = [org_id, device_id, metric]
    return [bucket_ms, bucket_ms, bucket_ms, *key, a, b, *key, from_ms, to_ms, a, b, limit]


def drop_before(c: SqlConn, cutoff_ms: int) -> list[str]:
    """Retention: whole chunks older than cutoff_ms go (drop_chunks), the readings' and the
    aggregate's alike, so buckets never outlive the readings they summarise. Returns the
    dropped readings chunks' names."""
    rows = c.execute(
        "SELECT CAST(drop_chunks('readings', older_than => CAST(? AS BIGINT)) AS TEXT)",
        [cutoff_ms],
    ).fetchall()
    c.execute(
        f"SELECT drop_chunks('{AGGREGATE}', older_than => CAST(? AS BIGINT))", [cutoff_ms]
    ).fetchall()
    return [r[0] for r in rows]
