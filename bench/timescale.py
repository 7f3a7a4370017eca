"""readings on TimescaleDB vs the native daily partitions, in one run on one private cluster that
preloads TimescaleDB (so the extension must be installed; see docs/decisions/
cloud-timescaledb.md): two fresh databases, one created with IOTSPHERE_TIMESCALEDB=off.

1. Drain: the in-process peer of bench/sync_drain.py (read a prefilled gateway store, build,
   encode, decode and apply each sync batch to the cloud store), N readings into each layout.
2. Query, for two shapes of N readings (SHAPES): seeded through the production insert path
   (40k per transaction), then the continuous aggregate refreshed, chunks older than 2 days
   (device time) compressed and VACUUM ANALYZE (what the policies and autovacuum do in
   service; their jobs are off here so the figures do not depend on when they ran); then the
   24 h bucketed query (5 min buckets) and the 24 h raw points of a random series, interleaved
   between the layouts, p50/p95; again with every chunk compressed.
3. Disk per million readings: readings (+ series) before and after compression, and the
   aggregate.

    .venv/bin/python bench/timescale.py [--readings 1000000] [--queries 300] [--smoke]

Where TimescaleDB is not installed (CI), only the native layout runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.support.http_timing import percentile  # noqa: E402
from bench.support.peer_drain import drain_backlog  # noqa: E402
from cloud.app.services import open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.storage.store import SqlCloudStore  # noqa: E402
from cloud.sync.store import SyncStore  # noqa: E402
from common.model import Reading  # noqa: E402
from edge.storage.store import Batch, GatewayStore  # noqa: E402
from tests.support.postgres import TIMESCALE, running_cluster, timescaledb_installed  # noqa: E402

DEVICES, METRICS, BATCH = 100, 10, 40_000
# The query phase's two shapes of N readings: (devices, metrics, ms between a series' readings).
# sparse is bench/cloud_api.py's seed (one reading per 5-minute bucket: nothing to aggregate),
# dense has 30 readings per bucket, what the aggregate is for.
SHAPES = {"sparse": (100, 10, 300_000), "dense": (10, 10, 10_000)}
DAY_MS = 86_400_000
T_END = 1_764_300_000_000  # the seeded readings end here (a multiple of 5 min)


def prefill(db: Path, n: int) -> float:
    """N readings in a gateway store as bench/sync_drain.py's prefill makes them (100 devices x
    10 metrics, one reading per second each); seconds taken."""
    rng = random.Random(7)
    began = time.perf_counter()
    store = GatewayStore(db)
    chunk: list[Reading] = []
    for i in range(n):
        ts = T_END + (i // (DEVICES * METRICS)) * 1000
        dev, metric = (i // METRICS) % DEVICES, i % METRICS
        chunk.append(Reading(f"dev-{dev:03d}", f"m{metric}", ts, rng.uniform(0, 40), ts + 3))
        if len(chunk) == 50_000 or i == n - 1:
            store.commit(Batch(readings=chunk))
            chunk = []
    store.close()
    return time.perf_counter() - began


async def drain(gw_db: Path, cloud: SqlCloudStore, batch: int) -> tuple[int, float]:
    """bench/sync_drain.py's in-process peer into `cloud`. (stored, seconds)"""
    now = int(time.time() * 1000)
    org = await cloud.ensure_org("peer", now)
    gw = await cloud.create_gateway(org.id, "peer", "no-token", now, now)
    began = time.perf_counter()
    done = await drain_backlog(SyncStore(cloud.db), org.id, gw.gateway_id, gw_db, batch, now)
    return done.stored, time.perf_counter() - began


def open_layout(url: str, timescale: bool) -> SqlCloudStore:
    os.environ["IOTSPHERE_TIMESCALEDB"] = "on" if timescale else "off"
    try:
        store = open_store(CloudSettings(data_dir=Path(tempfile.mkdtemp()), database_url=url))
    finally:
        os.environ.pop("IOTSPHERE_TIMESCALEDB", None)
    assert store.timescale == timescale
    return store


async def seed(store: SqlCloudStore, n: int, shape: str) -> tuple[str, float]:
    devices, metrics, step = SHAPES[shape]
    org = (await store.ensure_org("bench", T_END)).id
    per_series = n // (devices * metrics)
    start = T_END - per_series * step
    rng = random.Random(3)
    batch: list[Reading] = []
    began = time.perf_counter()
    for k in range(per_series):  # instant by instant, as gateways send them
        ts = start + k * step
        for d in range(devices):
            for m in range(metrics):
                batch.append(Reading(f"dev-{d:03d}", f"m{m}", ts, rng.uniform(0, 100), ts + 5))
                if len(batch) == BATCH:
                    await store.insert_readings(org, "gw", batch, ts)
                    batch = []
    if batch:
        await store.insert_readings(org, "gw", batch, T_END)
    return org, time.perf_counter() - began


def settle(url: str, timescale: bool) -> None:
    """What the policies and autovacuum would have done by now."""
    with psycopg.connect(url, autocommit=True) as c:
        if timescale:
            c.execute("CALL refresh_continuous_aggregate('readings_5m', NULL, NULL)")
        c.execute("VACUUM ANALYZE")


def compress(url: str, older_than: int) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT compress_chunk(c, if_not_compressed => true)"
            " FROM show_chunks('readings', older_than => %s) c",
            [older_than],
        ).fetchall()
        c.execute("VACUUM ANALYZE")
    return len(rows)


