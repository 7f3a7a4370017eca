"""How a batch of readings goes into DuckDB (cloud.storage.telemetry has what both engines
share). Dedup is an anti-join limited to the batch's time range, and queries rely on DuckDB's
per-row-group min/max (zonemaps) on ts: sync batches arrive roughly in time order, so a 24-hour
query touches only the row groups of that day. DuckDB keeps no index on readings (an ART index
made its file ~10x larger)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cloud.storage.sql import first


def insert_duck_readings(
    c: duckdb.DuckDBPyConnection, batch: pa.Table, org_id: str, gateway_id: str, now_ms: int
) -> int:
    """cloud.storage.telemetry.insert_readings_table on DuckDB: the batch is registered as a
    view of the pyarrow table (no copy)."""
    ts = batch.column("ts")
    lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
    c.register("incoming_batch", batch)
    try:
        return _insert_new_readings(c, org_id, gateway_id, lo, hi, now_ms)
    finally:
        c.unregister("incoming_batch")


def _insert_new_readings(
    c: duckdb.DuckDBPyConnection, org_id: str, gateway_id: str, lo: int, hi: int, now: int
) -> int:
    # the first copy wins inside a batch, the stored copy wins across batches
    c.execute(
        "CREATE OR REPLACE TEMP TABLE new_readings AS"
        " SELECT * FROM (SELECT DISTINCT ON (device_id, metric, ts) * FROM incoming_batch) b"
        " WHERE NOT EXISTS (SELECT 1 FROM readings r WHERE r.org_id = ?"
        " AND r.ts BETWEEN ? AND ? AND r.device_id = b.device_id"
        " AND r.metric = b.metric AND r.ts = b.ts)",
        [org_id, lo, hi],
    )
    row = first(c.execute("SELECT count(*) FROM new_readings").fetchall())
    inserted = int(row[0]) if row else 0
    if inserted == 0:
        return 0
    c.execute(
        "INSERT INTO readings (org_id, gateway_id, device_id, metric, ts, value_num,"
        " value_bool, value_str, gateway_received_at, cloud_received_at, flags,"
        " gateway_boot_id, gateway_mono_ms) SELECT ?, ?, device_id, metric, ts, value_num,"
        " value_bool, value_str, gateway_received_at, ?, flags, gateway_boot_id,"
        " gateway_mono_ms FROM new_readings ORDER BY ts",
        [org_id, gateway_id, now],
    )
    c.execute(
        "INSERT INTO devices (org_id, device_id, gateway_id, last_seen)"
        " SELECT ?, device_id, ?, max(coalesce(gateway_received_at, ts)) FROM new_readings"
        " GROUP BY device_id ON CONFLICT (org_id, device_id) DO UPDATE SET"
        " gateway_id = excluded.gateway_id,"
        " last_seen = greatest(coalesce(devices.last_seen, 0), excluded.last_seen)",
        [org_id, gateway_id],
    )
    c.execute(
        "INSERT INTO latest SELECT ?, device_id, metric, max(ts),"
        " arg_max(value_num, ts), arg_max(value_bool, ts), arg_max(value_str, ts)"
        " FROM new_readings GROUP BY device_id, metric"
        " ON CONFLICT (org_id, device_id, metric) DO UPDATE SET ts = excluded.ts,"
        " value_num = excluded.value_num, value_bool = excluded.value_bool,"
        " value_str = excluded.value_str WHERE excluded.ts >= latest.ts",
        [org_id],
    )
    c.execute("DROP TABLE new_readings")
    return inserted
