"""Devices and telemetry of the cloud store (TelemetryQueries, one of the query groups
SqlCloudStore is made of), on either engine, and insert_readings_table, which the sync store
calls inside its batch transaction.

What the engines share is written here once: the device list (only its JSON aggregate differs),
the raw points and the epoch-aligned buckets. How a batch of readings goes in differs and lives
in a module per engine: cloud.storage.duck_telemetry (an anti-join against the batch's time
range, pyarrow registered as a view) and cloud.storage.pg_telemetry (binary COPY straight into
the day's partition; a temp table and INSERT ... ON CONFLICT DO NOTHING only when the batch
meets stored rows). Both keep the newest value per
(device, metric) in `latest`, so the dashboard never scans readings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from cloud.storage.device_json import device_list_json
from cloud.storage.device_query import DevicePage, DeviceQuery, device_page
from cloud.storage.duck_telemetry import insert_duck_readings
from cloud.storage.interface import Bucket, DeviceInfo, Point
from cloud.storage.pg_timescale import BUCKETS as TIMESCALE_BUCKETS
from cloud.storage.pg_timescale import buckets_params, uses_aggregate
from cloud.storage.sql import Dialect, SqlConn, SqlDatabase
from cloud.storage.value_columns import join_value, split_value
from common.model import Reading

READINGS_BATCH_SCHEMA = pa.schema(
    [
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("ts", pa.int64()),
        ("value_num", pa.float64()),
        ("value_bool", pa.bool_()),
        ("value_str", pa.string()),
        ("gateway_received_at", pa.int64()),
        ("flags", pa.uint8()),
        ("gateway_boot_id", pa.string()),
        ("gateway_mono_ms", pa.int64()),
    ]
)

# One series' readings: on PostgreSQL readings is keyed by series id (cloud.storage.pg_schema),
# looked up first (one index probe); the parameters are the same on both engines.
_SERIES = {
    "duckdb": "org_id = ? AND device_id = ? AND metric = ?",
    "postgresql": "series_id = (SELECT id FROM series WHERE org_id = ? AND device_id = ?"
    " AND metric = ?)",
}
# The latest values of one device as one JSON object, aggregated in the database: the joined
# form (one row per device and metric) cost ~30 ms per 10k rows to bring into Python (DuckDB).
_LATEST_JSON = {
    "duckdb": "json_group_object(metric, coalesce("
    "to_json(value_num), to_json(value_bool), to_json(value_str)))",
    "postgresql": "CAST(json_object_agg(metric, coalesce("
    "to_json(value_num), to_json(value_bool), to_json(value_str))) AS TEXT)",
}


def insert_readings_table(
    c: Any, dialect: Dialect, batch: pa.Table, org_id: str, gateway_id: str, now_ms: int
) -> int:
    """Insert readings (a READINGS_BATCH_SCHEMA table) once per (device, metric, ts) on a
    connection the caller holds inside its transaction (a sync batch is applied whole); also
    `latest` and the devices' last_seen. Returns how many were new."""
    if batch.num_rows == 0:
        return 0
    if dialect == "postgresql":
        from cloud.storage.pg_telemetry import copy_readings  # psycopg: an optional extra

        return copy_readings(c, batch, org_id, gateway_id, now_ms)
    return insert_duck_readings(c, batch, org_id, gateway_id, now_ms)


def readings_table(readings: Sequence[Reading]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in READINGS_BATCH_SCHEMA.names}
    for r in readings:
        num, flag, text = split_value(r.value)
        cols["device_id"].append(r.device_id)
        cols["metric"].append(r.metric)
        cols["ts"].append(r.ts)
        cols["value_num"].append(num)
        cols["value_bool"].append(flag)
        cols["value_str"].append(text)
        cols["gateway_received_at"].append(r.received_at)
        cols["flags"].append(int(r.flags))
        cols["gateway_boot_id"].append(None)
        cols["gateway_mono_ms"].append(None)
    return pa.table(cols, schema=READINGS_BATCH_SCHEMA)


