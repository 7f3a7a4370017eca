"""Which PostgreSQL driver for the cloud (issue 13)? psycopg 3 against asyncpg, same run.

    .venv/bin/python bench/pg_driver.py [--rows 1000000] [--queries 20000] [--database URL]
    .venv/bin/python bench/pg_driver.py --smoke

Starts its own private cluster (tests/support/postgres.py, durability defaults) unless given
--database, where it creates tables named pg_driver_* and drops them at the end.

Variants: psycopg 3 synchronous (a psycopg_pool.ConnectionPool used from asyncio.to_thread,
the style of the cloud's existing query functions), psycopg 3 async (AsyncConnectionPool),
and asyncpg (its pool). Both psycopg pools hand out autocommit connections: a single read
then costs one round trip, not BEGIN + query + COMMIT. asyncpg is optional: when it is not
installed (it is not a dependency) its variant is skipped with a note.

Workloads, each variant interleaved with the others so that drift hits all alike:
  copy   --rows readings (10 devices x 10 metrics) in batches of --batch, one transaction
         per batch, binary COPY, into a table with the (org, device, metric, ts) index:
         readings/s counting only the COPY and its commit, and this process's CPU per row.
  point  --tasks concurrent asyncio tasks over a pool of --pool connections: a user row by
         primary key, and the latest value of each of a device's 10 metrics (an index probe
         per metric): p50/p95 ms and queries/s.
  fetch  one series' newest --fetch-rows readings, all columns, one query at a time: ms.
Output: human lines, then one JSON line. --smoke: 20,000 rows, seconds, the same code path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.support import run_benchmark
from bench.support.http_timing import summary
from tests.support.postgres import running_cluster

try:  # optional: measured when present, never installed for this
    import asyncpg
except ImportError:
    asyncpg = None

T0 = 1_764_300_000_000
ORG = "org-1"
DEVICES = [f"sensor-{i:03d}" for i in range(10)]
METRICS = [
    "temperature", "humidity", "pressure", "co2", "voc", "pm25", "pm10", "noise", "lux",
    "battery",
]  # fmt: skip
COLUMNS = (
    "org_id", "gateway_id", "device_id", "metric", "ts", "received_at", "value_num",
    "value_text", "seq",
)  # fmt: skip
TYPES = ["text", "text", "text", "text", "int8", "int8", "float8", "text", "int8"]
READINGS_DDL = """
CREATE TABLE {t} (
    org_id text NOT NULL, gateway_id text NOT NULL, device_id text NOT NULL,
    metric text NOT NULL, ts bigint NOT NULL, received_at bigint NOT NULL,
    value_num double precision, value_text text, seq bigint NOT NULL);
CREATE INDEX {t}_series ON {t} (org_id, device_id, metric, ts)"""
USERS_DDL = """
CREATE TABLE {p}users (
    id bigint PRIMARY KEY, org_id text NOT NULL, email text NOT NULL, name text NOT NULL,
    role text NOT NULL, password_hash text NOT NULL, created_at bigint NOT NULL);
INSERT INTO {p}users
SELECT i, 'org-1', 'user' || i || '@example.com', 'User ' || i, 'viewer',
       repeat('x', 97), 1764300000000 + i
