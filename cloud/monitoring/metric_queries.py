"""The monitoring store's metrics from ML models and jobs (MetricQueries, one of the query
groups MonitoringStore is made of): each (source, metric, ts) stored once, the first copy
winning inside a request and the stored copy across requests; points for a chart, and the
series list the dashboard's models page shows.

Bulk insert per engine: DuckDB scans a registered Arrow table; PostgreSQL unnests arrays (one
statement, one round trip) under a per-org advisory lock, so an org's metrics commit in `seq`
order and the monitoring loop's `seq > cursor` never skips one committed late by another
worker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from cloud.monitoring.ingest import MetricPoint
from cloud.monitoring.records import MetricSeries
from cloud.storage.sql import SqlConn, SqlDatabase, first
from cloud.storage.value_columns import join_value
from common.model import Value

_METRICS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("metric", pa.string()),
        ("ts", pa.int64()),
        ("value_num", pa.float64()),
        ("value_bool", pa.bool_()),
    ]
)


# pg_advisory_xact_lock(METRICS_LOCK, hashtext(org)): one org's metric inserts take turns.
METRICS_LOCK = 0x4D4554  # "MET"; the two-key space, apart from single-key locks


def _split(value: MetricPoint) -> tuple[float | None, bool | None]:
    if isinstance(value.value, bool):
        return None, value.value
    return float(value.value), None


def _columns(points: Sequence[MetricPoint]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {n: [] for n in _METRICS_SCHEMA.names}
    for p in points:
        num, flag = _split(p)
        cols["source"].append(p.source)
        cols["metric"].append(p.metric)
        cols["ts"].append(p.ts)
        cols["value_num"].append(num)
        cols["value_bool"].append(flag)
    return cols


def _insert_pg(c: SqlConn, org_id: str, points: Sequence[MetricPoint], now_ms: int) -> int:
    """The first copy of each (source, metric, ts) in the request (by position), unless stored;
    seq assigned in ts order. Returns how many were new."""
    c.execute(f"SELECT pg_advisory_xact_lock({METRICS_LOCK}, hashtext(?))", [org_id])
    cols = _columns(points)
    rows = c.execute(
        "INSERT INTO metrics (org_id, source, metric, ts, value_num, value_bool, received_at)"
        " SELECT ?, source, metric, ts, value_num, value_bool, ? FROM ("
        " SELECT DISTINCT ON (source, metric, ts) * FROM"
        " unnest(?::text[], ?::text[], ?::bigint[], ?::float8[], ?::boolean[])"
        " WITH ORDINALITY AS p(source, metric, ts, value_num, value_bool, n)"
        " ORDER BY source, metric, ts, n) AS firsts"
        " ORDER BY ts ON CONFLICT DO NOTHING RETURNING seq",
        [org_id, now_ms, *(cols[n] for n in _METRICS_SCHEMA.names)],
    ).fetchall()
    return len(rows)


_SERIES = {
    "duckdb": "SELECT source, metric, count(*), max(ts), arg_max(value_num, ts),"
    " arg_max(value_bool, ts) FROM metrics WHERE org_id = ? GROUP BY source, metric"
    " ORDER BY source, metric",
    "postgresql": "SELECT DISTINCT ON (source, metric) source, metric, count(*) OVER w,"
    " max(ts) OVER w, value_num, value_bool FROM metrics WHERE org_id = ?"
    " WINDOW w AS (PARTITION BY source, metric) ORDER BY source, metric, ts DESC",
}


class MetricQueries:
    db: SqlDatabase  # set by MonitoringStore

    async def insert_metrics(self, org_id: str, points: Sequence[MetricPoint], now_ms: int) -> int:
        """Store each (source, metric, ts) once; returns how many were new."""
        if not points:
            return 0
        if self.db.dialect == "postgresql":
            return await self.db.run(
                self.db.transaction(lambda c: _insert_pg(c, org_id, points, now_ms))
            )
        batch = pa.table(_columns(points), schema=_METRICS_SCHEMA)

        def go(c: duckdb.DuckDBPyConnection) -> int:
            c.register("incoming_metrics", batch)
            try:
                before = first(c.execute("SELECT count(*) FROM metrics").fetchall())[0]
                # first copy wins inside the request, the stored copy across requests
                c.execute(
                    "INSERT INTO metrics (org_id, source, metric, ts, value_num, value_bool,"
                    " received_at) SELECT ?, source, metric, ts, value_num, value_bool, ? FROM"
                    " (SELECT DISTINCT ON (source, metric, ts) * FROM incoming_metrics)"
                    " ORDER BY ts ON CONFLICT DO NOTHING",
                    [org_id, now_ms],
                )
                after = first(c.execute("SELECT count(*) FROM metrics").fetchall())[0]
                return int(after) - int(before)
            finally:
                c.unregister("incoming_metrics")

        return await self.db.run(self.db.transaction(go))

    async def metric_points(
        self, org_id: str, source: str, metric: str, from_ms: int, to_ms: int, limit: int
    ) -> list[tuple[int, Value]]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT ts, value_num, value_bool FROM metrics WHERE org_id = ? AND source = ?"
                " AND metric = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
                [org_id, source, metric, from_ms, to_ms, limit],
            ).fetchall()
        )
        out: list[tuple[int, Value]] = []
        for ts, num, flag in rows:
            value = join_value(num, flag)
            if value is not None:
                out.append((int(ts), value))
        return out

    async def metric_series(self, org_id: str) -> list[MetricSeries]:
        """Every (source, metric) the org has values for, with its newest value: what the
        dashboard's models page lists."""
        rows = await self.db.run(lambda c: c.execute(_SERIES[self.db.dialect], [org_id]).fetchall())
        return [
            MetricSeries(str(s), str(m), int(n), int(ts), join_value(num, flag))
            for s, m, n, ts, num, flag in rows
        ]
