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
           c. GET /api/dashboard with --clients concurrent clients: requests/s, p50/p95
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
from bench.support.cloud_api_report import report, targets  # noqa: E402
from bench.support.cloud_server import Server, start_server  # noqa: E402
from bench.support.http_timing import concurrent, sequential  # noqa: E402
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


async def measure(base_url: str, s: Settings, seeded: Seeded, server_pid: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=s.clients, max_keepalive_connections=s.clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        r = await client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        if r.status_code != 200:
            raise BenchError(f"login failed: {r.status_code} {r.text[:300]}")
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

        # Sanity: the API sees what was seeded (a figure over an empty answer means nothing).
        r = await client.get("/api/dashboard")
        if r.status_code != 200:
            raise BenchError(f"dashboard: {r.status_code} {r.text[:300]}")
        doc = r.json()
        dashboard_bytes = len(r.content)
        online = sum(1 for d in doc["devices"] if d["status"] == "online")
        if len(doc["devices"]) != s.devices:
            raise BenchError(f"dashboard lists {len(doc['devices'])} devices, seeded {s.devices}")

        # The chart's window: the 24 hours of whole buckets ending with the newest reading's.
        hi = (seeded.newest_ms // BUCKET_MS + 1) * BUCKET_MS
        lo = hi - DAY_MS
        stride = max(1, s.devices // 7 * 3 + 1)  # visits devices all over the table

        def dashboard(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
            return c.get("/api/dashboard")

        def buckets(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
            dev = device_id(i * stride % s.devices)
            params: dict[str, str | int] = {
                "metric": metric_name(i % s.metrics), "from": lo, "to": hi, "bucket": BUCKET
            }  # fmt: skip
            return c.get(f"/api/devices/{dev}/telemetry", params=params)

        r = await buckets(client, 0)
        if r.status_code != 200:
            raise BenchError(f"telemetry: {r.status_code} {r.text[:300]}")
        points = r.json()["points"]
        bucket_rows = sum(p["count"] for p in points)

        def floor(c: httpx.AsyncClient, i: int) -> Awaitable[httpx.Response]:
            return c.get("/healthz")

        result: dict[str, Any] = {}
        server = psutil.Process(server_pid)
        # The same-run ceiling: the same server and client answering a request that does no
        # work (no store, no auth), so each figure reads as a multiple of this machine's floor
        # at this moment; absolute figures drift 10-30 % on a shared host.
        print(f"\n[0] GET /healthz, 1 client: the floor ({s.warmup} warm-up) ...", flush=True)
        result["floor"] = await sequential(client, floor, s.warmup, s.requests, server)
        print("[a] GET /api/dashboard, 1 client ...", flush=True)
        result["dashboard"] = await sequential(client, dashboard, s.warmup, s.requests, server)
        result["dashboard"]["response_bytes"] = dashboard_bytes
        result["dashboard"]["devices_online"] = online
        print(f"[b] 24 h / {BUCKET} telemetry, 1 client ...", flush=True)
        result["buckets"] = await sequential(client, buckets, s.warmup, s.requests, server)
        result["buckets"]["buckets_per_answer"] = len(points)
        result["buckets"]["readings_per_answer"] = bucket_rows
        print(f"[0c] GET /healthz, {s.clients} concurrent clients: the floor ...", flush=True)
        result["floor_concurrent"] = await concurrent(
            client, floor, s.clients, s.warmup, s.concurrent_requests, server
        )
        print(f"[c] GET /api/dashboard, {s.clients} concurrent clients ...", flush=True)
        result["dashboard_concurrent"] = await concurrent(
            client, dashboard, s.clients, s.warmup, s.concurrent_requests, server
        )
        return result


def versus_floor(result: dict[str, Any]) -> dict[str, Any]:
    """Each figure against the same run's /healthz floor (latency: x times; rate: share)."""
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
        if url is not None:
            os.environ["IOTSPHERE_DATABASE_URL"] = url  # for `cloud serve`
        return run_on(s, url)


def run_on(s: Settings, url: str | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="iotsphere-bench-cloud-"))
    data_dir = workdir / "cloud"
    server: Server | None = None
    keep = s.keep
    print(
        f"cloud_api: {s.stored:,} readings = {s.devices:,} devices x {s.metrics} metrics x "
        f"{s.per_series:,} (one per {s.interval_s} s, "
        f"{s.per_series * s.interval_s / 3600:.1f} h); work dir {workdir}",
        flush=True,
    )
    try:
        print("seeding ...", flush=True)
        seeded = seed(data_dir, s, url)
        what = "readings on PostgreSQL" if url else "cloud.duckdb"
        print(f"  seeded in {seeded.seconds:.1f} s; {what} {seeded.db_mb} MB", flush=True)
        server = start_server(data_dir, workdir)
        print(f"cloud serve ready at {server.base_url} (pid {server.proc.pid})", flush=True)
        result: dict[str, Any] = {"bench": "cloud_api"}
        result.update(asyncio.run(measure(server.base_url, s, seeded, server.proc.pid)))
    except BenchError:
        keep = True  # the server log in it says why
        raise
    finally:
        if server is not None:
            server.stop()
        if keep:
            print(f"\nwork dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["versus_floor"] = versus_floor(result)
    result["seed"] = {"seconds": round(seeded.seconds, 1), "db_mb": seeded.db_mb}
    result["targets"] = targets(result)
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
        "engine": "postgresql" if url else "duckdb",
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
