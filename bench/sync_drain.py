"""Sync drain benchmark: gateways with a backlog of unsynced readings catch up with the cloud.

    .venv/bin/python bench/sync_drain.py [--readings N] [--batch B] [--devices D]
        [--gateways G] [--workers W[,W...]] [--rounds R] [--smoke]
        [--database postgresql://USER@HOST:PORT/DB | --private-postgres]

What it does, everything on 127.0.0.1 with free ports and real processes:
  1. fills G fresh gateway data dirs with N readings between them (default 1,000,000: D devices
     split over the gateways x 10 metrics, one message per device per second, random-walk values
     rounded to 0.01 as sensors report them) through GatewayStore.commit, as ingest would have
     while offline;
  2. the peer in the same run: the same backlogs read, encoded, decoded and applied to a fresh
     cloud store serially in this process (no HTTP, no pipelining), on DuckDB and, with a
     database, on PostgreSQL; disk per million readings (table + indexes) for both;
  3. R rounds; in each, for each worker count W in turn (interleaved, so a busy moment of this
     shared host hits every variant alike):
     - with PostgreSQL, the ceiling: the same N rows, built from the gateway stores in the
       cloud's columns, binary-COPYed in B-row transactions into a table with no index, no
       partitions, no series lookup: what the server and the driver take for the bytes alone;
     - the drain: `iotsphere cloud serve --workers W` on a fresh store (DuckDB: a new data
       dir; PostgreSQL: a scratch schema), a gateway per data dir added and enrolled, G
       `iotsphere gateway run` at once, timed from the first acknowledged batch to every
       backlog 0; readings/s, request bytes per reading on the wire (gzip'd CBOR bodies,
       resends included), peak RSS, and CPU per reading of the gateways, the cloud (its workers
       included) and PostgreSQL (a local server: its postmaster's process tree);
     - checks the cloud holds exactly N readings, each once (count and distinct).
Medians and min-max over the rounds are reported per worker count; the drain's rate also as a
multiple of the same round's ceiling and of the in-process peer, which drift less than absolute
figures on a shared host.
--smoke: 40,000 readings from 2 gateways in 5,000-reading batches, one round, in seconds (the
test suite runs it). --database URL: the cloud under test runs on that PostgreSQL database
(`cloud serve` and the `cloud` commands get IOTSPHERE_DATABASE_URL; every cloud in its own
scratch schema, dropped afterwards). --private-postgres: the same on a throwaway cluster
(tests/support/postgres.py) started for the run.

Targets (issues 4 and 13): >= 100,000 readings/s (1M in <= 10 s), <= 12 bytes per reading, RSS
<= 250 MB each. Printed as met / missed; a measurement, not a test. Output: human lines, then one
JSON line. Environment: KEEP=1 keeps the work dir (logs, DuckDB files); GATEWAY_ARGS="-v" adds
flags to `gateway run` (e.g. debug logs with per-batch timings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support.peer_drain import drain_backlog  # noqa: E402
from bench.support.pg_bench import database, per_million, readings_size, scratch_schema  # noqa: E402
from cloud.app.services import open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.sync.store import SyncStore  # noqa: E402
from common.clock import SystemClock  # noqa: E402
from common.gateway_auth import RequestSigner, load_private_key  # noqa: E402
from common.model import Reading  # noqa: E402
from common.ports import free_port  # noqa: E402
from common.sync_wire import SyncBatch, encode_batch  # noqa: E402
from edge.admin.backend import admin_secret, running_gateway_url  # noqa: E402
from edge.storage.store import Batch, GatewayStore  # noqa: E402
from edge.sync.identity import key_path, load_identity  # noqa: E402

T0 = 1_764_300_000_000
BATCHES_PATH = "/api/v1/sync/batches"


def cli(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"iotsphere {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return done.stdout


def prefill(db: Path, n: int, devices: int, prefix: str = "dev") -> float:
    """N readings committed in 50k-reading transactions; returns seconds taken."""
    rng = random.Random(7)
    started = time.perf_counter()
    store = GatewayStore(db)
    values = [[20.0] * 10 for _ in range(devices)]
    chunk: list[Reading] = []
    i = 0
    while i < n:
        second = i // (devices * 10)
        dev = (i // 10) % devices
        metric = i % 10
        v = values[dev][metric] = round(values[dev][metric] + rng.uniform(-0.05, 0.05), 2)
        ts = T0 + second * 1000
        chunk.append(Reading(f"{prefix}-{dev:03d}", f"m{metric}", ts, v, ts + 3))
        i += 1
        if len(chunk) == 50_000 or i == n:
            store.commit(Batch(readings=chunk))
            chunk = []
    store.close()
    return time.perf_counter() - started


def in_process_peer(dbs: list[Path], settings: CloudSettings, n: int, batch: int) -> dict[str, Any]:
    """The peer measured in the same run: every step of a batch's life (read from the
    gateway store, build, encode with the wire's defaults, decode, apply to a fresh cloud
    store), serially in this one process, one gateway's backlog after the other: no HTTP, no
    signatures, no pipelining, no parallelism. The drain's readings/s over this one says what
    the processes, the network path and the overlap of gateway and cloud work cost or gain. The
    gateway stores are only read (no cursor saved)."""

    async def run() -> dict[str, Any]:
        cloud = open_store(settings)
        stored, wire_bytes, batches = 0, 0, 0
        try:
            sync = SyncStore(cloud.db)
            now = int(time.time() * 1000)
            org = await cloud.ensure_org("peer", now)
            started = time.perf_counter()
            for k, db in enumerate(dbs):
                gw = await cloud.create_gateway(org.id, f"peer-{k}", f"no-token-{k}", now, now)
                done = await drain_backlog(sync, org.id, gw.gateway_id, db, batch, now)
                stored, wire_bytes = stored + done.stored, wire_bytes + done.wire_bytes
                batches += done.batches
            seconds = time.perf_counter() - started
        finally:
            cloud.close()
        if stored != n:
            raise SystemExit(f"in-process peer: the cloud stored {stored:,} of {n:,} readings")
        return {
            "seconds": round(seconds, 2),
            "readings_per_s": round(n / seconds),
            "bytes_per_reading": round(wire_bytes / n, 2),
            "batches": batches,
            "mb_per_million_readings": disk_per_million(settings, n),
        }

    return asyncio.run(run())


# The ceiling's table: the columns the cloud's COPY fills (cloud.storage.pg_telemetry), with no
# index, no partitions, no constraint.
CEILING_COLUMNS = (
    ("org_id", "text"), ("gateway_id", "text"), ("cloud_received_at", "int8"),
    ("series_id", "int8"), ("device_id", "text"), ("metric", "text"), ("ts", "int8"),
    ("value_num", "float8"), ("value_bool", "bool"), ("value_str", "text"),
    ("gateway_received_at", "int8"), ("flags", "int2"), ("gateway_boot_id", "text"),
    ("gateway_mono_ms", "int8"),
)  # fmt: skip


def ceiling_batches(dbs: list[Path], batch: int) -> list[list[list[Any]]]:
    """The drain's rows as the cloud COPYs them, column lists per batch of each gateway (built
    before the timing starts: the ceiling times the COPY, not the reading of the stores)."""
    out: list[list[list[Any]]] = []
    for k, db in enumerate(dbs):
        con = duckdb.connect(str(db), read_only=True)
        try:
            rows = con.execute(
                "SELECT device_id, metric, ts, value_num, value_bool, value_str, received_at"
                " FROM readings ORDER BY seq"
            ).fetchall()
        finally:
            con.close()
        series: dict[tuple[str, str], int] = {}
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            m = len(part)
            cols = [list(c) for c in zip(*part, strict=True)]
            ids = [series.setdefault((r[0], r[1]), len(series) + 1) for r in part]
            out.append([
                ["org"] * m, [f"gw-{k}"] * m, [T0] * m, ids, cols[0], cols[1], cols[2], cols[3],
                cols[4], cols[5], cols[6], [0] * m, ["boot"] * m, list(range(m)),
            ])  # fmt: skip
    return out


def measure_ceiling(url: str, batches: list[list[list[Any]]], n: int) -> dict[str, Any]:
    """Binary COPY of the same rows into an unindexed table, one transaction per batch, one
    connection (durability defaults: each commit waits for its WAL flush)."""
    import psycopg

    with (
        scratch_schema(url, "iotsphere_drain_ceiling") as schema_url,
        psycopg.connect(schema_url, autocommit=True) as conn,
    ):
        conn.execute(
            "CREATE TABLE raw_readings ("
            + ", ".join(f"{name} {kind}" for name, kind in CEILING_COLUMNS)
            + ")"
        )
        names = ", ".join(name for name, _ in CEILING_COLUMNS)
        pg = postmaster_pid(url)
        pids = {"bench": [os.getpid()], **({"postgresql": [pg]} if pg is not None else {})}
        cpu0, started = cpu_now(pids), time.perf_counter()
        for cols in batches:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(f"COPY raw_readings ({names}) FROM STDIN (FORMAT BINARY)") as copy,
            ):
                copy.set_types([kind for _, kind in CEILING_COLUMNS])
                for row in zip(*cols, strict=True):
                    copy.write_row(row)
        seconds, cpu1 = time.perf_counter() - started, cpu_now(pids)
        copied = conn.execute("SELECT count(*) FROM raw_readings").fetchall()[0][0]
    if copied != n:
        raise SystemExit(f"ceiling: {copied} rows copied, not {n:,}")
    return {
        "seconds": round(seconds, 2),
        "readings_per_s": round(n / seconds),
        **cpu_figures(cpu0, cpu1, n, seconds),
    }


def disk_per_million(settings: CloudSettings, n: int) -> float:
    """MB per million readings of the cloud's readings: the whole DuckDB file (readings are
    nearly all of it), or PostgreSQL's readings partitions with their indexes."""
    if settings.database_url is not None:
        return per_million(readings_size(settings.database_url))
    return round(settings.db_path.stat().st_size / n, 1)