FROM generate_series(1, 10000) i"""
USER_SQL = "SELECT id, org_id, email, name, role, created_at FROM {p}users WHERE id = {ph}"
LATEST_SQL = """
SELECT m.metric, r.ts, r.value_num, r.value_text
FROM unnest({ph3}::text[]) AS m(metric) CROSS JOIN LATERAL (
    SELECT ts, value_num, value_text FROM {p}readings
    WHERE org_id = {ph1} AND device_id = {ph2} AND metric = m.metric
    ORDER BY ts DESC LIMIT 1) r"""
FETCH_SQL = """
SELECT org_id, gateway_id, device_id, metric, ts, received_at, value_num, value_text, seq
FROM {p}readings WHERE org_id = {ph1} AND device_id = {ph2} AND metric = {ph3}
ORDER BY ts DESC LIMIT {ph4}"""
PY = {"ph": "%s", "ph1": "%s", "ph2": "%s", "ph3": "%s", "ph4": "%s"}
APG = {"ph": "$1", "ph1": "$1", "ph2": "$2", "ph3": "$3", "ph4": "$4"}

Row = tuple[str, str, str, str, int, int, float | None, str | None, int]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5_000)
    ap.add_argument("--queries", type=int, default=20_000, help="per variant and query")
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--pool", type=int, default=10)
    ap.add_argument("--fetch-rows", type=int, default=10_000)
    ap.add_argument("--fetch-repeat", type=int, default=40)
    ap.add_argument("--database", help="postgresql:// URL (default: a private cluster)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.queries, args.fetch_repeat = 20_000, 300, 3
    args.fetch_rows = min(args.fetch_rows, args.rows // (len(DEVICES) * len(METRICS)))
    return args


def batch_rows(start: int, n: int) -> list[Row]:
    """Readings start..start+n: 100 series, one reading per series per second; 1 in 1,000
    carries a text value instead of a number."""
    rng = random.Random(start)
    rows: list[Row] = []
    for k in range(start, start + n):
        series, tick = k % 100, k // 100
        ts = T0 + tick * 1000
        text = k % 1000 == 0
        rows.append((
            ORG, "gw-1", DEVICES[series // 10], METRICS[series % 10], ts, ts + 20,
            None if text else round(rng.uniform(0, 100), 2), "ok" if text else None, k,
        ))  # fmt: skip
    return rows


# -- the variants -----------------------------------------------------------------------------


@dataclass
class Variant:
    """One driver style: how it copies a batch, runs one query, fetches many rows."""

    name: str
    copy: Callable[[str, list[Row]], Awaitable[None]]
    user: Callable[[int], Awaitable[Any]]
    latest: Callable[[str], Awaitable[Any]]
    fetch: Callable[[str, str, int], Awaitable[list[Any]]]
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)  # this process's CPU per workload


def psycopg_sync(url: str, prefix: str, pool_size: int) -> tuple[Variant, Callable[[], None]]:
    pool = psycopg_pool.ConnectionPool(
        url, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=True
    )
    pool.wait()

    def copy(table: str, rows: list[Row]) -> None:
        with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cols = ", ".join(COLUMNS)
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(TYPES)
                for row in rows:
                    cp.write_row(row)

    def one(sql: str, params: tuple[Any, ...]) -> list[Any]:
        with pool.connection() as conn:
            return conn.execute(sql.encode(), params).fetchall()

    def fetch_binary(sql: str, params: tuple[Any, ...]) -> list[Any]:
        with pool.connection() as conn, conn.cursor(binary=True) as cur:
            return cur.execute(sql.encode(), params).fetchall()

    user_sql, latest_sql = USER_SQL.format(p=prefix, **PY), LATEST_SQL.format(p=prefix, **PY)
    fetch_sql = FETCH_SQL.format(p=prefix, **PY)
    variant = Variant(
        "psycopg_sync_threads",
        copy=lambda t, rows: asyncio.to_thread(copy, t, rows),
        user=lambda i: asyncio.to_thread(one, user_sql, (i,)),
        latest=lambda d: asyncio.to_thread(one, latest_sql, (METRICS, ORG, d)),
        fetch=lambda d, m, n: asyncio.to_thread(fetch_binary, fetch_sql, (ORG, d, m, n)),
    )
    return variant, pool.close


async def psycopg_async(url: str, prefix: str, pool_size: int) -> tuple[Variant, Any]:
    pool = psycopg_pool.AsyncConnectionPool(
        url, min_size=pool_size, max_size=pool_size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)

    async def copy(table: str, rows: list[Row]) -> None:
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cols = ", ".join(COLUMNS)
            async with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(TYPES)
                for row in rows:
                    await cp.write_row(row)

    async def one(sql: str, params: tuple[Any, ...], binary: bool = False) -> list[Any]:
        async with pool.connection() as conn, conn.cursor(binary=binary) as cur:
            await cur.execute(sql.encode(), params)
            return await cur.fetchall()

    user_sql, latest_sql = USER_SQL.format(p=prefix, **PY), LATEST_SQL.format(p=prefix, **PY)
    fetch_sql = FETCH_SQL.format(p=prefix, **PY)
    variant = Variant(
        "psycopg_async",
        copy=copy,
        user=lambda i: one(user_sql, (i,)),
        latest=lambda d: one(latest_sql, (METRICS, ORG, d)),
        fetch=lambda d, m, n: one(fetch_sql, (ORG, d, m, n), binary=True),
    )
    return variant, pool.close


async def asyncpg_variant(url: str, prefix: str, pool_size: int) -> tuple[Variant, Any]:
    pool = await asyncpg.create_pool(url, min_size=pool_size, max_size=pool_size)

    async def copy(table: str, rows: list[Row]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(table, records=rows, columns=COLUMNS)

    async def fetch(sql: str, *params: Any) -> list[Any]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *params))

    user_sql, latest_sql = USER_SQL.format(p=prefix, **APG), LATEST_SQL.format(p=prefix, **APG)
    fetch_sql = FETCH_SQL.format(p=prefix, **APG)
    variant = Variant(
        "asyncpg",
        copy=copy,
        user=lambda i: fetch(user_sql, i),
        latest=lambda d: fetch(latest_sql, ORG, d, METRICS),
        fetch=lambda d, m, n: fetch(fetch_sql, ORG, d, m, n),
    )
    return variant, pool.close


# -- the workloads ----------------------------------------------------------------------------


async def measure_copy(variants: list[Variant], prefix: str, rows: int, batch: int) -> None:
    """Every batch goes to every variant's own table, in turn."""
    for v in variants:
        v.samples["copy"], v.cpu_s["copy"] = [], 0.0
    for start in range(0, rows, batch):
        chunk = batch_rows(start, min(batch, rows - start))
        for v in variants:
            cpu, t = time.process_time(), time.perf_counter()
            await v.copy(f"{prefix}readings_{v.name}", chunk)
            v.samples["copy"].append(time.perf_counter() - t)
            v.cpu_s["copy"] += time.process_time() - cpu


