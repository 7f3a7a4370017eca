"""Cloud API benchmark: the dashboard and bucketed telemetry over a large DuckDB store.

    .venv/bin/python bench/cloud_api.py [--readings N] [--devices D] [--smoke]
        [--database postgresql://USER@HOST:PORT/DB | --private-postgres]

1. Seed    a fresh data dir through the store's own code, so a schema change cannot break it:
           an org, an admin user, one gateway, the D devices and a few open alerts through
           SqlCloudStore's methods, then N readings for D devices x --metrics metrics through
           insert_readings_table, the function a gateway's sync batch is applied with (which
           also writes `devices.last_seen` and `latest`), 40,000 readings per transaction.
           Readings are ts-major (all series of one instant together), as gateway sync
           batches arrive, one per series every --interval-s seconds, ending now.
2. Serve   `iotsphere cloud serve` as a subprocess on a free 127.0.0.1 port.
           --database URL: the store is that PostgreSQL database instead (fresh and empty: the
           seed creates the org and its user), seeded the same way and served with
           IOTSPHERE_DATABASE_URL set; --private-postgres: a throwaway cluster for the run.
3. Measure over HTTP with httpx after logging in (one bearer token for every client):
           0. GET /healthz, one client, then --clients clients: the floor, a request that
              touches neither the store nor auth, measured in the same run as the others
           a. GET /api/dashboard, one client, sequential: p50/p95
           b. GET /api/devices/{id}/telemetry?metric=..&bucket=5m over 24 hours ending at the
              newest reading, one client, sequential, rotating over devices and metrics
           c. the overview as the page asks for it: GET /api/dashboard?limit=50&offset=..,
              one client, sequential, rotating over the pages: p50/p95
           d. the same pages with --clients concurrent clients: requests/s, p50/p95. The
              clients ask for different pages at once (request i asks page i mod pages), as
              users on different pages do: identical concurrent requests would share one
              answer in the server (cloud/api/dashboard.py's single flight) and measure that
           Each figure: --warmup requests not measured, then a fixed number measured. Each
           is also given against the floor (p50 as a multiple, requests/s as a share): on a
           shared machine those ratios drift less than the absolute figures.

Defaults are the issue's figures (10 million readings, 1,000 devices x 10 metrics), which
take a few minutes on a 2-core machine, mostly seeding; --smoke takes seconds (tiny sizes, the
same code path). The client shares the machine with the server: its CPU share is printed.
Targets are printed as met / MISSED for information only; this is a measurement, not a test,
and exits 0 when the measurement worked.
Output: human lines, then one final JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

# The server, the request timing and the report are in bench/support/ (cloud_server, http_timing,
# cloud_api_report); this script seeds the store, measures the API and puts the figures together.
from bench.support import BenchError, run_benchmark  # noqa: E402
from bench.support.cloud_api_report import brief, ratios, report, summarise, targets  # noqa: E402
from bench.support.cloud_server import start_server  # noqa: E402
from bench.support.loadgen import LoadGenerator  # noqa: E402
from bench.support.pg_bench import database, readings_size  # noqa: E402
from cloud.app.services import open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.security.auth import hash_password  # noqa: E402
from cloud.storage.db import Database  # noqa: E402
from cloud.storage.errors import StoreError  # noqa: E402
from cloud.storage.interface import NewAlert, Role  # noqa: E402
from cloud.storage.store import SqlCloudStore  # noqa: E402
from cloud.storage.telemetry import (  # noqa: E402
    READINGS_BATCH_SCHEMA,
    insert_readings_table,
)

EMAIL = "bench@example.com"
PASSWORD = "bench-password-not-secret"
ORG = "bench"
DAY_MS = 86_400_000
BUCKET = "5m"
BUCKET_MS = 300_000
OVERVIEW_PAGE = 50  # cloud/web/static/js/pages/overview.js PAGE_SIZE
REQUEST_TIMEOUT_S = 120.0
SEED_BATCH_READINGS = 40_000  # readings per seeding transaction: the gateway's sync batch


@dataclass(frozen=True, slots=True)
class Settings:
    readings: int
    devices: int
    metrics: int
    interval_s: int
    requests: int  # measured requests for each sequential latency figure
    concurrent_requests: int  # measured requests for the throughput figure, in all
    clients: int
    warmup: int
    alerts: int
    keep: bool
    database: str | None = None
    private_postgres: bool = False
    workers: tuple[int, ...] = (1, 2)  # PostgreSQL servers measured: one per worker count
    duckdb_beside: bool = True  # with PostgreSQL, also seed and measure DuckDB in the run
    rounds: int = 3  # sessions of each target, interleaved
    compare_tree: Path | None = None  # another checkout serving the same stores (before/after)

    @property
    def per_series(self) -> int:
        return self.readings // (self.devices * self.metrics)

    @property
    def stored(self) -> int:
        return self.per_series * self.devices * self.metrics


@dataclass(frozen=True, slots=True)
class Seeded:
    newest_ms: int  # ts of the newest readings (one per series)
    seconds: float
    db_mb: float


def device_id(i: int) -> str:
    return f"dev-{i:05d}"


def metric_name(i: int) -> str:
    return f"m{i}"


# --------------------------------------------------------------------------- seeding


def _interruptible(store: SqlCloudStore, fn: Callable[[Any], object]) -> None:
    """store.db.run_sync(fn) in a thread: a long DuckDB statement only notices Ctrl-C
    (KeyboardInterrupt in the main thread) when asked through connection.interrupt()."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            store.db.run_sync(fn)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="seed", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        if isinstance(store.db, Database):  # PostgreSQL: the statement ends with its session
            store.db.current_connection().interrupt()
        worker.join()
        raise
    if failure:
        raise failure[0]


