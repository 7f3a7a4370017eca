"""How a batch of readings goes into PostgreSQL (cloud.storage.telemetry has what both engines
share), inside the caller's transaction:

1. the partitions of the batch's days are made sure of (cloud.storage.pg_partitions);
2. the batch is sent with binary COPY into a temp table (ON COMMIT DROP);
3. the readings go into readings and move `latest` (newest value per series, DISTINCT ON;
   updated only by a newer one) and the devices' last_seen. When none of the batch's series
   has a stored reading in the batch's time range (one probe per series), a plain INSERT of
   every row, then `latest` and last_seen from the temp table; if the INSERT still meets the
   unique index (a reading repeated inside the batch, or stored meanwhile by another writer)
   it is undone (a savepoint). Then, as with an overlap, one statement inserts with ON
   CONFLICT DO NOTHING (the first copy wins) and moves `latest` from the rows it RETURNs.

Rows are sorted by series, then ts, before COPY: one series' readings of a batch share a few
heap pages, so a 24-hour query of one series reads tens of pages rather than one per reading
(see docs/decisions/cloud-postgres-readings.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc

from cloud.storage.pg_partitions import days_of, ensure_partitions

if TYPE_CHECKING:
    from cloud.storage.pg import PgConn

# The COPY columns, in READINGS_BATCH_SCHEMA's order, with their PostgreSQL types.
_COLUMNS = (
    ("device_id", "text"),
    ("metric", "text"),
    ("ts", "int8"),
    ("value_num", "float8"),
    ("value_bool", "bool"),
    ("value_str", "text"),
    ("gateway_received_at", "int8"),
    ("flags", "int2"),
    ("gateway_boot_id", "text"),
    ("gateway_mono_ms", "int8"),
)
_NAMES = ", ".join(name for name, _ in _COLUMNS)


_INSERT = (
    "INSERT INTO readings (org_id, gateway_id, device_id, metric, ts, value_num, value_bool,"
    " value_str, gateway_received_at, cloud_received_at, flags, gateway_boot_id,"
    " gateway_mono_ms)"
    " SELECT ?, ?, device_id, metric, ts, value_num, value_bool, value_str,"
    " gateway_received_at, ?, flags, gateway_boot_id, gateway_mono_ms FROM incoming_readings"
)


def _moving_latest(inserted: str) -> str:
    """A statement that moves `latest` and the devices' last_seen from the readings the CTE
    `ins` (SQL: `inserted`) gives, and counts them."""
    return (
        f"WITH ins AS ({inserted}),"
        " dev AS ("
        " INSERT INTO devices (org_id, device_id, gateway_id, last_seen)"
        " SELECT ?, device_id, ?, max(coalesce(gateway_received_at, ts)) FROM ins"
        " GROUP BY device_id ORDER BY device_id"
        " ON CONFLICT (org_id, device_id) DO UPDATE SET gateway_id = excluded.gateway_id,"
        " last_seen = greatest(coalesce(devices.last_seen, 0), excluded.last_seen)),"
        " lat AS ("
        " INSERT INTO latest (org_id, device_id, metric, ts, value_num, value_bool, value_str)"
        " SELECT DISTINCT ON (device_id, metric) ?, device_id, metric, ts, value_num,"
        " value_bool, value_str FROM ins ORDER BY device_id, metric, ts DESC"
        " ON CONFLICT (org_id, device_id, metric) DO UPDATE SET ts = excluded.ts,"
        " value_num = excluded.value_num, value_bool = excluded.value_bool,"
        " value_str = excluded.value_str WHERE excluded.ts >= latest.ts)"
        " SELECT count(*) FROM ins"
    )


_RETURNED = "device_id, metric, ts, value_num, value_bool, value_str, gateway_received_at"
# The usual case: no reading of the batch's series is stored yet in the batch's time range
# (_OVERLAP: one index probe per series, not per reading) and none repeats inside the batch
# (the gateway stores each once): a plain INSERT of every row, then `latest` and last_seen from
# the temp table. Statement time for 40k-reading batches into a growing day on this 2-core box
# (same run): plain INSERT 145k readings/s; with the latest/last_seen CTEs fed by RETURNING
# 94k; with ON CONFLICT DO NOTHING for every row about half the plain INSERT's rate.
_LATEST_OF_ALL = _moving_latest(f"SELECT {_RETURNED} FROM incoming_readings")
# Otherwise (a resend overlapping stored readings, a reading repeated inside the batch, or one
# stored meanwhile by a writer not under this gateway's lock): ON CONFLICT DO NOTHING skips
# them, the first copy winning, and only the rows really inserted move `latest`.
_INSERT_ANY = _moving_latest(f"{_INSERT} ON CONFLICT DO NOTHING RETURNING {_RETURNED}")
_OVERLAP = (
    "SELECT 1 FROM (SELECT DISTINCT device_id, metric FROM incoming_readings) s"
    " WHERE EXISTS (SELECT 1 FROM readings r WHERE r.org_id = ? AND r.device_id = s.device_id"
    " AND r.metric = s.metric AND r.ts BETWEEN ? AND ?) LIMIT 1"
)
# Sorted by series, then ts (stable: of two copies the first stays first) before COPY: rows go
# into readings in that order without a sort in the server (which cost a quarter of the
# INSERT), and one series' readings of a batch share a few heap pages.
_ORDER = [("device_id", "ascending"), ("metric", "ascending"), ("ts", "ascending")]


def copy_readings(c: PgConn, batch: pa.Table, org_id: str, gateway_id: str, now_ms: int) -> int:
    """cloud.storage.telemetry.insert_readings_table on PostgreSQL. Returns how many were new."""
    ts = batch.column("ts")
    ensure_partitions(c, days_of(ts))
    c.execute(
        "CREATE TEMP TABLE incoming_readings ("
        + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS)
        + ") ON COMMIT DROP"
    )
    ordered = batch.sort_by(_ORDER)
    columns = [ordered.column(name).to_pylist() for name, _ in _COLUMNS]
    with (
        c.raw.cursor() as cur,
        cur.copy(f"COPY incoming_readings ({_NAMES}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types([kind for _, kind in _COLUMNS])
        for row in zip(*columns, strict=True):
            copy.write_row(row)
    c.execute("SET LOCAL work_mem = '64MB'")  # the batch's sorts in memory (4 MB spilled)
    rows, latest = [org_id, gateway_id, now_ms], [org_id, gateway_id, org_id]
    overlap = c.execute(_OVERLAP, [org_id, pc.min(ts).as_py(), pc.max(ts).as_py()]).fetchall()
    if not overlap:
        try:
            with c.raw.transaction():  # a savepoint: a unique violation undoes only this try
                c.execute(_INSERT, rows)
        except psycopg.errors.UniqueViolation:
            pass
        else:
            return int(c.execute(_LATEST_OF_ALL, latest).fetchall()[0][0])
    return int(c.execute(_INSERT_ANY, rows + latest).fetchall()[0][0])
