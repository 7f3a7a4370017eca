"""The dashboard's overview at fleet size and its push latency (issue 15, Performance).

    .venv/bin/python bench/dashboard_live.py [--devices 10000 --pages 50 --commits 30]
        [--database postgresql://... | --private-postgres] [--smoke]

(1) The overview's answer, before and after server-side paging: GET /api/dashboard as the
overview asked before (every device with its latest values) and as it asks now (one page:
limit=50), server time p50/p95 (the access log's duration_ms of each request) and bytes.
(2) Push latency: `--pages` Chromium pages show the overview; a reading is committed in the
cloud's store (on PostgreSQL through a second store, its own connection pool: another worker);
each page records when the new value was painted (a MutationObserver, then the next animation
frame); latency = painted - committed, same host clock, p50/p99 over pages x commits. The
reference in the same run: the change feed's poll interval (the floor of the wait for a commit
to be seen) and GET /healthz from one client.

DuckDB always; PostgreSQL too with --database URL (a fresh, empty database) or
--private-postgres (a throwaway cluster). The cloud runs in this process (uvicorn in a thread,
as tests/cloud/test_web_dashboard.py does): with DuckDB's one-process file that is the only
way to commit beside it. --smoke: 300 devices, 3 pages, 3 commits, DuckDB only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.support import BenchError, run_benchmark  # noqa: E402
from bench.support.pg_bench import database  # noqa: E402
from cloud.app.admin_ops import add_user  # noqa: E402
from cloud.app.server import GracefulServer, uvicorn_server  # noqa: E402
from cloud.app.services import build_services, open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.storage.interface import Role  # noqa: E402
from cloud.storage.store import SqlCloudStore  # noqa: E402
from common.clock import SystemClock  # noqa: E402
from common.model import Reading  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

T = TypeVar("T")
EMAIL, PASSWORD = "bench@example.com", "bench-passw0rd-live"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
]  # fmt: skip
WATCHED = "dev-00000"  # first on the overview's first page (sorted by id)
DURATION = re.compile(r"path=/api/dashboard route=\S+ status=200 duration_ms=([0-9.]+)")


@dataclass(frozen=True)
class Settings:
    devices: int
    pages: int
    commits: int
    requests: int
    database: str | None
    private_postgres: bool
    duckdb: bool = True


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))], 1)


class Cloud:
    """The cloud app on a loopback port, served from a thread with its own loop."""

    def __init__(self, settings: CloudSettings) -> None:
        self.store = open_store(settings)
        services = build_services(settings, self.store, SystemClock())
        self.server: GracefulServer = uvicorn_server(services, "127.0.0.1", free_port())
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.base = f"http://127.0.0.1:{self.server.config.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise BenchError("the cloud did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.store.close()


def seed(store: SqlCloudStore, devices: int) -> tuple[str, str]:
    now = SystemClock().now_ms()

    async def go() -> tuple[str, str]:
        await add_user(store, EMAIL, PASSWORD, Role.ADMIN, "default", now)
        org = (await store.ensure_org("default", now)).id
        gw = await store.create_gateway(org, "bench-gw", "not-a-token-hash", now, now)
        batch = [
            Reading(f"dev-{d:05d}", metric, now - 1000, 20.0 + d % 7, received_at=now - 1000)
            for d in range(devices)
            for metric in ("temperature", "humidity", "battery")
        ]
        for i in range(0, len(batch), 30_000):
            await store.insert_readings(org, gw.gateway_id, batch[i : i + 30_000], now)
        return org, gw.gateway_id

    return run_async(go())


def overview_sizes(cloud: Cloud, log: Path, n: int) -> dict[str, Any]:
    """GET /api/dashboard before (every device) and after paging (limit=50): server ms, bytes."""
    out: dict[str, Any] = {}
    with httpx.Client(base_url=cloud.base, timeout=60) as http:
        r = http.post("/api/auth/login", json={"email": EMAIL, "password": PASSWORD})
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        floor = []
        for _ in range(n):
            t = time.perf_counter()
            http.get("/healthz")
            floor.append((time.perf_counter() - t) * 1000)
        out["healthz_client_ms_p50"] = pct(floor, 50)
        paged = "limit=50&offset=0&sort=device_id&order=asc"
        for name, query in (("before_all_devices", ""), ("after_paged", paged)):
            mark = len(log.read_text().splitlines()) if log.exists() else 0
            sizes = []
            for _ in range(n + 2):
                path = f"/api/dashboard?{query}" if query else "/api/dashboard"
                resp = http.get(path, headers=auth)
                if resp.status_code != 200:
                    raise BenchError(f"dashboard {resp.status_code}: {resp.text[:200]}")
                head = sum(len(k) + len(v) + 4 for k, v in resp.headers.items())
                sizes.append(len(resp.content) + head)
            times = [
                float(m.group(1))
                for line in log.read_text().splitlines()[mark:]
                if (m := DURATION.search(line))
            ][2:]  # fmt: skip  (2 warm-up)
            out[name] = {"server_ms_p50": pct(times, 50), "server_ms_p95": pct(times, 95),
                         "bytes": max(sizes), "requests": len(times)}  # fmt: skip
    return out


OBSERVER = f"""(marker) => {{
  window.__painted = window.__painted || {{}};
  window.__expect = marker;
  if (window.__observer) return;
  const look = () => {{
    const exp = window.__expect;
    if (!exp || window.__painted[exp]) return;
    const link = document.querySelector("a[href='#/devices/{WATCHED}']");
    const row = link && link.closest("tr");
    if (row && row.textContent.includes(exp)) {{
      requestAnimationFrame(() => {{ window.__painted[exp] = Date.now(); }});
    }}
  }};
  window.__observer = new MutationObserver(look);
  const all = {{ subtree: true, childList: true, characterData: true }};
  window.__observer.observe(document.getElementById("main"), all);
}}"""


PAINTED = "(marker) => window.__painted[marker] ?? null"
TRANSFER = (
    "() => performance.getEntriesByType('navigation').concat("
    "performance.getEntriesByType('resource')).reduce((n, e) => n + (e.transferSize || 0), 0)"
)


def login(page: Any, base: str) -> None:
    """Log in and wait for the overview with its stream open; a load that failed (a file
    changed under the server mid-answer, in a shared checkout) is tried again."""
    for attempt in range(3):
        try:
            _login(page, base)
            return
        except Exception:
            if attempt == 2:
                raise


def _login(page: Any, base: str) -> None:
    page.goto(base + "/")
    page.wait_for_load_state()
    if "/login" in page.url or page.locator("input[type=email]").count():
        page.wait_for_url("**/login?**")
        page.keyboard.type(EMAIL)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url)
    page.wait_for_selector(f"a[href='#/devices/{WATCHED}']", timeout=30_000)
    page.wait_for_function(
        "() => document.getElementById('live-status').dataset.push === 'on'", timeout=30_000
    )


def push_latency(
    cloud: Cloud, writer: SqlCloudStore, org: str, gw: str, s: Settings
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    latencies: list[float] = []
    missed = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pages = []
            for _ in range(s.pages):
                ctx = browser.new_context(service_workers="block")
                ctx.set_default_timeout(60_000)
                page = ctx.new_page()
                login(page, cloud.base)
                pages.append(page)
            # what the first page's overview load moved over the wire (document, scripts,
            # styles, API answers; a fresh context, nothing cached)
            transfer = pages[0].evaluate(TRANSFER)
            for i in range(s.commits):
                marker = f"{300 + i}"  # < 1000: no digit grouping in the text
                for page in pages:
                    page.evaluate(OBSERVER, marker)
                now = SystemClock().now_ms()
                committed = time.time() * 1000
                reading = Reading(WATCHED, "temperature", now, float(marker), received_at=now)
                run_async(writer.insert_readings(org, gw, [reading], now))
                deadline = time.monotonic() + 15
                painted: list[float | None] = [None] * len(pages)
                while time.monotonic() < deadline and None in painted:
                    time.sleep(0.25)
                    for k, page in enumerate(pages):
                        if painted[k] is None:
                            painted[k] = page.evaluate(PAINTED, marker)
                missed += painted.count(None)
                latencies += [t - committed for t in painted if t is not None]
                time.sleep(0.5)
        finally:
            browser.close()
    if not latencies:
        raise BenchError("no page painted a pushed reading")
    return {"pages": s.pages, "commits": s.commits, "samples": len(latencies), "missed": missed,
            "push_ms_p50": pct(latencies, 50), "push_ms_p99": pct(latencies, 99),
            "push_ms_mean": round(statistics.fmean(latencies), 1),
            "overview_load_transfer_bytes": transfer}  # fmt: skip


def measure(engine: str, url: str | None, s: Settings, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / engine
    settings = CloudSettings(data_dir=data_dir, database_url=url)
    log = workdir / f"{engine}-access.log"

    handler = logging.FileHandler(log)
    access = logging.getLogger("iotsphere.cloud.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    cloud = Cloud(settings)
    writer = cloud.store
    try:
        org, gw = seed(cloud.store, s.devices)
        cloud.start()
        result: dict[str, Any] = {"engine": engine, "devices": s.devices}
        result["overview"] = overview_sizes(cloud, log, s.requests)
        if url is not None:  # another worker's pool commits
            writer = open_store(settings)
        result["feed_interval_ms"] = 500
        result["push"] = push_latency(cloud, writer, org, gw, s)
        return result
    finally:
        if writer is not cloud.store:
            writer.close()
        cloud.stop()
        access.removeHandler(handler)


def run(s: Settings) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="dash-live-") as tmp:
        if s.duckdb:
            results.append(measure("duckdb", None, s, Path(tmp)))
        with database(s.database, s.private_postgres) as url:
            if url is not None:
                results.append(measure("postgresql", url, s, Path(tmp)))
    for r in results:
        o, p = r["overview"], r["push"]
        b, a = o["before_all_devices"], o["after_paged"]
        print(f"{r['engine']}: {r['devices']:,} devices; overview before paging "
              f"{b['server_ms_p50']}/{b['server_ms_p95']} ms p50/p95, {b['bytes']:,} B; after "
              f"{a['server_ms_p50']}/{a['server_ms_p95']} ms, {a['bytes']:,} B "
              f"(healthz {o['healthz_client_ms_p50']} ms from the client)")  # fmt: skip
        print(f"  push commit->painted with {p['pages']} pages: p50 {p['push_ms_p50']} ms, "
              f"p99 {p['push_ms_p99']} ms ({p['samples']} samples, {p['missed']} missed; "
              f"feed polls every {r['feed_interval_ms']} ms); one overview load moved "
              f"{p['overview_load_transfer_bytes']:,} B")  # fmt: skip
    return {"bench": "dashboard_live", **{r["engine"]: r for r in results}}


def parse(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--pages", type=int, default=50)
    p.add_argument("--commits", type=int, default=30)
    p.add_argument("--requests", type=int, default=30, help="per overview variant")
    p.add_argument("--database", help="postgresql:// URL of a fresh, empty database")
    p.add_argument("--private-postgres", action="store_true", help="a throwaway cluster")
    p.add_argument("--no-duckdb", action="store_true", help="PostgreSQL only")
    p.add_argument("--smoke", action="store_true", help="seconds: tiny sizes, DuckDB only")
    a = p.parse_args(argv)
    if a.smoke:
        return Settings(300, 3, 3, 5, None, False)
    return Settings(
        a.devices, a.pages, a.commits, a.requests, a.database, a.private_postgres, not a.no_duckdb
    )


def main(argv: Sequence[str]) -> int:
    s = parse(argv)
    return run_benchmark("dashboard_live", lambda: run(s), "dashboard_live: interrupted")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
