"""How a batch of readings goes into PostgreSQL (cloud.storage.telemetry has what both engines
share), inside the caller's transaction:

1. the partitions of the batch's days are made sure of (cloud.storage.pg_partitions);
2. the batch is sent with binary COPY into a temp table (ON COMMIT DROP);
3. one statement inserts it into readings with ON CONFLICT DO NOTHING on the series index (a
   reading already stored, or repeated inside the batch, is skipped: the first copy wins) and,
   from the rows it really inserted (RETURNING), moves `latest` (newest value per series,
   DISTINCT ON; updated only by a newer one) and the devices' last_seen.

Rows go in sorted by series then time, so the rows of one series in one batch share a few
pages: a 24-hour query of one series reads a few pages per batch rather than one per reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

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
    "WITH ins AS ("
    " INSERT INTO readings (org_id, gateway_id, device_id, metric, ts, value_num, value_bool,"
    " value_str, gateway_received_at, cloud_received_at, flags, gateway_boot_id,"
    " gateway_mono_ms)"
    " SELECT ?, ?, device_id, metric, ts, value_num, value_bool, value_str,"
    " gateway_received_at, ?, flags, gateway_boot_id, gateway_mono_ms"
    " FROM incoming_readings ORDER BY device_id, metric, ts"
    " ON CONFLICT DO NOTHING"
    " RETURNING device_id, metric, ts, value_num, value_bool, value_str, gateway_received_at),"
    " dev AS ("
    " INSERT INTO devices (org_id, device_id, gateway_id, last_seen)"
    " SELECT ?, device_id, ?, max(coalesce(gateway_received_at, ts)) FROM ins"
    " GROUP BY device_id ORDER BY device_id"
    " ON CONFLICT (org_id, device_id) DO UPDATE SET gateway_id = excluded.gateway_id,"
    " last_seen = greatest(coalesce(devices.last_seen, 0), excluded.last_seen)),"
    " lat AS ("
    " INSERT INTO latest (org_id, device_id, metric, ts, value_num, value_bool, value_str)"
    " SELECT DISTINCT ON (device_id, metric) ?, device_id, metric, ts, value_num, value_bool,"
    " value_str FROM ins ORDER BY device_id, metric, ts DESC"
    " ON CONFLICT (org_id, device_id, metric) DO UPDATE SET ts = excluded.ts,"
    " value_num = excluded.value_num, value_bool = excluded.value_bool,"
    " value_str = excluded.value_str WHERE excluded.ts >= latest.ts)"
    " SELECT count(*) FROM ins"
)


def copy_readings(c: PgConn, batch: pa.Table, org_id: str, gateway_id: str, now_ms: int) -> int:
    """cloud.storage.telemetry.insert_readings_table on PostgreSQL. Returns how many were new."""
    ensure_partitions(c, days_of(batch.column("ts")))
    c.execute(
        "CREATE TEMP TABLE incoming_readings ("
        + ", ".join(f"{name} {kind}" for name, kind in _COLUMNS)
        + ") ON COMMIT DROP"
    )
    columns = [batch.column(name).to_pylist() for name, _ in _COLUMNS]
    with (
        c.raw.cursor() as cur,
        cur.copy(f"COPY incoming_readings ({_NAMES}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types([kind for _, kind in _COLUMNS])
        for row in zip(*columns, strict=True):
            copy.write_row(row)
    found = c.execute(_INSERT, [org_id, gateway_id, now_ms, org_id, gateway_id, org_id]).fetchall()
    return int(found[0][0])