def print_peer(peer: dict[str, Any], engine: str) -> None:
    print(
        f"  {engine}: {peer['seconds']:.2f} s: {peer['readings_per_s']:,} readings/s, "
        f"{peer['bytes_per_reading']} bytes/reading ({peer['batches']} batches), "
        f"{peer['mb_per_million_readings']} MB per million readings",
        flush=True,
    )


class PeakRss:
    """The peak RSS of each named process, or of the largest process of its tree (`cloud serve
    --workers N`: a supervisor and N workers; each worker is a process of its own)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {k: psutil.Process(p) for k, p in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for k, p in self.procs.items():
                with contextlib.suppress(psutil.Error):  # the process may just have exited
                    rss = [p.memory_info().rss]
                    for child in p.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            rss.append(child.memory_info().rss)
                    self.peak[k] = max(self.peak[k], *rss)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {k: round(v / 2**20, 1) for k, v in self.peak.items()}


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the cloud exited at start")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the cloud did not become ready")


def status(gw_dir: Path) -> dict[str, Any]:
    """The running gateway's status from its admin API (what `gateway status` asks), without
    starting a CLI process per poll: that would steal a core from the processes measured."""
    url = running_gateway_url(gw_dir / "run")
    if url is None:
        raise LookupError("not running yet")
    secret = admin_secret(gw_dir)
    r = httpx.get(f"{url}/admin/status", headers={"Authorization": f"Bearer {secret}"}, timeout=5)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def postmaster_pid(url: str) -> int | None:
    """The local PostgreSQL server's pid (from its data directory), to count its CPU; None when
    the server is elsewhere or the file cannot be read (as bench/cloud_api.py does)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchall()[0][0]
        pid = int((Path(str(data_dir)) / "postmaster.pid").read_text().split("\n", 1)[0])
    except (psycopg.Error, OSError, ValueError, TypeError):
        return None
    return pid if psutil.pid_exists(pid) else None


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, the exited ones it waited for included
    (a postmaster's backends, uvicorn's workers)."""
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        children = root.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = float(total)
    for child in children:
        with contextlib.suppress(psutil.Error):  # it may just have exited
            c = child.cpu_times()
            total += c.user + c.system
    return float(total)


@dataclass
class Drain:
    """The timed part of a run: from the first acknowledged batch to every backlog 0."""

    started: float  # monotonic, when the gateways were started
    first_ok: float | None = None  # monotonic, when the first batch was acknowledged
    acked_at_first: int = 0  # readings acknowledged by then (all gateways): not timed
    done: float = 0.0  # monotonic, every backlog 0 (or the 600 s limit)
    syncs: list[dict[str, Any]] = field(default_factory=list)  # each gateway's last `sync`
    cpu_at_first: dict[str, float] = field(default_factory=dict)
    cpu_at_done: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        # From the first acknowledged batch (the cloud and a gateway are up) to backlog 0.
        return self.done - (self.first_ok or self.started)

    def total(self, key: str) -> int:
        return sum(int(st.get(key) or 0) for st in self.syncs)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=40_000, help="readings per sync batch")
    ap.add_argument("--devices", type=int, default=20, help="split over the gateways")
    ap.add_argument("--gateways", type=int, default=4, help="gateways draining at once")
    ap.add_argument(
        "--workers", default="1",
        help="cloud serve --workers, a comma-separated list to compare (PostgreSQL only above 1)",
    )  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1, help="repetitions, interleaved")
    ap.add_argument(
        "--replay", action="store_true",
        help="also the cloud side alone: each round's batches encoded and signed beforehand",
    )  # fmt: skip
    ap.add_argument("--database", help="postgresql:// URL: the cloud under test runs there")
    ap.add_argument(
        "--private-postgres", action="store_true",
        help="as --database, on a throwaway PostgreSQL cluster started for the run",
    )  # fmt: skip
    ap.add_argument(
        "--smoke", action="store_true",
        help="seconds, tiny sizes (40,000 readings from 2 gateways in 5,000-reading batches): "
        "checks that the benchmark still runs, as the test suite does",
    )  # fmt: skip
    args = ap.parse_args()
    if args.smoke:
        args.readings, args.batch, args.devices, args.gateways = 40_000, 5_000, 4, 2
        args.rounds = 1
    try:
        args.workers = [int(w) for w in str(args.workers).split(",")]
    except ValueError:
        ap.error("--workers takes whole numbers, e.g. 1,2")
    if min(args.readings, args.batch, args.devices, args.gateways, args.rounds, *args.workers) < 1:
        ap.error("--readings, --batch, --devices, --gateways, --rounds, --workers must be positive")
    if args.devices < args.gateways:
        ap.error("--devices must be at least --gateways: each gateway has its own devices")
    if args.readings // args.gateways <= args.batch:
        ap.error("each gateway's readings must exceed --batch: the drain is timed from the first"
                 " acked batch")  # fmt: skip
    if max(args.workers) > 1 and not (args.database or args.private_postgres):
        ap.error("--workers above 1 needs PostgreSQL (--database or --private-postgres)")
    return args


def start_cloud(
    work: Path, cloud_dir: Path, workers: int
) -> tuple[subprocess.Popen[bytes], str, BinaryIO]:
    """`iotsphere cloud serve` on a free port: (the process, its URL, its open log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cloud_log = (work / "cloud.log").open("ab")
    cloud = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "cloud", "serve", "--data-dir", str(cloud_dir),
         "--port", str(port), "--workers", str(workers)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=cloud_log,
    )  # fmt: skip
    return cloud, url, cloud_log