def _series_columns(s: Settings) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Device, metric and a per-series float (the phase of its sine) for one instant's rows,
    series-major: device 0's metrics, then device 1's, as a gateway batch lists them."""
    n = s.devices * s.metrics
    devices = pa.array([device_id(k // s.metrics) for k in range(n)], pa.string())
    metrics = pa.array([metric_name(k % s.metrics) for k in range(n)], pa.string())
    phase = pa.array([float(k) for k in range(n)], pa.float64())
    return devices, metrics, phase


def _readings_table(
    s: Settings, series: tuple[pa.Array, pa.Array, pa.Array], first_step: int, steps: int,
    first_ms: int, interval_ms: int,
) -> pa.Table:  # fmt: skip
    """`steps` instants of every series as one READINGS_BATCH_SCHEMA table (what a sync batch
    becomes), ts-major; values 20 + 5 sin(step / 12 + series) + noise, rounded to 0.001.
    Columns the bench does not know (the schema grew) are null."""
    devices, metrics, phase = series
    per_step = len(devices)
    cols: dict[str, list[pa.Array]] = {
        "device_id": [], "metric": [], "ts": [], "value_num": [], "gateway_received_at": [],
        "flags": [],
    }  # fmt: skip
    for step in range(first_step, first_step + steps):
        ts = first_ms + step * interval_ms
        wave = pc.multiply(pc.sin(pc.add(phase, step / 12.0)), 5.0)
        noisy = pc.add(pc.add(wave, 20.0), pc.random(per_step))
        cols["device_id"].append(devices)
        cols["metric"].append(metrics)
        cols["ts"].append(pa.repeat(pa.scalar(ts, pa.int64()), per_step))
        cols["value_num"].append(pc.round(noisy, 3))
        cols["gateway_received_at"].append(pa.repeat(pa.scalar(ts + 40, pa.int64()), per_step))
        cols["flags"].append(pa.repeat(pa.scalar(0, pa.uint8()), per_step))
    n = per_step * steps
    arrays = [
        pa.chunked_array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
        for f in READINGS_BATCH_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=READINGS_BATCH_SCHEMA)


def seed(data_dir: Path, s: Settings, url: str | None = None) -> Seeded:
    """Fill a fresh cloud store in data_dir; the server is not running yet (one writer).

    Everything goes through the store's own code, so a schema change cannot break the seed:
    accounts, gateway, devices and alerts through SqlCloudStore's methods, the readings
    through insert_readings_table, the function a gateway's sync batch is applied with
    (dedup, `devices.last_seen` and `latest` included), SEED_BATCH_READINGS per transaction.
    """
    started = time.monotonic()
    settings = CloudSettings(data_dir=data_dir, database_url=url)
    now = int(time.time() * 1000)
    interval_ms = s.interval_s * 1000
    # The newest instant is now, to the second: the devices stay "online" (heard from within
    # the cloud's online_threshold_s, 300 s) while measured. It was the interval boundary
    # before now, up to 300 s older, and with a minute of seeding all 1,000 were offline.
    last_step_ms = now // 1000 * 1000
    first_ms = last_step_ms - (s.per_series - 1) * interval_ms
    store = open_store(settings)
    try:

        async def accounts() -> tuple[str, str]:
            org = await store.ensure_org(ORG, now)
            await store.create_user(EMAIL, hash_password(PASSWORD), Role.ADMIN, org.id, now)
            gw = await store.create_gateway(org.id, "bench-gw", "not-a-token-hash", now, now)
            for d in range(s.devices):
                await store.upsert_device(org.id, device_id(d), gw.gateway_id, "sensor")
            for i in range(s.alerts):
                dev = device_id(i * max(1, s.devices // max(1, s.alerts)) % s.devices)
                await store.create_alert(
                    org.id,
                    NewAlert(
                        rule_id=None,
                        severity="warning",
                        metric=metric_name(i % s.metrics),
                        value=99.5,
                        started_at=now - i * 60_000,
                        device_id=dev,
                    ),
                )
            return org.id, gw.gateway_id

        org_id, gw_id = asyncio.run(accounts())
        dialect = store.db.dialect
        series = _series_columns(s)
        steps_per_batch = max(1, SEED_BATCH_READINGS // len(series[0]))
        stored = 0
        for first_step in range(0, s.per_series, steps_per_batch):
            steps = min(steps_per_batch, s.per_series - first_step)
            table = _readings_table(s, series, first_step, steps, first_ms, interval_ms)
            arrived = first_ms + (first_step + steps - 1) * interval_ms + 900

            def apply(c: Any, table: pa.Table = table, arrived: int = arrived) -> None:
                nonlocal stored
                stored += insert_readings_table(c, dialect, table, org_id, gw_id, arrived)

            _interruptible(store, store.db.transaction(apply))
        if stored != s.stored:
            raise BenchError(f"the store took {stored:,} of {s.stored:,} seeded readings")
        if url is None:
            # Compact the WAL into the file now, so the server starts on a checkpointed store.
            _interruptible(store, lambda c: c.execute("CHECKPOINT"))
    except StoreError as exc:
        raise BenchError(f"seeding failed: {exc}") from exc
    finally:
        store.close()
    if url is not None:  # readings' partitions with their indexes (after VACUUM ANALYZE)
        size = readings_size(url)
        mb = (size["table_bytes"] + size["index_bytes"]) / 1e6
    else:
        mb = settings.db_path.stat().st_size / 1e6
    return Seeded(last_step_ms, time.monotonic() - started, round(mb, 1))


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Target:
    """One way of serving the same readings: the embedded DuckDB store, or PostgreSQL with N
    worker processes."""

    name: str  # "duckdb", "postgresql_1w", ...
    data_dir: Path
    seeded: Seeded
    url: str | None = None
    workers: int = 1
    root: Path = ROOT  # the checkout whose code serves (--compare-tree: another one's too)


def postmaster_pid(url: str) -> int | None:
    """The local PostgreSQL server's pid (its postmaster.pid), to count its CPU; None when
    the server is elsewhere or the file cannot be read."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        if row is None:
            return None
        pid = int((Path(str(row[0])) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (psycopg.Error, OSError, ValueError, TypeError):
        return None
    return pid if psutil.pid_exists(pid) else None


# The 24 h bucketed query as TelemetryQueries.telemetry_buckets sends it to PostgreSQL, for its
# plan (the store builds it inline; kept in step by hand).
BUCKETS_SQL = (
    "SELECT ts - ((ts % ?) + ?) % ? AS bucket, min(v), max(v), avg(v), count(*)"
    " FROM (SELECT ts, coalesce(value_num,"
    " CAST(CAST(value_bool AS INTEGER) AS DOUBLE PRECISION)) AS v FROM readings"
    " WHERE series_id = (SELECT id FROM series WHERE org_id = ? AND device_id = ?"
    " AND metric = ?) AND ts >= ? AND ts < ?) r"
    " GROUP BY bucket ORDER BY bucket LIMIT ?"
)


def analyze(url: str) -> None:
    """ANALYZE every table once seeded: the planner's statistics as autovacuum keeps them in
    service (right after a bulk load `latest` still looks empty to it)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def explain(url: str, s: Settings, seeded: Seeded) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the dashboard's device list and of the 24 h bucketed
    query over one series, on the seeded PostgreSQL store (warm: after the rounds)."""
    import psycopg

    from cloud.storage.pg import to_pg

    hi = (seeded.newest_ms // BUCKET_MS + 1) * BUCKET_MS
    queries: dict[str, tuple[str, list[Any]]] = {
        "buckets_24h": (BUCKETS_SQL, [BUCKET_MS, BUCKET_MS, BUCKET_MS, "ORG", device_id(0),
                                      metric_name(0), hi - DAY_MS, hi, 10_000]),
    }  # fmt: skip
    try:  # the device list as the database writes it (absent from older checkouts)
        from cloud.storage.device_json import DEVICE_LIST_SQL, online_since

        since = online_since(seeded.newest_ms, 300.0)
        queries["device_list"] = (DEVICE_LIST_SQL, [since, "ORG", "ORG"])
    except ImportError:
        pass
    plans: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT id FROM orgs WHERE name = %s", [ORG]).fetchone()
        org = str(row[0]) if row else ORG
        for name, (sql, params) in queries.items():
            args = [org if p == "ORG" else p for p in params]
            conn.execute(to_pg("EXPLAIN (ANALYZE, BUFFERS) " + sql).encode(), args)  # warm
            rows = conn.execute(to_pg("EXPLAIN (ANALYZE, BUFFERS) " + sql).encode(), args)
            plans[name] = "\n".join(str(r[0]) for r in rows.fetchall())
    return plans


def _login(base_url: str, t: Target, s: Settings) -> tuple[str, dict[str, Any]]:
    """A bearer token, and the sanity figures: the API sees what was seeded (a figure over an
    empty answer means nothing)."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
        r = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        if r.status_code != 200:
            raise BenchError(f"login failed: {r.status_code} {r.text[:300]}")
        token = r.json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        r = client.get("/api/dashboard")
        if r.status_code != 200:
            raise BenchError(f"dashboard: {r.status_code} {r.text[:300]}")
        devices = r.json()["devices"]
        if len(devices) != s.devices:
            raise BenchError(f"dashboard lists {len(devices)} devices, seeded {s.devices}")
        r = client.get(_bucket_paths(s, t.seeded, 1)[0])
        if r.status_code != 200:
            raise BenchError(f"telemetry: {r.status_code} {r.text[:300]}")
        points = r.json()["points"]
    return token, {
        "devices_online": sum(1 for d in devices if d["status"] == "online"),
        "buckets_per_answer": len(points),
        "readings_per_answer": sum(p["count"] for p in points),
    }


def _overview_paths(s: Settings) -> list[str]:
    """Every page of the overview's device list, as overview.js asks for it."""
    pages = -(-s.devices // OVERVIEW_PAGE)
    return [
        f"/api/dashboard?limit={OVERVIEW_PAGE}&offset={k * OVERVIEW_PAGE}&sort=device_id&order=asc"
        for k in range(pages)
    ]


def _bucket_paths(s: Settings, seeded: Seeded, n: int) -> list[str]:
    """The chart's query for n (device, metric) pairs all over the table: the 24 hours of whole
    buckets ending with the newest reading's."""
    hi = (seeded.newest_ms // BUCKET_MS + 1) * BUCKET_MS
    lo = hi - DAY_MS
    stride = max(1, s.devices // 7 * 3 + 1)
    return [
        f"/api/devices/{device_id(i * stride % s.devices)}/telemetry"
        f"?metric={metric_name(i % s.metrics)}&from={lo}&to={hi}&bucket={BUCKET}"
        for i in range(n)
    ]


def session(t: Target, s: Settings, gen: LoadGenerator, workdir: Path, tag: str) -> dict[str, Any]:
    """Start the target's server, measure every figure through the generator, stop it."""
    server = start_server(t.data_dir, workdir, t.url, t.workers, f"cloud-{tag}.log", t.root)
    try:
        token, sanity = _login(server.base_url, t, s)
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        base: dict[str, Any] = {
            "host": host, "port": int(port), "headers": {"Authorization": f"Bearer {token}"},
            "server_pids": [server.proc.pid],
            "postgres_pid": postmaster_pid(t.url) if t.url else None,
        }  # fmt: skip

        def phase(paths: list[str], clients: int, n: int) -> dict[str, Any]:
            out = gen.phase(base | {"paths": paths, "clients": clients, "warmup": s.warmup,
                                    "requests": n})  # fmt: skip
            if "error" in out:
                raise BenchError(f"{t.name}: {out['error']}\n{server.log_tail()}")
            return out

        result: dict[str, Any] = {}
        result["floor"] = phase(["/healthz"], 1, s.requests)
        result["dashboard"] = phase(["/api/dashboard"], 1, s.requests)
        result["dashboard"]["devices_online"] = sanity["devices_online"]
        result["buckets"] = phase(_bucket_paths(s, t.seeded, s.requests), 1, s.requests)
        result["buckets"]["buckets_per_answer"] = sanity["buckets_per_answer"]
        result["buckets"]["readings_per_answer"] = sanity["readings_per_answer"]
        result["floor_concurrent"] = phase(["/healthz"], s.clients, 5 * s.concurrent_requests)
        pages = _overview_paths(s)
        result["overview"] = phase(pages, 1, s.requests)
        result["dashboard_concurrent"] = phase(pages, s.clients, s.concurrent_requests)
        result["dashboard_concurrent"]["distinct_pages"] = len(pages)
        result["versus_floor"] = versus_floor(result)
        return result
    except BenchError:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()


def versus_floor(result: dict[str, Any]) -> dict[str, Any]:
    """Each figure against the same session's /healthz floor (latency: x times; rate: share)."""
    f, fc = result["floor"], result["floor_concurrent"]

    def times(key: str) -> float | None:
        return round(result[key]["p50_ms"] / f["p50_ms"], 1) if f["p50_ms"] > 0 else None

    return {
        "dashboard_p50_x_floor": times("dashboard"),
        "buckets_p50_x_floor": times("buckets"),
        "dashboard_concurrent_share_of_floor_rate": round(
            result["dashboard_concurrent"]["requests_per_s"] / fc["requests_per_s"], 3
        )
        if fc["requests_per_s"] > 0
        else None,
    }


# --------------------------------------------------------------------------- the run


def run(s: Settings) -> dict[str, Any]:
    with database(s.database, s.private_postgres) as url:
        return run_on(s, url)


def seed_targets(s: Settings, url: str | None, workdir: Path) -> list[Target]:
    """Seed the stores (DuckDB, and PostgreSQL with a URL) with the same readings; one target
    per way of serving them."""
    targets_: list[Target] = []
    if url is None or s.duckdb_beside:
        print("seeding DuckDB ...", flush=True)
        seeded = seed(workdir / "duck", s)
        print(f"  seeded in {seeded.seconds:.1f} s; cloud.duckdb {seeded.db_mb} MB", flush=True)
        targets_.append(Target("duckdb", workdir / "duck", seeded))
    if url is not None:
        print("seeding PostgreSQL ...", flush=True)
        seeded = seed(workdir / "pg", s, url)
        print(
            f"  seeded in {seeded.seconds:.1f} s; readings on PostgreSQL {seeded.db_mb} MB",
            flush=True,
        )
        analyze(url)
        for w in s.workers:
            targets_.append(Target(f"postgresql_{w}w", workdir / "pg", seeded, url, w))
    if s.compare_tree is not None:  # the same stores served by another checkout's code
        targets_ += [replace(t, name=f"base_{t.name}", root=s.compare_tree) for t in targets_]
    return targets_


def run_on(s: Settings, url: str | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="iotsphere-bench-cloud-"))
    keep = s.keep
    gen: LoadGenerator | None = None
    plans: dict[str, str] = {}
    print(
        f"cloud_api: {s.stored:,} readings = {s.devices:,} devices x {s.metrics} metrics x "
        f"{s.per_series:,} (one per {s.interval_s} s, "
        f"{s.per_series * s.interval_s / 3600:.1f} h); work dir {workdir}",
        flush=True,
    )
    try:
        targets_ = seed_targets(s, url, workdir)
        gen = LoadGenerator()
        rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets_}
        for r in range(s.rounds):
            order = targets_[r % len(targets_) :] + targets_[: r % len(targets_)]  # interleaved
            for t in order:
                print(f"round {r + 1}/{s.rounds}: {t.name} ...", flush=True)
                rounds[t.name].append(session(t, s, gen, workdir, f"{t.name}-{r + 1}"))
                brief(t.name, rounds[t.name][-1])
        if url is not None:
            plans = explain(url, s, targets_[-1].seeded)
            for name, plan in plans.items():
                print(f"\nEXPLAIN (ANALYZE, BUFFERS) {name}:\n{plan}", flush=True)
    except BenchError:
        keep = True  # the server logs in it say why
        raise
    finally:
        if gen is not None:
            gen.close()
        if keep:
            print(f"\nwork dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {"bench": "cloud_api"}
    summaries = {name: summarise(runs) for name, runs in rounds.items()}
    first = summaries[targets_[0].name]
    # The first target's medians at the top level (the embedded default when measured): the
    # figures the smoke test and older readers look for.
    for key in ("floor", "dashboard", "buckets", "overview", "floor_concurrent",
                "dashboard_concurrent", "versus_floor"):  # fmt: skip
        result[key] = first[key]
    result["targets"] = targets(first)
    result["by_target"] = summaries
    result["rounds"] = rounds
    result["explain"] = plans
    result["ratios"] = ratios(rounds)
    result["seed"] = {
        t.name: {"seconds": round(t.seeded.seconds, 1), "db_mb": t.seeded.db_mb,
                 "mb_per_million": round(t.seeded.db_mb / (s.stored / 1e6), 1)}
        for t in targets_
    }  # fmt: skip
    result["settings"] = {
        "readings": s.stored,
        "devices": s.devices,
        "metrics": s.metrics,
        "interval_s": s.interval_s,
        "requests": s.requests,
        "concurrent_requests": s.concurrent_requests,
        "clients": s.clients,
        "warmup": s.warmup,
        "alerts": s.alerts,
        "rounds": s.rounds,
        "targets": [t.name for t in targets_],
        "cores": os.cpu_count(),
    }
    report(result, BUCKET)
    return result


def _parse(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="cloud_api.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )

    def add(flag: str, default: int, text: str) -> None:
        p.add_argument(flag, type=int, default=default, help=f"{text} (default {default:,})")

    add("--readings", 10_000_000, "stored readings, split evenly over the series")
    add("--devices", 1_000, "devices")
    add("--metrics", 10, "metrics per device")
    add("--interval-s", 300, "seconds between two readings of one series")
    add("--requests", 200, "measured requests for each 1-client latency figure")
    add("--concurrent-requests", 400, "measured requests for the concurrent figure, in all")
    add("--clients", 20, "concurrent clients for the requests/s figure")
    add("--warmup", 20, "requests before each figure that are not measured")
    add("--alerts", 10, "open alerts on the dashboard")
    add("--rounds", 3, "sessions of each target, interleaved (spreads on a shared host)")
    p.add_argument(
        "--workers", default="1,2",
        help="PostgreSQL only: worker counts to serve with, each measured (default 1,2)",
    )  # fmt: skip
    p.add_argument(
        "--no-duckdb", action="store_true",
        help="PostgreSQL only: do not also seed and measure the embedded DuckDB store",
    )  # fmt: skip
    p.add_argument(
        "--compare-tree", type=Path, metavar="DIR",
        help="also serve every target with the code of this checkout (e.g. `git worktree add\n"
        "DIR HEAD~1`), interleaved in the same run: before/after under the same load",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work dir (DuckDB file, log)")
    p.add_argument("--database", help="postgresql:// URL of a fresh, empty database to use")
    p.add_argument(
        "--private-postgres", action="store_true", help="as --database, on a throwaway cluster"
    )
    p.add_argument(
        "--smoke", action="store_true",
        help="seconds, tiny sizes (10 devices, 25 h of history, a few requests): checks that\n"
        "the benchmark still runs, as the test suite does",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.smoke:
        a.readings, a.devices, a.metrics, a.interval_s = 30_000, 10, 10, 300
        a.requests, a.concurrent_requests, a.clients, a.warmup, a.alerts = 10, 40, 4, 2, 3
        a.rounds = 1
    try:
        workers = tuple(sorted({int(w) for w in a.workers.split(",")}))
    except ValueError:
        p.error(f"--workers takes worker counts separated by commas, not {a.workers!r}")
    if a.compare_tree is not None and not (a.compare_tree / "cloud" / "app").is_dir():
        p.error(f"--compare-tree {a.compare_tree}: no IoTSphere checkout there")
    if not workers or min(workers) < 1 or a.rounds < 1:
        p.error("--workers counts and --rounds must be > 0")
    if min(a.readings, a.devices, a.metrics, a.interval_s, a.requests, a.clients) < 1:
        p.error("--readings, --devices, --metrics, --interval-s, --requests, --clients must be > 0")
    if a.concurrent_requests < 1 or a.warmup < 0 or a.alerts < 0:
        p.error("--concurrent-requests must be > 0; --warmup and --alerts >= 0")
    if a.readings < a.devices * a.metrics:
        p.error("--readings must be at least --devices x --metrics (one reading per series)")
    return Settings(
        readings=a.readings,
        devices=a.devices,
        metrics=a.metrics,
        interval_s=a.interval_s,
        requests=a.requests,
        concurrent_requests=a.concurrent_requests,
        clients=a.clients,
        warmup=a.warmup,
        alerts=a.alerts,
        keep=a.keep,
        database=a.database,
        private_postgres=a.private_postgres,
        workers=workers,
        duckdb_beside=not a.no_duckdb,
        rounds=a.rounds,
        compare_tree=a.compare_tree.resolve() if a.compare_tree else None,
    )


def main(argv: Sequence[str]) -> int:
    settings = _parse(argv)
    # Ctrl-C and SIGTERM end the run through the finally block that stops the server. (SIGINT
    # set here: a shell starting us in the background would otherwise leave it ignored.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return run_benchmark(
        "cloud_api", lambda: run(settings), "interrupted; server stopped, work dir removed"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