def size_mb_per_million(url: str, timescale: bool) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as c:
        n = c.execute("SELECT count(*) FROM readings").fetchone()[0]  # type: ignore[index]
        series = c.execute("SELECT pg_total_relation_size('series')").fetchone()[0]  # type: ignore[index]
        if timescale:
            total = c.execute("SELECT hypertable_size('readings')").fetchone()[0]  # type: ignore[index]
            agg = c.execute("SELECT hypertable_size('readings_5m')").fetchone()[0]  # type: ignore[index]
        else:
            total = c.execute(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('readings')"
                " WHERE isleaf"
            ).fetchone()[0]  # type: ignore[index]
            agg = 0
    per = max(int(n), 1) / 1e6
    return {
        "readings": round((int(total) + int(series)) / 1e6 / per, 1),
        "aggregate": round(int(agg) / 1e6 / per, 1),
    }


async def timed_queries(
    stores: dict[str, tuple[SqlCloudStore, str]], queries: int, n: int, shape: str
) -> dict[str, dict[str, float]]:
    devices, metrics, step = SHAPES[shape]
    per_series = n // (devices * metrics)
    expect_points = min(DAY_MS // step, per_series)
    expect = min(DAY_MS // 300_000, per_series * step // 300_000)
    rng = random.Random(11)
    times: dict[str, list[float]] = {f"{k} {q}": [] for k in stores for q in ("buckets", "points")}
    lo, hi = T_END - DAY_MS, T_END
    for i in range(queries):
        dev, metric = f"dev-{rng.randrange(devices):03d}", f"m{rng.randrange(metrics)}"
        order = list(stores.items()) if i % 2 == 0 else list(reversed(stores.items()))
        for name, (store, org) in order:
            t = time.perf_counter()
            b = await store.telemetry_buckets(org, dev, metric, lo, hi, 300_000, 1000)
            times[f"{name} buckets"].append((time.perf_counter() - t) * 1000)
            assert len(b) in (expect, expect + 1), len(b)  # a partial first bucket
            t = time.perf_counter()
            p = await store.telemetry_points(org, dev, metric, lo, hi, 10_000)
            times[f"{name} points"].append((time.perf_counter() - t) * 1000)
            assert len(p) == expect_points, len(p)
    out = {}
    for key, ms in times.items():
        ms.sort()
        out[key] = {"p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--batch", type=int, default=40_000, help="sync batch size of the drain")
    ap.add_argument(
        "--smoke", action="store_true", help="20k readings, 20 queries: runs, no figures"
    )
    args = ap.parse_args()
    if args.smoke:
        args.readings, args.queries = 20_000, 20
    installed = timescaledb_installed()
    # without the extension (CI) the native layout alone runs, so the bench cannot rot there
    layouts = {"native": False, **({"timescaledb": True} if installed else {})}
    if not installed:
        print("TimescaleDB is not installed: the native layout only, nothing to compare")
    result: dict[str, Any] = {"bench": "timescale", "readings": args.readings,
                              "timescaledb_installed": installed}  # fmt: skip
    with (
        running_cluster(settings=TIMESCALE if installed else None) as cluster,
        tempfile.TemporaryDirectory() as tmp,
    ):
        with psycopg.connect(cluster.url(), autocommit=True) as c:
            result["server"] = c.execute(
                "SELECT version(), (SELECT default_version FROM pg_available_extensions"
                " WHERE name = 'timescaledb')"
            ).fetchone()
        gw_db = Path(tmp) / "gateway.duckdb"
        result["prefill_s"] = round(prefill(gw_db, args.readings), 1)
        drains: dict[str, Any] = {}
        for round_ in ("", " 2"):  # interleaved, twice: the host's load drifts
            for name, ts in layouts.items():
                url = cluster.fresh_database()
                store = open_layout(url, ts)
                stored, secs = asyncio.run(drain(gw_db, store, args.batch))
                store.close()
                assert stored == args.readings, stored
                drains[name + round_] = {
                    "readings_per_s": round(stored / secs),
                    "seconds": round(secs, 2),
                }
                print(name + round_, "drain", drains[name + round_], flush=True)
                cluster.drop_database(url)
        result["drain"] = drains

        async def query_phase(shape: str) -> dict[str, Any]:
            out: dict[str, Any] = {}
            stores: dict[str, tuple[SqlCloudStore, str]] = {}
            urls: dict[str, str] = {}
            for name, ts in layouts.items():
                urls[name] = cluster.fresh_database()
                store = open_layout(urls[name], ts)
                org, secs = await seed(store, args.readings, shape)
                out[f"seed {name} readings_per_s"] = round(args.readings / secs)
                settle(urls[name], ts)
                stores[name] = (store, org)
            out["MB per M uncompressed"] = {
                k: size_mb_per_million(u, layouts[k]) for k, u in urls.items()
            }
            ts_url = urls.get("timescaledb")
            if ts_url is not None:
                out["compressed chunks (older than 2 days)"] = compress(ts_url, T_END - 2 * DAY_MS)
                out["MB per M, policy state"] = size_mb_per_million(ts_url, True)
            out["24h queries, policy state"] = await timed_queries(
                stores, args.queries, args.readings, shape
            )
            if ts_url is not None:
                out["compressed chunks (all)"] = compress(ts_url, T_END + DAY_MS)
                out["MB per M, all compressed"] = size_mb_per_million(ts_url, True)
                out["24h queries, all compressed"] = await timed_queries(
                    stores, args.queries, args.readings, shape
                )
            for store, _ in stores.values():
                store.close()
            for u in urls.values():
                cluster.drop_database(u)
            print(shape, json.dumps(out), flush=True)
            return out

        for shape in SHAPES:
            result[shape] = asyncio.run(query_phase(shape))
    print(json.dumps(result))  # the last line: the figures, for scripts
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