def enroll(url: str, cloud_dir: Path, gw_dir: Path) -> None:
    """Add a gateway to the cloud and enroll the gateway's data dir with its token."""
    token = json.loads(cli("cloud", "gateway", "add", gw_dir.name, "--data-dir", str(cloud_dir)))
    cli("gateway", "enroll", "--cloud", url, "--token", token["enrollment_token"],
        "--data-dir", str(gw_dir))  # fmt: skip


def start_gateway(work: Path, gw_dir: Path) -> subprocess.Popen[bytes]:
    gw_log = (work / f"{gw_dir.name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "common.cli", "gateway", "run", "--data-dir", str(gw_dir),
         "--mqtt-port", "0", "--coap-port", "0", "--http-port", "0",
         "--mqtts-port", "0", "--https-port", "0",
         *os.environ.get("GATEWAY_ARGS", "").split()],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=gw_log,
    )  # fmt: skip


def cpu_now(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of process trees, and `host`: the whole host's
    busy CPU seconds (all cores), whose growth beyond the groups' is other processes' work."""
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    return {"host": busy} | {name: sum(tree_cpu(p) for p in group) for name, group in pids.items()}


def cpu_figures(
    before: dict[str, float], after: dict[str, float], n: int, seconds: float
) -> dict[str, Any]:
    """CPU us per reading of each group, and the cores other processes of the host kept busy
    meanwhile (this one's polling included): near 0 only on a quiet host."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    ours = sum(v for k, v in used.items() if k != "host")
    return {
        "cpu_us_per_reading": {
            k: round(1e6 * v / max(n, 1), 2) for k, v in used.items() if k != "host"
        },
        "other_processes_cores": round(max(0.0, used["host"] - ours) / max(seconds, 1e-3), 2),
    }


def time_drain(
    gateways: list[subprocess.Popen[bytes]], gw_dirs: list[Path], work: Path, n: int,
    pids: dict[str, list[int]],
) -> Drain:  # fmt: skip
    """Poll the gateways' sync status until all n readings are acknowledged (600 s at most)."""
    drain = Drain(started=time.monotonic())
    while time.monotonic() - drain.started < 600:
        for gateway, gw_dir in zip(gateways, gw_dirs, strict=True):
            if gateway.poll() is not None:
                raise SystemExit(f"a gateway exited; see {work / (gw_dir.name + '.log')}")
        try:
            drain.syncs = [status(d)["sync"] for d in gw_dirs]
        except (LookupError, httpx.HTTPError):
            time.sleep(0.2)
            continue
        if drain.first_ok is None and drain.total("successes") > 0:
            drain.first_ok = time.monotonic()
            drain.cpu_at_first = cpu_now(pids)
            drain.acked_at_first = drain.total("readings_acked")
        if drain.total("backlog_readings") == 0 and drain.total("readings_acked") >= n:
            break
        time.sleep(0.05)
    drain.done = time.monotonic()
    drain.cpu_at_done = cpu_now(pids)
    return drain


def cloud_counts(cloud_dir: Path, url: str | None) -> tuple[int, int]:
    """(readings, distinct (device, metric, ts)) in the cloud's store, read after it stopped."""
    query = "SELECT count(*), count(DISTINCT (device_id, metric, ts)) FROM readings"
    if url is not None:
        import psycopg

        with psycopg.connect(url) as pg:
            row = pg.execute(query).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
    con = duckdb.connect(str(cloud_dir / "cloud.duckdb"), read_only=True)
    stored, distinct = con.execute(query).fetchall()[0]
    con.close()
    return stored, distinct


def drain_once(
    args: argparse.Namespace, work: Path, pristine: list[Path], url: str | None, workers: int,
    tag: str,
) -> dict[str, Any]:  # fmt: skip
    """One drain: a fresh cloud (store) with `workers`, the pristine backlogs copied, every
    gateway enrolled and started at once. Its figures, exactly-once checked."""
    n = args.readings
    run_dir = work / tag
    cloud_dir = run_dir / "cloud"
    gw_dirs = []
    for src in pristine:
        gw_dir = run_dir / src.name
        gw_dir.mkdir(parents=True)
        shutil.copy(src / "gateway.duckdb", gw_dir / "gateway.duckdb")
        (gw_dir / "gateway.toml").write_text(
            "[gateway]\n"
            f"sync_batch_max_readings = {args.batch}\n"
            "sync_tick_s = 0.05\nsync_batch_max_age_s = 0.05\nsync_backoff_max_s = 1.0\n"
        )
        gw_dirs.append(gw_dir)
    with contextlib.ExitStack() as stack:
        cloud_url = None
        if url is not None:
            cloud_url = stack.enter_context(scratch_schema(url, f"iotsphere_drain_{tag}"))
            os.environ["IOTSPHERE_DATABASE_URL"] = cloud_url  # `cloud serve`, `gateway add`
        cloud, http_url, cloud_log = start_cloud(run_dir, cloud_dir, workers)
        gateways: list[subprocess.Popen[bytes]] = []
        try:
            wait_ready(http_url, cloud)
            for gw_dir in gw_dirs:
                enroll(http_url, cloud_dir, gw_dir)
            gateways = [start_gateway(run_dir, d) for d in gw_dirs]
            pids = {"gateways": [g.pid for g in gateways], "cloud": [cloud.pid]}
            if cloud_url is not None and (pg := postmaster_pid(cloud_url)) is not None:
                pids["postgresql"] = [pg]
            rss = PeakRss({"cloud": cloud.pid, **{f"gw{k}": g.pid for k, g in enumerate(gateways)}})
            drain = time_drain(gateways, gw_dirs, run_dir, n, pids)
            peaks = rss.stop()
        finally:
            for g in gateways:
                g.terminate()
            for g in gateways:
                g.wait(30)
            cloud.terminate()
            cloud.wait(30)
            cloud_log.close()
        stored, distinct = cloud_counts(cloud_dir, cloud_url)
        os.environ.pop("IOTSPHERE_DATABASE_URL", None)
    timed = n - drain.acked_at_first if drain.first_ok is not None else n
    rate = timed / max(drain.seconds, 1e-3)
    return {
        "workers": workers,
        "drain_s": round(drain.seconds, 2),
        "readings_per_s": round(rate),
        "bytes_per_reading": round(drain.total("bytes_sent") / n, 2),
        "batches": drain.total("successes"),
        "retries": drain.total("retries"),
        "peak_rss_mb": {
            "gateway": max(v for k, v in peaks.items() if k != "cloud"),
            "cloud": peaks["cloud"],
        },
        **cpu_figures(drain.cpu_at_first, drain.cpu_at_done, timed, drain.seconds),
        "cloud_readings": stored,
        "cloud_distinct": distinct,
        "exactly_once": stored == distinct == n,
    }


def signed_batches(gw_dir: Path, batch: int) -> list[tuple[bytes, dict[str, str], int]]:
    """An enrolled gateway's whole backlog as the requests its sync would send (body, headers
    with a fresh signature, readings), built before the timing starts: what the replay sends."""
    identity = load_identity(gw_dir)
    assert identity is not None
    signer = RequestSigner(identity.gateway_id, load_private_key(key_path(gw_dir)), SystemClock())
    store = GatewayStore(gw_dir / "gateway.duckdb")
    out = []
    try:
        cursor, now = 0, int(time.time() * 1000)
        while True:
            rows, _ = store.reading_columns_for_sync(cursor, batch)
            if not rows:
                break
            body, ctype, cenc = encode_batch(
                SyncBatch.create(
                    gateway_id=identity.gateway_id, first_seq=cursor + 1,
                    last_seq=rows.seq[-1], boot_id="replay", gateway_clock_ms=now,
                    readings=rows, counters=store.counters(),
                    epochs=store.epochs_for(rows.seq[0], rows.seq[-1]),
                )
            )  # fmt: skip
            headers = {"Content-Type": ctype, "Content-Encoding": cenc,
                       **signer.headers("POST", BATCHES_PATH, body)}  # fmt: skip
            out.append((body, headers, len(rows)))
            cursor = rows.seq[-1]
    finally:
        store.close()
    return out


def replay_once(
    args: argparse.Namespace, work: Path, pristine: list[Path], url: str | None, workers: int,
    tag: str,
) -> dict[str, Any]:  # fmt: skip
    """The cloud side alone: as drain_once, but the gateways' batches are read, encoded and
    signed beforehand and sent by one thread per gateway (one batch in flight each, in order),
    so the gateways' own CPU (on their own machines in service) is not taken from the cloud
    and PostgreSQL on this host. Timed from the first request to the last ack."""
    n = args.readings
    run_dir = work / tag
    cloud_dir = run_dir / "cloud"
    gw_dirs = []
    for src in pristine:
        gw_dir = run_dir / src.name
        gw_dir.mkdir(parents=True)
        shutil.copy(src / "gateway.duckdb", gw_dir / "gateway.duckdb")
        gw_dirs.append(gw_dir)
    with contextlib.ExitStack() as stack:
        cloud_url = None
        if url is not None:
            cloud_url = stack.enter_context(scratch_schema(url, f"iotsphere_drain_{tag}"))
            os.environ["IOTSPHERE_DATABASE_URL"] = cloud_url
        cloud, http_url, cloud_log = start_cloud(run_dir, cloud_dir, workers)
        try:
            wait_ready(http_url, cloud)
            for gw_dir in gw_dirs:
                enroll(http_url, cloud_dir, gw_dir)
            requests = [signed_batches(d, args.batch) for d in gw_dirs]
            pids = {"cloud": [cloud.pid]}
            if cloud_url is not None and (pg := postmaster_pid(cloud_url)) is not None:
                pids["postgresql"] = [pg]
            errors: list[str] = []

            def send(batches: list[tuple[bytes, dict[str, str], int]]) -> None:
                with httpx.Client(base_url=http_url, timeout=120) as client:
                    for body, headers, _ in batches:
                        r = client.post(BATCHES_PATH, content=body, headers=headers)
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                            return

            threads = [threading.Thread(target=send, args=(b,)) for b in requests]
            cpu0, started = cpu_now(pids), time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds, cpu1 = time.perf_counter() - started, cpu_now(pids)
        finally:
            cloud.terminate()
            cloud.wait(30)
            cloud_log.close()
        if errors:
            raise SystemExit(f"replay: the cloud refused a batch: {errors[0]}")
        stored, distinct = cloud_counts(cloud_dir, cloud_url)
        os.environ.pop("IOTSPHERE_DATABASE_URL", None)
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "readings_per_s": round(n / seconds),
        **cpu_figures(cpu0, cpu1, n, seconds),
        "cloud_readings": stored,
        "cloud_distinct": distinct,
        "exactly_once": stored == distinct == n,
    }


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values)), "min": round(min(values)),
            "max": round(max(values)), "runs": [round(v) for v in values]}  # fmt: skip


