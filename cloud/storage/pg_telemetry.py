"""How a batch of readings goes into PostgreSQL (cloud.storage.telemetry has what both engines
share), inside the caller's transaction:

1. the partitions of the batch's days are made sure of (cloud.storage.pg_partitions);
2. the batch is sent with binary COPY into a temp table (ON COMMIT DROP);
3. one statement inserts the readings not stored yet (an anti-join on the series index) and,
   from the rows it really inserted (RETURNING), moves `latest` (newest value per series,
   DISTINCT ON; updated only by a newer one) and the devices' last_seen. If a reading repeats
   inside the batch, or another writer stored one meanwhile, that statement hits the unique
   index: it is undone (a savepoint) and done again with ON CONFLICT DO NOTHING, which skips
   them (the first copy wins) at a third more cost, so only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg.errors
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


def _insert(new_rows: str) -> str:
    """The statement that inserts the batch's readings (chosen by `new_rows`) and, from those
    it really inserted, moves `latest` and the devices' last_seen."""
    return (
        "WITH ins AS ("
        " INSERT INTO readings (org_id, gateway_id, device_id, metric, ts, value_num,"
        " value_bool, value_str, gateway_received_at, cloud_received_at, flags,"
        " gateway_boot_id, gateway_mono_ms)"
        " SELECT ?, ?, device_id, metric, ts, value_num, value_bool, value_str,"
        " gateway_received_at, ?, flags, gateway_boot_id, gateway_mono_ms"
        f" FROM incoming_readings b {new_rows}"
        " RETURNING device_id, metric, ts, value_num, value_bool, value_str,"
        " gateway_received_at),"
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


# The usual case: readings not stored yet (an anti-join probing the series index once per
# reading: a nested loop, see copy_readings), none repeated inside the batch (the gateway
# stores each once). A plain INSERT then: 58k readings/s into a day growing to 1M readings,
# where ON CONFLICT's speculative insertion made 45k (40k-reading batches, this 2-core box).
_INSERT_NEW = _insert(
    "WHERE NOT EXISTS (SELECT 1 FROM readings r WHERE r.org_id = ?"
    " AND r.device_id = b.device_id AND r.metric = b.metric AND r.ts = b.ts)"
)
# When that meets a duplicate (repeated inside the batch, or stored meanwhile by a writer not
# under this gateway's lock): every row through ON CONFLICT DO NOTHING, the first copy winning.
_INSERT_ANY = _insert("ORDER BY device_id, metric, ts ON CONFLICT DO NOTHING")


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
    try:
        with c.raw.transaction():  # a savepoint: a unique violation undoes only this try
            # Probes, not a hash of the org's whole day: the planner knows nothing of the temp
            # table and hashed every stored reading of the org (cost growing with the day).
            c.execute("SET LOCAL enable_hashjoin = off")
            c.execute("SET LOCAL enable_mergejoin = off")
            found = c.execute(
                _INSERT_NEW, [org_id, gateway_id, now_ms, org_id, org_id, gateway_id, org_id]
            ).fetchall()
            c.execute("RESET enable_hashjoin")
            c.execute("RESET enable_mergejoin")
    except psycopg.errors.UniqueViolation:
        found = c.execute(
            _INSERT_ANY, [org_id, gateway_id, now_ms, org_id, gateway_id, org_id]
        ).fetchall()
    return int(found[0][0])
