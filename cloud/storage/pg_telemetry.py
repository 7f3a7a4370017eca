"""How a batch of readings goes into PostgreSQL (cloud.storage.telemetry has what both engines
share), inside the caller's transaction:

1. the partitions of the batch's days are made sure of (cloud.storage.pg_partitions);
2. the batch's series get their ids (`series`: new ones inserted, then all read back);
3. the usual case, when none of the batch's series has a stored reading in the batch's time
   range (one probe per series): the batch, each row with its series id, is binary-COPYed
   straight into readings, into its day's partition when it lies in one day (no staging table,
   no INSERT ... SELECT, no routing per row), then `latest` (newest value per series; updated
   only by a newer one) and the devices' last_seen move from the batch's newest rows. If the
   COPY meets the unique index (a reading repeated inside the batch, or stored meanwhile by
   another writer) it is undone (a savepoint) and the batch takes the other way:
4. otherwise, the batch is COPYed into a temp table (ON COMMIT DROP) and one statement inserts
   it with ON CONFLICT DO NOTHING (the first copy wins) and moves `latest` from the rows it
   RETURNs.

Rows are sorted by series, then ts, before COPY: one series' readings of a batch share a few
heap pages, so a 24-hour query of one series reads tens of pages rather than one per reading
(see docs/decisions/cloud-postgres-readings.md). Why COPY straight into the partition:
docs/decisions/cloud-postgres-drain.md (a quarter less server CPU per reading than staging).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc

from cloud.storage.pg_partitions import (
    DAY_MS,
    HIGH_MS,
    LOW_MS,
    days_of,
    ensure_partitions,
    partition_name,
)

if TYPE_CHECKING:
    from cloud.storage.pg import PgConn

# The COPY columns, in READINGS_BATCH_SCHEMA's order, with their PostgreSQL types.
_COLUMNS = (
    ("series_id", "int8"),
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
_NAMES = [name for name, _ in _COLUMNS]
# The fast path COPYs straight into readings (its day's partition): the values every row of a
# batch shares, then the COPY columns.
_DIRECT = (("org_id", "text"), ("gateway_id", "text"), ("cloud_received_at", "int8"), *_COLUMNS)


_INSERT = (
    "INSERT INTO readings (org_id, gateway_id, device_id, metric, ts, value_num, value_bool,"
    " value_str, gateway_received_at, cloud_received_at, flags, gateway_boot_id,"
    " gateway_mono_ms, series_id)"
    " SELECT ?, ?, device_id, metric, ts, value_num, value_bool, value_str,"
    " gateway_received_at, ?, flags, gateway_boot_id, gateway_mono_ms, series_id"
    " FROM incoming_readings"
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
# When every row went in: `latest` and last_seen from the newest row per series and the newest
# time per device, found in pyarrow on the sorted batch (hundreds of rows sent, not a sort and
# an aggregate of the whole batch in the server).
_LATEST_OF_NEWEST = (
    "WITH dev AS ("
    " INSERT INTO devices (org_id, device_id, gateway_id, last_seen)"
    " SELECT ?, d, ?, s FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[])) AS u (d, s)"
    " ORDER BY d"
    " ON CONFLICT (org_id, device_id) DO UPDATE SET gateway_id = excluded.gateway_id,"
    " last_seen = greatest(coalesce(devices.last_seen, 0), excluded.last_seen))"
    " INSERT INTO latest (org_id, device_id, metric, ts, value_num, value_bool, value_str)"
    " SELECT ?, d, m, t, n, b, s FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]),"
    " CAST(? AS BIGINT[]), CAST(? AS DOUBLE PRECISION[]), CAST(? AS BOOLEAN[]),"
    " CAST(? AS TEXT[])) AS u (d, m, t, n, b, s) ORDER BY d, m"
    " ON CONFLICT (org_id, device_id, metric) DO UPDATE SET ts = excluded.ts,"
    " value_num = excluded.value_num, value_bool = excluded.value_bool,"
    " value_str = excluded.value_str WHERE excluded.ts >= latest.ts"
)
# The usual case: no reading of the batch's series is stored yet in the batch's time range
# (_OVERLAP: one index probe per series, the series found in pyarrow) and none repeats inside
# the batch (the gateway stores each once): a binary COPY of every row straight into readings
# (its day's partition), then _LATEST_OF_NEWEST. PostgreSQL CPU per reading, 1 M readings in
# 40k batches: 4.1-4.5 us staged in a temp table then INSERT ... SELECT, 3.0-3.4 us COPYed
# straight in, 1.3 us for the same COPY into a table with no index (the ceiling); with ON
# CONFLICT DO NOTHING for every row the INSERT ran at about half its plain rate.
# Otherwise (a resend overlapping stored readings, a reading repeated inside the batch, or one
# stored meanwhile by a writer not under this gateway's lock): ON CONFLICT DO NOTHING skips
# them, the first copy winning, and only the rows it RETURNs move `latest`.
_INSERT_ANY = _moving_latest(f"{_INSERT} ON CONFLICT DO NOTHING RETURNING {_RETURNED}")
# A LATERAL with LIMIT: probes per series. (As EXISTS, the planner made it a hash semi join
# over the org's whole index range of the day: 23 ms and 1,600 buffers at 200k readings.)
_OVERLAP = (
    "SELECT 1 FROM unnest(CAST(? AS BIGINT[])) AS s (id), LATERAL (SELECT 1 FROM readings r"
    " WHERE r.series_id = s.id AND r.ts BETWEEN ? AND ? LIMIT 1) hit LIMIT 1"
)
# The batch's series get their ids: new ones inserted (sorted: concurrent writers lock in one
# order), then all read back in a second statement, whose snapshot sees a series another
# writer committed while the INSERT waited on it.
_NEW_SERIES = (
    "INSERT INTO series (org_id, device_id, metric) SELECT ?, d, m"
    " FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[])) AS u (d, m) ORDER BY d, m"
    " ON CONFLICT (org_id, device_id, metric) DO NOTHING"
)
_SERIES_IDS = (
    "SELECT s.device_id, s.metric, s.id FROM series s"
    " JOIN unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[])) AS u (d, m)"
    " ON s.device_id = u.d AND s.metric = u.m WHERE s.org_id = ?"
)
# Sorted by series, then ts (stable: of two copies the first stays first) before COPY: rows go
# into readings in that order without a sort in the server (which cost a quarter of the
# INSERT), and one series' readings of a batch share a few heap pages.
_ORDER = [("device_id", "ascending"), ("metric", "ascending"), ("ts", "ascending")]


def copy_readings(c: PgConn, batch: pa.Table, org_id: str, gateway_id: str, now_ms: int) -> int:
    """cloud.storage.telemetry.insert_readings_table on PostgreSQL. Returns how many were new."""
    ts = batch.column("ts")
    ensure_partitions(c, days_of(ts))
    ordered = batch.sort_by(_ORDER).combine_chunks()
    last = _last_of_series(ordered)
    series = [last.column("device_id").to_pylist(), last.column("metric").to_pylist()]
    ids = series_ids(c, org_id, series[0], series[1])
    span = [pc.min(ts).as_py(), pc.max(ts).as_py()]
    per_row = [org_id, gateway_id, now_ms]
    if not c.execute(_OVERLAP, [ids, *span]).fetchall():
        try:
            with c.raw.transaction():  # a savepoint: a unique violation undoes only this try
                _copy(c, _target(c, span), _DIRECT, per_row, ordered, ids, last)
        except psycopg.errors.UniqueViolation:
            pass
        else:
            c.execute(_LATEST_OF_NEWEST, _newest(ordered, last, org_id, gateway_id))
            return int(ordered.num_rows)
    c.execute(
        "CREATE TEMP TABLE incoming_readings ("
        + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS)
        + ") ON COMMIT DROP"
    )
    _copy(c, "incoming_readings", _COLUMNS, [], ordered, ids, last)
    c.execute("SET LOCAL work_mem = '64MB'")  # the batch's sorts in memory (4 MB spilled)
    params = [*per_row, org_id, gateway_id, org_id]
    return int(c.execute(_INSERT_ANY, params).fetchall()[0][0])


def _target(c: PgConn, span: list[int]) -> str:
    """Where the fast path COPYs: the day's partition when the whole batch lies in one day
    that has one (no routing of each row through the parent), else readings itself (a batch
    over midnight or outside 2000-2100; TimescaleDB's hypertable, which has no such tables)."""
    low, high = span
    if not (low >= LOW_MS and high < HIGH_MS and low // DAY_MS == high // DAY_MS):
        return "readings"
    name = partition_name(low // DAY_MS)
    found = c.execute("SELECT to_regclass(?) IS NOT NULL", [name]).fetchall()
    return name if found[0][0] else "readings"


def _copy(
    c: PgConn,
    table: str,
    columns: tuple[tuple[str, str], ...],
    per_row: list[object],
    ordered: pa.Table,
    ids: list[int],
    last: pa.Table,
) -> None:
    """Binary COPY of a sorted batch into `table`: `per_row` (the leading columns' values,
    the same for every row), each row's series id, then the batch's columns."""
    n = ordered.num_rows
    values = [
        *(itertools.repeat(v, n) for v in per_row),
        _repeat_per_series(ids, last),
        *(ordered.column(name).to_pylist() for name in _NAMES[1:]),
    ]
    names = ", ".join(name for name, _ in columns)
    with (
        c.raw.cursor() as cur,
        cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types([kind for _, kind in columns])
        for row in zip(*values, strict=True):
            copy.write_row(row)


def series_ids(c: PgConn, org_id: str, devices: list[str], metrics: list[str]) -> list[int]:
    """The ids of the series (devices[i], metrics[i]) of an org, in that order; created when
    new. Also used by `cloud copy` (cloud.app.copy_store)."""
    c.execute(_NEW_SERIES, [org_id, devices, metrics])
    found = c.execute(_SERIES_IDS, [devices, metrics, org_id]).fetchall()
    by_key = {(d, m): int(i) for d, m, i in found}
    return [by_key[(d, m)] for d, m in zip(devices, metrics, strict=True)]


def _repeat_per_series(ids: list[int], last: pa.Table) -> list[int]:
    """Each row's series id, for a batch sorted by series (`last`: the last row of each run,
    with its row number in `row`)."""
    ends = last.column("row").to_pylist()
    out: list[int] = []
    start = 0
    for series_id, end in zip(ids, ends, strict=True):
        out.extend([series_id] * (end + 1 - start))
        start = end + 1
    return out


def _last_of_series(ordered: pa.Table) -> pa.Table:
    """The last row of each (device, metric) run of a batch sorted by series then ts."""
    n = ordered.num_rows
    dev, met = ordered.column("device_id"), ordered.column("metric")
    next_differs = pc.or_(
        pc.not_equal(dev.slice(0, n - 1), dev.slice(1)),
        pc.not_equal(met.slice(0, n - 1), met.slice(1)),
    )
    numbered = ordered.append_column("row", pa.array(range(n), pa.int64()))
    return numbered.filter(pa.concat_arrays([next_differs.combine_chunks(), pa.array([True])]))


def _newest(ordered: pa.Table, last: pa.Table, org_id: str, gateway_id: str) -> list[object]:
    """_LATEST_OF_NEWEST's parameters, for a batch (sorted by series then ts) whose readings
    all went in: the last row of each series, each device's newest receive time (else ts)."""
    received = pc.coalesce(ordered.column("gateway_received_at"), ordered.column("ts"))
    seen = pa.table({"d": ordered.column("device_id"), "s": received})
    seen = seen.group_by("d").aggregate([("s", "max")])
    return [
        org_id,
        gateway_id,
        seen.column("d").to_pylist(),
        seen.column("s_max").to_pylist(),
        org_id,
        *(
            last.column(name).to_pylist()
            for name in ("device_id", "metric", "ts", "value_num", "value_bool", "value_str")
        ),
    ]