def report(
    args: argparse.Namespace, rounds: list[dict[str, Any]], peers: dict[str, dict[str, Any]],
    fill_s: float,
) -> None:  # fmt: skip
    """The human lines and the final JSON line: per worker count, the drain's median and
    min-max over the rounds, its share of the same round's ceiling and of the in-process peer
    on its own engine. The top-level figures are the best worker count's medians."""
    n = args.readings
    engine = "postgresql" if "postgresql" in peers else "duckdb"
    peer = peers[engine]
    by_workers: dict[str, Any] = {}
    ceiling_known = any(r.get("ceiling") for r in rounds)
    for w in args.workers:
        runs = [r["drains"][str(w)] for r in rounds]
        shares = [d["readings_per_s"] / r["ceiling"]["readings_per_s"]
                  for d, r in zip(runs, rounds, strict=True) if r.get("ceiling")]  # fmt: skip
        cpu_keys = runs[0]["cpu_us_per_reading"].keys()
        by_workers[str(w)] = {
            "readings_per_s": spread([d["readings_per_s"] for d in runs]),
            "share_of_ceiling": round(statistics.median(shares), 3) if shares else None,
            "cpu_us_per_reading": {
                k: round(statistics.median(d["cpu_us_per_reading"][k] for d in runs), 2)
                for k in cpu_keys
            },
            "other_processes_cores": round(
                statistics.median(d["other_processes_cores"] for d in runs), 2
            ),
            "exactly_once": all(d["exactly_once"] for d in runs),
            "runs": runs,
        }
        replays = [r["replays"][str(w)] for r in rounds if "replays" in r]
        if replays:
            by_workers[str(w)]["replay"] = {
                "readings_per_s": spread([p["readings_per_s"] for p in replays]),
                "share_of_ceiling": round(
                    statistics.median(
                        p["readings_per_s"] / r["ceiling"]["readings_per_s"]
                        for p, r in zip(replays, rounds, strict=True)
                        if r.get("ceiling")
                    ),
                    3,
                )
                if ceiling_known
                else None,
                "cpu_us_per_reading": {
                    k: round(statistics.median(p["cpu_us_per_reading"][k] for p in replays), 2)
                    for k in replays[0]["cpu_us_per_reading"]
                },
                "other_processes_cores": round(
                    statistics.median(p["other_processes_cores"] for p in replays), 2
                ),
                "exactly_once": all(p["exactly_once"] for p in replays),
                "runs": replays,
            }
    best_w = max(by_workers, key=lambda w: by_workers[w]["readings_per_s"]["median"])
    best = by_workers[best_w]
    rate = best["readings_per_s"]["median"]
    last = best["runs"][-1]
    ceilings = [r["ceiling"]["readings_per_s"] for r in rounds if r.get("ceiling")]
    figures = {
        "readings": n,
        "gateways": args.gateways,
        "rounds": args.rounds,
        "best_workers": int(best_w),
        "readings_per_s": rate,
        "bytes_per_reading": last["bytes_per_reading"],
        "batches": last["batches"],
        "retries": last["retries"],
        "peak_rss_mb": {
            "gateway": max(d["peak_rss_mb"]["gateway"] for d in best["runs"]),
            "cloud": max(d["peak_rss_mb"]["cloud"] for d in best["runs"]),
        },
        "by_workers": by_workers,
        "ceiling_readings_per_s": spread(ceilings) if ceilings else None,
        "share_of_ceiling": best["share_of_ceiling"],
        "batch_readings": args.batch,
        "engine": engine,
        "in_process_peer": peers["duckdb"],
        **({"in_process_peer_postgresql": peers["postgresql"]} if "postgresql" in peers else {}),
        "share_of_in_process_peer": round(rate / peer["readings_per_s"], 3),
        "prefill_readings_per_s": round(n / fill_s),
        "smoke": args.smoke,
    }
    ok = {
        "drain >= 100,000 readings/s": rate >= 100_000,
        "<= 12 bytes per reading": last["bytes_per_reading"] <= 12,
        "gateway RSS <= 250 MB": figures["peak_rss_mb"]["gateway"] <= 250,
        "cloud RSS <= 250 MB": figures["peak_rss_mb"]["cloud"] <= 250,
        "every reading in the cloud exactly once": all(
            d["exactly_once"]
            for w in by_workers.values()
            for d in [*w["runs"], *w.get("replay", {}).get("runs", [])]
        ),
    }
    if ceilings:
        c = figures["ceiling_readings_per_s"]
        print(f"ceiling (binary COPY, no index): median {c['median']:,} readings/s "
              f"(min {c['min']:,}, max {c['max']:,})")  # fmt: skip
    for w, b in by_workers.items():
        r = b["readings_per_s"]
        share = f", {b['share_of_ceiling']:.2f} x the ceiling" if b["share_of_ceiling"] else ""
        print(f"drain, {args.gateways} gateways, {w} worker(s), {engine}: median {r['median']:,} "
              f"readings/s (min {r['min']:,}, max {r['max']:,}){share}; CPU us/reading "
              f"{b['cpu_us_per_reading']}; other processes kept "
              f"{b['other_processes_cores']} cores busy")  # fmt: skip
        if "replay" in b:
            p = b["replay"]
            share = f", {p['share_of_ceiling']:.2f} x the ceiling" if p["share_of_ceiling"] else ""
            q = p["readings_per_s"]
            print(f"  replay (cloud side alone, batches encoded and signed beforehand): median "
                  f"{q['median']:,} readings/s (min {q['min']:,}, max {q['max']:,}){share}; "
                  "CPU us/reading "
                  f"{p['cpu_us_per_reading']}; other processes kept "
                  f"{p['other_processes_cores']} cores busy")  # fmt: skip
    print(f"best: {rate:,} readings/s with {best_w} worker(s) = "
          f"{figures['share_of_in_process_peer']:.2f} x the in-process peer's "
          f"{peer['readings_per_s']:,}")  # fmt: skip
    print(f"wire: {last['bytes_per_reading']:.2f} bytes/reading ({last['batches']} batches)")
    print(f"peak RSS: gateway {figures['peak_rss_mb']['gateway']} MB, "
          f"cloud {figures['peak_rss_mb']['cloud']} MB")  # fmt: skip
    print(f"cloud: {last['cloud_readings']:,} readings, {last['cloud_distinct']:,} distinct")
    for what, met in ok.items():
        print(f"  {'met   ' if met else 'MISSED'} {what}")
    print(json.dumps({"bench": "sync_drain", **figures, "targets": ok}))