async def concurrent(call: Callable[[int], Awaitable[Any]], n: int, tasks: int) -> list[float]:
    """n calls from `tasks` concurrent tasks; each call's latency in ms."""
    todo = iter(range(n))
    out: list[float] = []

    async def worker() -> None:
        for i in todo:
            t = time.perf_counter()
            await call(i)
            out.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return out


async def measure_point(variants: list[Variant], queries: int, tasks: int) -> None:
    rounds = 5
    for v in variants:
        v.samples |= {"user": [], "latest": [], "user_wall": [], "latest_wall": []}
        v.cpu_s |= {"user": 0.0, "latest": 0.0}
    for _ in range(rounds):
        for v in variants:
            for name, call in (
                ("user", lambda i, v=v: v.user(1 + (i * 7919) % 10_000)),
                ("latest", lambda i, v=v: v.latest(DEVICES[i % len(DEVICES)])),
            ):
                cpu, t = time.process_time(), time.perf_counter()
                v.samples[name] += await concurrent(call, queries // rounds, tasks)
                v.samples[f"{name}_wall"].append(time.perf_counter() - t)
                v.cpu_s[name] += time.process_time() - cpu


async def measure_fetch(
    variants: list[Variant], url: str, prefix: str, n: int, repeat: int
) -> list[float]:
    """Each variant's fetch times; returned: the server's share, the same query counted
    on the server (one row sent), in ms."""
    for v in variants:
        v.samples["fetch"] = []
    server: list[float] = []
    counted = f"SELECT count(*) FROM ({FETCH_SQL.format(p=prefix, **PY)}) s".encode()
    conn = psycopg.connect(url, autocommit=True)
    for i in range(repeat):
        t = time.perf_counter()
        conn.execute(counted, (ORG, DEVICES[i % len(DEVICES)], METRICS[i % len(METRICS)], n))
        server.append((time.perf_counter() - t) * 1000)
        for v in variants:
            t = time.perf_counter()
            got = await v.fetch(DEVICES[i % len(DEVICES)], METRICS[i % len(METRICS)], n)
            v.samples["fetch"].append((time.perf_counter() - t) * 1000)
            assert len(got) == n, (v.name, len(got))
    conn.close()
    return server


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with running_cluster() as cluster:
        yield cluster.fresh_database()


def prepare(url: str, prefix: str, names: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP TABLE IF EXISTS {prefix}readings_{name}".encode())
            for stmt in READINGS_DDL.format(t=f"{prefix}readings_{name}").split(";"):
                conn.execute(stmt.encode())
        conn.execute(f"DROP TABLE IF EXISTS {prefix}users, {prefix}readings".encode())
        for stmt in USERS_DDL.format(p=prefix).split(";"):
            conn.execute(stmt.encode())


def keep_one(url: str, prefix: str, names: list[str]) -> None:
    """The first variant's table becomes the one all variants query; the others go."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {prefix}readings_{names[0]} RENAME TO {prefix}readings".encode())
        for name in names[1:]:
            conn.execute(f"DROP TABLE {prefix}readings_{name}".encode())
        conn.execute(f"VACUUM ANALYZE {prefix}readings, {prefix}users".encode())


def drop_all(url: str, prefix: str, names: list[str]) -> None:
    tables = [f"{prefix}readings_{n}" for n in names] + [f"{prefix}readings", f"{prefix}users"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(tables)}".encode())


@contextlib.asynccontextmanager
async def opened(url: str, prefix: str, pool: int) -> AsyncIterator[list[Variant]]:
    sync_variant, close_sync = psycopg_sync(url, prefix, pool)
    async_variant, close_async = await psycopg_async(url, prefix, pool)
    variants = [sync_variant, async_variant]
    closers: list[Callable[[], Any]] = [close_sync, close_async]
    if asyncpg is not None:
        apg, close_apg = await asyncpg_variant(url, prefix, pool)
        variants.append(apg)
        closers.append(close_apg)
    try:
        yield variants
    finally:
        for close in closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def measure(
    args: argparse.Namespace, url: str, prefix: str
) -> tuple[list[Variant], list[float]]:
    # to_thread's executor sized like the pool: one thread per connection
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(args.pool))
    async with opened(url, prefix, args.pool) as variants:
        names = [v.name for v in variants]
        prepare(url, prefix, names)
        print(f"copy: {args.rows:,} readings in batches of {args.batch:,}, per variant ...")
        await measure_copy(variants, prefix, args.rows, args.batch)
        keep_one(url, prefix, names)
        print(f"point: {args.queries:,} queries each, {args.tasks} tasks, pool {args.pool} ...")
        await measure_point(variants, args.queries, args.tasks)
        print(f"fetch: {args.fetch_rows:,} rows x {args.fetch_repeat} ...")
        server = await measure_fetch(variants, url, prefix, args.fetch_rows, args.fetch_repeat)
    return variants, server


def figures(v: Variant, args: argparse.Namespace) -> dict[str, Any]:
    copy_s = sum(v.samples["copy"])
    out: dict[str, Any] = {
        "copy": {
            "readings_per_s": round(args.rows / copy_s),
            "client_cpu_us_per_reading": round(v.cpu_s["copy"] / args.rows * 1e6, 2),
        },
        "fetch": {
            "rows": args.fetch_rows,
            "median_ms": round(statistics.median(v.samples["fetch"]), 2),
            "max_ms": round(max(v.samples["fetch"]), 2),
        },
    }
    for q in ("user", "latest"):
        s = summary(v.samples[q])
        out[q] = {
            "p50_ms": s["p50_ms"],
            "p95_ms": s["p95_ms"],
            "queries_per_s": round(len(v.samples[q]) / sum(v.samples[f"{q}_wall"])),
            "client_cpu_us_per_query": round(v.cpu_s[q] / len(v.samples[q]) * 1e6),
        }
    return out


def report(
    variants: list[Variant], server: list[float], args: argparse.Namespace, elapsed: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bench": "pg_driver",
        "rows": args.rows,
        "server_only": {"fetch_median_ms": round(statistics.median(server), 2)},
        "versions": {"psycopg": version("psycopg"), "psycopg_pool": version("psycopg-pool")},
        "skipped": [] if asyncpg is not None else ["asyncpg (not installed)"],
    }
    if asyncpg is not None:
        result["versions"]["asyncpg"] = version("asyncpg")
    print(
        f"\n{'variant':<22}{'COPY rows/s':>12}{'cpu us/row':>11}{'user p50/p95 ms':>17}"
        f"{'q/s':>7}{'latest p50/p95':>16}{'q/s':>7}{'fetch ms':>10}"
    )
    for v in variants:
        f = result[v.name] = figures(v, args)
        print(
            f"{v.name:<22}{f['copy']['readings_per_s']:>12,}"
            f"{f['copy']['client_cpu_us_per_reading']:>11}"
            f"{f['user']['p50_ms']:>9} / {f['user']['p95_ms']:<5}{f['user']['queries_per_s']:>7,}"
            f"{f['latest']['p50_ms']:>8} / {f['latest']['p95_ms']:<5}"
            f"{f['latest']['queries_per_s']:>7,}{f['fetch']['median_ms']:>10}"
        )
    print(
        "client CPU us per query (user / latest): "
        + ", ".join(
            f"{v.name} {result[v.name]['user']['client_cpu_us_per_query']}"
            f" / {result[v.name]['latest']['client_cpu_us_per_query']}"
            for v in variants
        )
    )
    server_ms = result["server_only"]["fetch_median_ms"]
    print(f"fetch: the server alone (the same query, counted) {server_ms} ms")
    if asyncpg is None:
        print("asyncpg is not installed: its variant was skipped (pip install asyncpg)")
    result["elapsed_s"] = round(elapsed, 1)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    prefix = "pg_driver_"
    with database(args.database) as url:
        print(f"database {url}")
        try:
            variants, server = asyncio.run(measure(args, url, prefix))
        finally:
            names = ["psycopg_sync_threads", "psycopg_async", "asyncpg"]
            with contextlib.suppress(psycopg.Error):
                drop_all(url, prefix, names)
    return report(variants, server, args, time.monotonic() - started)


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(run_benchmark("pg_driver", lambda: run(arguments), "pg_driver: interrupted"))