class TelemetryQueries:
    db: SqlDatabase  # set by SqlCloudStore
    timescale: bool = False  # readings are a TimescaleDB hypertable (cloud.storage.pg_timescale)

    async def list_devices(self, org_id: str) -> list[DeviceInfo]:
        return await self.db.run(lambda c: self._devices(c, org_id, None))

    async def device_list_json(self, org_id: str, now_ms: int, online_threshold_s: float) -> str:
        return await self.db.run(lambda c: device_list_json(c, org_id, now_ms, online_threshold_s))

    async def device_page(self, org_id: str, query: DeviceQuery) -> DevicePage:
        latest_json = _LATEST_JSON[self.db.dialect]
        return await self.db.run(lambda c: device_page(c, latest_json, org_id, query))

    async def get_device(self, org_id: str, device_id: str) -> DeviceInfo | None:
        found = await self.db.run(lambda c: self._devices(c, org_id, device_id))
        return found[0] if found else None

    def _devices(self, c: SqlConn, org_id: str, device_id: str | None) -> list[DeviceInfo]:
        dev_filter, params = "", [org_id, org_id]
        if device_id is not None:
            dev_filter = " AND d.device_id = ?"
            params.append(device_id)
        rows = c.execute(
            "SELECT d.device_id, d.gateway_id, d.type, d.last_seen, l.latest FROM devices d"
            f" LEFT JOIN (SELECT device_id, {_LATEST_JSON[self.db.dialect]} AS latest"
            "  FROM latest WHERE org_id = ? GROUP BY device_id) l USING (device_id)"
            f" WHERE d.org_id = ?{dev_filter} ORDER BY d.device_id",
            params,
        ).fetchall()
        return [DeviceInfo(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else {}) for r in rows]

    async def upsert_device(
        self, org_id: str, device_id: str, gateway_id: str | None, device_type: str | None
    ) -> None:
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO devices (org_id, device_id, gateway_id, type) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (org_id, device_id) DO UPDATE SET"
                " gateway_id = coalesce(excluded.gateway_id, devices.gateway_id),"
                " type = coalesce(excluded.type, devices.type)",
                [org_id, device_id, gateway_id, device_type],
            )
        )

    async def insert_readings(
        self, org_id: str, gateway_id: str, readings: Sequence[Reading], now_ms: int
    ) -> int:
        if not readings:
            return 0
        batch = readings_table(readings)
        dialect = self.db.dialect
        return await self.db.run(
            self.db.transaction(
                lambda c: insert_readings_table(c, dialect, batch, org_id, gateway_id, now_ms)
            )
        )

    async def telemetry_points(
        self, org_id: str, device_id: str, metric: str, from_ms: int, to_ms: int, limit: int
    ) -> list[Point]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT ts, value_num, value_bool, value_str, flags FROM readings"
                f" WHERE {_SERIES[self.db.dialect]} AND ts >= ? AND ts < ?"
                " ORDER BY ts LIMIT ?",
                [org_id, device_id, metric, from_ms, to_ms, limit],
            ).fetchall()
        )
        points = []
        for ts, num, flag, text, flags in rows:
            value = join_value(num, flag, text)
            if value is not None:
                points.append(Point(ts, value, int(flags)))
        return points

    async def telemetry_buckets(
        self,
        org_id: str,
        device_id: str,
        metric: str,
        from_ms: int,
        to_ms: int,
        bucket_ms: int,
        limit: int,
    ) -> list[Bucket]:
        if self.timescale and uses_aggregate(bucket_ms):  # the continuous aggregate
            params = buckets_params(org_id, device_id, metric, from_ms, to_ms, bucket_ms, limit)
            rows = await self.db.run(lambda c: c.execute(TIMESCALE_BUCKETS, params).fetchall())
            return [Bucket(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]
        # Aligned to the epoch as time_bucket is: ts minus its floored remainder, in integers
        # (the same on both engines, whose `/` differ; also right for ts before 1970).
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT ts - ((ts % ?) + ?) % ? AS bucket, min(v), max(v), avg(v), count(*)"
                " FROM (SELECT ts, coalesce(value_num,"
                " CAST(CAST(value_bool AS INTEGER) AS DOUBLE PRECISION)) AS v FROM readings"
                f" WHERE {_SERIES[self.db.dialect]} AND ts >= ? AND ts < ?) r"
                " GROUP BY bucket ORDER BY bucket LIMIT ?",
                [bucket_ms, bucket_ms, bucket_ms, org_id, device_id, metric, from_ms, to_ms, limit],
            ).fetchall()
        )
        return [Bucket(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows]