def main() -> int:
    args = parse_args()
    # SIGTERM ends the run like Ctrl-C: through the finally block that stops the servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with database(args.database, args.private_postgres) as url:
        return run(args, url)


def run(args: argparse.Namespace, url: str | None) -> int:
    n = args.readings
    work = Path(tempfile.mkdtemp(prefix="iotsphere-drain-"))
    pristine = [work / "pristine" / f"gw{k}" for k in range(args.gateways)]
    shares = [n // args.gateways + (k < n % args.gateways) for k in range(args.gateways)]
    devices = [args.devices // args.gateways + (k < args.devices % args.gateways)
               for k in range(args.gateways)]  # fmt: skip
    print(f"prefilling {n:,} readings in {args.gateways} gateway stores ...", flush=True)
    fill_s = 0.0
    for k, gw_dir in enumerate(pristine):
        gw_dir.mkdir(parents=True)
        fill_s += prefill(gw_dir / "gateway.duckdb", shares[k], devices[k], f"g{k}-dev")
    print(f"  {fill_s:.1f} s ({n / fill_s:,.0f} readings/s into the gateway stores)")
    print("in-process peer: read, encode, decode, apply; one process, no HTTP ...", flush=True)
    dbs = [d / "gateway.duckdb" for d in pristine]
    settings = CloudSettings(data_dir=work / "peer-cloud")
    peers = {"duckdb": in_process_peer(dbs, settings, n, args.batch)}
    print_peer(peers["duckdb"], "DuckDB")
    if url is not None:
        with scratch_schema(url, "iotsphere_drain_peer") as peer_url:
            settings = CloudSettings(data_dir=work / "peer-pg", database_url=peer_url)
            peers["postgresql"] = in_process_peer(dbs, settings, n, args.batch)
        print_peer(peers["postgresql"], "PostgreSQL")
    ceiling_rows = ceiling_batches(dbs, args.batch) if url is not None else []
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            this: dict[str, Any] = {"drains": {}}
            if url is not None:
                this["ceiling"] = measure_ceiling(url, ceiling_rows, n)
                c = this["ceiling"]
                print(f"round {r + 1}: ceiling {c['readings_per_s']:,} readings/s, CPU us/reading "
                      f"{c['cpu_us_per_reading']}, other processes "
                      f"{c['other_processes_cores']} cores", flush=True)  # fmt: skip
            for w in args.workers:
                d = drain_once(args, work, pristine, url, w, f"r{r}w{w}")
                this["drains"][str(w)] = d
                print(f"round {r + 1}: drain with {w} worker(s): {d['readings_per_s']:,} "
                      f"readings/s, exactly once: {d['exactly_once']}, CPU us/reading "
                      f"{d['cpu_us_per_reading']}, other processes "
                      f"{d['other_processes_cores']} cores", flush=True)  # fmt: skip
                if args.replay:
                    p = replay_once(args, work, pristine, url, w, f"r{r}w{w}replay")
                    this.setdefault("replays", {})[str(w)] = p
                    print(f"round {r + 1}: replay (cloud side alone) with {w} worker(s): "
                          f"{p['readings_per_s']:,} readings/s, exactly once: "
                          f"{p['exactly_once']}, CPU us/reading {p['cpu_us_per_reading']}, "
                          f"other processes {p['other_processes_cores']} cores",
                          flush=True)  # fmt: skip
            rounds.append(this)
    finally:
        if os.environ.get("KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)
    report(args, rounds, peers, fill_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
