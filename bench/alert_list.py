"""The alerts page's API at scale (issue 15, item 4): GET /api/alerts paged, filtered, sorted
and searched in the database, over 100,000 alerts, on DuckDB and PostgreSQL.

    .venv/bin/python bench/alert_list.py [--alerts N] [--requests R]
        [--database postgresql://USER@HOST:PORT/DB | --private-postgres] [--smoke] [--keep]

DuckDB always; PostgreSQL too with --database URL or --private-postgres (a throwaway cluster,
tests/support/postgres.py). Each store is seeded through its own migrations (`open_store`),
then one INSERT ... SELECT of N alerts (a tenth open, severities and devices spread, half from a
gateway, 10 days of start times) plus 10,000 typed devices and a second org with N/10 alerts of
its own (tenant filtering has to work). `iotsphere cloud serve` then answers the requests the
alerts page makes (its two lists: open alerts 50 a page, resolved 20 a page) and the filters a
user applies: severity + search, a time range, a gateway, a device type, most severe first, and
the next page by cursor. Per scenario: server time p50/p95 (the access log's duration_ms of
each measured request), client time p50/p95 over loopback, and bytes of the answer. The
acceptance budget is 300 ms server time p95 and 200 KB per answer; `within_budget` says whether
every scenario met it. Human-readable lines first, one JSON line last. Asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench.support import BenchError, run_benchmark  # noqa: E402
from bench.support.cloud_server import Server, start_server  # noqa: E402
from bench.support.pg_bench import database  # noqa: E402
from cloud.app.services import build_services, open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.security.auth import hash_password  # noqa: E402
from cloud.storage.interface import Role  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench-password-1"
BUDGET_MS, BUDGET_BYTES = 300.0, 200 * 1024
DEVICES = 10_000
_ACCESS = re.compile(r"path=/api/alerts .*status=(\d+) duration_ms=([\d.]+)")


@dataclass(frozen=True)
class Settings:
    alerts: int
    requests: int
    database: str | None
    private_postgres: bool
    keep: bool


def _seed_sql(dialect: str, org: str, n: int, now: int, first: int) -> str:
    rows = (
        f"range({first}, {first + n})"
        if dialect == "duckdb"
        else (f"generate_series({first}, {first + n - 1})")
    )
    txt = "VARCHAR" if dialect == "duckdb" else "TEXT"
    return (
        "INSERT INTO alerts (id, org_id, rule_id, state, severity, metric, value_num, device_id,"
        " started_at, acknowledged_at, resolved_at, updated_at, gateway_id, rule_name)"
        f" SELECT 'a' || CAST(i AS {txt}), '{org}', 'rule-' || CAST(mod(i, 20) AS {txt}),"
        " CASE mod(i, 10) WHEN 0 THEN 'active' WHEN 1 THEN 'acknowledged' ELSE 'resolved' END,"
        " CASE mod(i, 3) WHEN 0 THEN 'critical' WHEN 1 THEN 'warning' ELSE 'info' END,"
        " CASE mod(i, 2) WHEN 0 THEN 'temperature' ELSE 'humidity' END, i * 0.01,"
        f" 'dev-' || CAST(mod(i, {DEVICES}) AS {txt}), {now} - i * 8640,"
        f" CASE WHEN mod(i, 10) = 1 THEN {now} - i * 8640 + 60000 END,"
        f" CASE WHEN mod(i, 10) > 1 THEN {now} - i * 8640 + 600000 END, {now},"
        f" CASE WHEN mod(i, 2) = 0 THEN 'gw-1' END, 'Rule ' || CAST(mod(i, 20) AS {txt})"
        f" FROM {rows} t(i)"
    )


def seed(data_dir: Path, s: Settings, url: str | None) -> dict[str, Any]:
    """The store with N alerts in one org, N/10 in another, 10,000 typed devices."""
    started = time.monotonic()
    settings = CloudSettings(data_dir=data_dir, database_url=url)
    store = open_store(settings)
    try:
        build_services(settings, store)  # every area migrates its tables
        now = int(time.time() * 1000)
        import asyncio

        async def accounts() -> tuple[str, str]:
            org = await store.ensure_org("default", now)
            other = await store.ensure_org("other", now)
            await store.create_user(EMAIL, hash_password(PASSWORD), Role.VIEWER, org.id, now)
            return org.id, other.id

        org_id, other_id = asyncio.run(accounts())
        dialect = store.db.dialect
        txt = "VARCHAR" if dialect == "duckdb" else "TEXT"
        devs = f"range({DEVICES})" if dialect == "duckdb" else f"generate_series(0, {DEVICES - 1})"

        def go(c: Any) -> None:
            c.execute(_seed_sql(dialect, org_id, s.alerts, now, 0))
            c.execute(_seed_sql(dialect, other_id, max(1, s.alerts // 10), now, s.alerts))
            c.execute(
                "INSERT INTO devices (org_id, device_id, gateway_id, type)"
                f" SELECT '{org_id}', 'dev-' || CAST(i AS {txt}),"
                " CASE WHEN mod(i, 2) = 0 THEN 'gw-1' ELSE 'gw-2' END,"
                " CASE mod(i, 4) WHEN 0 THEN 'boiler' WHEN 1 THEN 'pump' ELSE 'thermo' END"
                f" FROM {devs} t(i)"
            )

        store.db.run_sync(store.db.transaction(go))
        if dialect == "postgresql":  # as autovacuum leaves a table at rest: visibility map
            # set (index-only counts) and statistics fresh
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE alerts")
                conn.execute("VACUUM ANALYZE devices")
        return {"org_id": org_id, "now": now, "seconds": round(time.monotonic() - started, 1)}
    finally:
        store.close()


def scenarios(now: int) -> list[tuple[str, dict[str, Any]]]:
    """What the alerts page asks: its two lists, then what a user filters by."""
    return [
        ("open_page", {"limit": 50, "state": "active,acknowledged", "sort": "-started_at"}),
        ("past_page", {"limit": 20, "state": "resolved", "sort": "-started_at"}),
        ("severity_and_search", {"limit": 50, "severity": "critical", "q": "dev-12"}),
        ("last_24h", {"limit": 50, "from": now - 86_400_000}),
        ("gateway", {"limit": 50, "gateway": "gw-2"}),
        ("device_type", {"limit": 50, "device_type": "boiler"}),
        ("most_severe_first", {"limit": 50, "sort": "-severity"}),
        ("next_page", {"limit": 50, "state": "active,acknowledged", "cursor": "NEXT"}),
    ]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(q * (len(xs) - 1)))], 1)


def measure(server: Server, s: Settings, now: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        r = client.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        if r.status_code != 200:
            raise BenchError(f"login failed: {r.status_code} {r.text[:200]}")
        client.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        first = client.get("/api/alerts", params=scenarios(now)[0][1]).json()
        for name, asked in scenarios(now):
            params = {**asked, "cursor": first["next"]} if asked.get("cursor") else asked
            for _ in range(3):  # warm-up
                client.get("/api/alerts", params=params)
            before = server.log.read_text().count("path=/api/alerts ")
            client_ms, sizes, totals = [], [], set()
            for _ in range(s.requests):
                t0 = time.perf_counter()
                r = client.get("/api/alerts", params=params)
                client_ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise BenchError(f"{name}: {r.status_code} {r.text[:300]}")
                sizes.append(len(r.content))
                totals.add(r.json()["total"])
            time.sleep(0.2)  # the access log line is written after the answer
            lines = [m for m in _ACCESS.finditer(server.log.read_text())][before:]
            server_ms = [float(m.group(2)) for m in lines]
            out[name] = {
                "server_p50_ms": _pct(server_ms, 0.5),
                "server_p95_ms": _pct(server_ms, 0.95),
                "client_p50_ms": _pct(client_ms, 0.5),
                "client_p95_ms": _pct(client_ms, 0.95),
                "bytes": max(sizes),
                "total": max(totals),
                "samples": len(server_ms),
            }
    return out


def run(s: Settings) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="iotsphere-bench-alerts-"))
    result: dict[str, Any] = {"bench": "alert_list", "alerts": s.alerts, "requests": s.requests}
    keep = s.keep
    try:
        with database(s.database, s.private_postgres) as url:
            engines: list[tuple[str, str | None]] = [("duckdb", None)]
            if url is not None:
                engines.append(("postgresql", url))
            for engine, engine_url in engines:
                print(f"{engine}: seeding {s.alerts:,} alerts ...", flush=True)
                seeded = seed(workdir / engine, s, engine_url)
                print(f"  seeded in {seeded['seconds']} s", flush=True)
                server = start_server(
                    workdir / engine, workdir, engine_url, log_name=f"{engine}.log"
                )
                try:
                    figures = measure(server, s, seeded["now"])
                finally:
                    server.stop()
                for name, f in figures.items():
                    print(
                        f"  {name:<20} server p50 {f['server_p50_ms']:6.1f} ms p95"
                        f" {f['server_p95_ms']:6.1f} ms | client p95 {f['client_p95_ms']:6.1f} ms"
                        f" | {f['bytes'] / 1024:6.1f} KB | {f['total']:,} matching",
                        flush=True,
                    )
                result[engine] = figures
    except BenchError:
        keep = True
        raise
    finally:
        if keep:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    worst_ms = max(
        f["server_p95_ms"]
        for e in ("duckdb", "postgresql")
        if e in result
        for f in result[e].values()
    )
    worst_bytes = max(
        f["bytes"] for e in ("duckdb", "postgresql") if e in result for f in result[e].values()
    )
    result["worst"] = {"server_p95_ms": worst_ms, "bytes": worst_bytes}
    result["within_budget"] = worst_ms <= BUDGET_MS and worst_bytes <= BUDGET_BYTES
    print(
        f"worst: server p95 {worst_ms} ms (budget {BUDGET_MS:.0f}), "
        f"{worst_bytes / 1024:.1f} KB (budget 200 KB)",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alerts", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=40, help="per scenario (after 3 warm-ups)")
    p.add_argument("--database", help="a PostgreSQL URL to measure beside DuckDB")
    p.add_argument(
        "--private-postgres",
        action="store_true",
        help="measure PostgreSQL too, on a throwaway cluster",
    )
    p.add_argument("--smoke", action="store_true", help="2,000 alerts, 5 requests: seconds")
    p.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    a = p.parse_args(argv)
    s = Settings(a.alerts, a.requests, a.database, a.private_postgres, a.keep)
    if a.smoke:
        s = Settings(2_000, 5, a.database, a.private_postgres, a.keep)
    return run_benchmark("alert_list", lambda: run(s), "alert_list: interrupted")


if __name__ == "__main__":
    sys.exit(main())
