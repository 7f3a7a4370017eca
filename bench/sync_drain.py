"""Sync drain benchmark: a gateway with a backlog of unsynced readings catches up with the cloud.

    .venv/bin/python bench/sync_drain.py [--readings N] [--batch B] [--devices D] [--smoke]
        [--database postgresql://USER@HOST:PORT/DB | --private-postgres]

What it does, everything on 127.0.0.1 with free ports and real processes:
  1. fills a fresh gateway data dir with N readings (default 1,000,000: D devices x 10
     metrics, one message per device per second, random-walk values rounded to 0.01 as
     sensors report them) through GatewayStore.commit, as ingest would have while offline;
  2. starts `iotsphere cloud serve` (DuckDB), adds a gateway, enrolls the data dir with
     `iotsphere gateway enroll`;
  3. starts `iotsphere gateway run` and measures the time from its first successful batch to
     backlog 0 (from `gateway status`), readings per second, request bytes per reading on the
     wire (gzip'd CBOR bodies, resends included) and the peak RSS of both processes;
  4. checks the cloud holds exactly N readings.
Before 2., the peer in the same run: the same backlog read, encoded, decoded and applied to a
fresh cloud store serially in this process (no HTTP, no pipelining); the drain's rate is also
given as a multiple of the peer's, which drifts less than absolute figures on a shared host.
--smoke: 40,000 readings in 5,000-reading batches, in seconds (the test suite runs it).
--database URL: the cloud under test runs on that PostgreSQL database (`cloud serve` and the
`cloud` commands get IOTSPHERE_DATABASE_URL), and the in-process peer runs on both engines in
the same run (on PostgreSQL in a scratch schema of that database, dropped afterwards); disk per
million readings (table + indexes) is reported for both. --private-postgres: the same on a
throwaway cluster (tests/support/postgres.py) started for the run.

Targets (issue 4): >= 100,000 readings/s (1M in <= 10 s), <= 12 bytes per reading, RSS <= 250 MB
each. Printed as met / missed; a measurement, not a test. Output: human lines, then one JSON line.
Environment: KEEP=1 keeps the work dir (logs, both databases); GATEWAY_ARGS="-v" adds flags to
`gateway run` (e.g. debug logs with per-batch timings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
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

from bench.support.pg_bench import database, per_million, readings_size, scratch_schema  # noqa: E402
from cloud.app.services import open_store  # noqa: E402
from cloud.app.settings import CloudSettings  # noqa: E402
from cloud.sync.store import SyncStore  # noqa: E402
from common.model import Reading  # noqa: E402
from common.sync_wire import SyncBatch, decode_batch, encode_batch  # noqa: E402
from edge.admin.backend import admin_secret, running_gateway_url  # noqa: E402
from edge.ingest.mqtt.broker import free_port  # noqa: E402
from edge.storage.store import Batch, GatewayStore  # noqa: E402

T0 = 1_764_300_000_000


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


def prefill(db: Path, n: int, devices: int) -> float:
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
        chunk.append(Reading(f"dev-{dev:03d}", f"m{metric}", ts, v, ts + 3))
        i += 1
        if len(chunk) == 50_000 or i == n:
            store.commit(Batch(readings=chunk))
            chunk = []
    store.close()
    return time.perf_counter() - started


def in_process_peer(db: Path, settings: CloudSettings, n: int, batch: int) -> dict[str, Any]:
    """The peer measured in the same run: every step of a batch's life (read from the
    gateway store, build, encode with the wire's defaults, decode, apply to a fresh cloud
    store), serially in this one process: no HTTP, no signatures, no pipelining. The drain's
    readings/s over this one says what the processes, the network path and the overlap of
    gateway and cloud work cost or gain. The gateway store is only read (no cursor saved)."""

    async def run() -> dict[str, Any]:
        gw_store = GatewayStore(db)
        cloud = open_store(settings)
        try:
            sync = SyncStore(cloud.db)
            now = int(time.time() * 1000)
            org = await cloud.ensure_org("peer", now)
            gw = await cloud.create_gateway(org.id, "peer", "not-a-token-hash", now, now)
            cursor, sent, stored, wire_bytes, batches = 0, 0, 0, 0, 0
            started = time.perf_counter()
            while True:
                rows, _ = gw_store.reading_columns_for_sync(cursor, batch)
                if not rows:
                    break
                out = SyncBatch.create(
                    gateway_id=gw.gateway_id, first_seq=cursor + 1, last_seq=rows.seq[-1],
                    boot_id="peer", gateway_clock_ms=now, readings=rows,
                    counters=gw_store.counters(),
                    epochs=gw_store.epochs_for(rows.seq[0], rows.seq[-1]),
                )  # fmt: skip
                body, ctype, cenc = encode_batch(out)
                ack = await sync.apply_batch(org.id, decode_batch(body, ctype, cenc), now)
                cursor, sent, stored = rows.seq[-1], sent + len(rows), stored + ack.stored
                wire_bytes, batches = wire_bytes + len(body), batches + 1
            seconds = time.perf_counter() - started
        finally:
            cloud.close()
            gw_store.close()
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
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)

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


@dataclass
class Drain:
    """The timed part of a run: from the first acknowledged batch to backlog 0."""

    started: float  # monotonic, when the gateway was started
    first_ok: float | None = None  # monotonic, when its first batch was acknowledged
    acked_at_first: int = 0  # readings the first acknowledged batch(es) carried: not timed
    done: float = 0.0  # monotonic, backlog 0 (or the 600 s limit)
    sync: dict[str, Any] = field(default_factory=dict)  # the last `sync` status read

    @property
    def seconds(self) -> float:
        # From the first acknowledged batch (the cloud and the gateway are up) to backlog 0.
        return self.done - (self.first_ok or self.started)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=40_000, help="readings per sync batch")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--database", help="postgresql:// URL: the cloud under test runs there")
    ap.add_argument(
        "--private-postgres", action="store_true",
        help="as --database, on a throwaway PostgreSQL cluster started for the run",
    )  # fmt: skip
    ap.add_argument(
        "--smoke", action="store_true",
        help="seconds, tiny sizes (40,000 readings in 5,000-reading batches): checks that "
        "the benchmark still runs, as the test suite does",
    )  # fmt: skip
    args = ap.parse_args()
    if args.smoke:
        args.readings, args.batch, args.devices = 40_000, 5_000, 4
    if min(args.readings, args.batch, args.devices) < 1:
        ap.error("--readings, --batch and --devices must be positive")
    if args.readings <= args.batch:
        ap.error("--readings must exceed --batch: the drain is timed from the first acked batch")
    return args


def start_cloud(work: Path, cloud_dir: Path) -> tuple[subprocess.Popen[bytes], str, BinaryIO]:
    """`iotsphere cloud serve` on a free port: (the process, its URL, its open log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cloud_log = (work / "cloud.log").open("wb")
    cloud = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "cloud", "serve", "--data-dir", str(cloud_dir),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=cloud_log,
    )  # fmt: skip
    return cloud, url, cloud_log


def enroll(url: str, cloud_dir: Path, gw_dir: Path) -> None:
    """Add a gateway to the cloud and enroll the gateway's data dir with its token."""
    token = json.loads(cli("cloud", "gateway", "add", "drain", "--data-dir", str(cloud_dir)))
    cli("gateway", "enroll", "--cloud", url, "--token", token["enrollment_token"],
        "--data-dir", str(gw_dir))  # fmt: skip


def start_gateway(work: Path, gw_dir: Path) -> subprocess.Popen[bytes]:
    gw_log = (work / "gateway.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "common.cli", "gateway", "run", "--data-dir", str(gw_dir),
         "--mqtt-port", "0", "--coap-port", "0", "--http-port", "0",
         "--mqtts-port", "0", "--https-port", "0",
         *os.environ.get("GATEWAY_ARGS", "").split()],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=gw_log,
    )  # fmt: skip


def time_drain(gateway: subprocess.Popen[bytes], gw_dir: Path, work: Path, n: int) -> Drain:
    """Poll the gateway's sync status until all n readings are acknowledged (600 s at most)."""
    drain = Drain(started=time.monotonic())
    while time.monotonic() - drain.started < 600:
        if gateway.poll() is not None:
            raise SystemExit(f"the gateway exited; see {work / 'gateway.log'}")
        try:
            drain.sync = status(gw_dir)["sync"]
        except (LookupError, httpx.HTTPError):
            time.sleep(0.2)
            continue
        st = drain.sync
        if drain.first_ok is None and st.get("successes", 0) > 0:
            drain.first_ok = time.monotonic()
            drain.acked_at_first = st.get("readings_acked", 0)
        if st.get("backlog_readings") == 0 and st.get("readings_acked", 0) >= n:
            break
        time.sleep(0.05)
    drain.done = time.monotonic()
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


def report(
    args: argparse.Namespace, drain: Drain, peaks: dict[str, float],
    peers: dict[str, dict[str, Any]], fill_s: float, counts: tuple[int, int],
) -> None:  # fmt: skip
    """The human lines and the final JSON line. The drain is compared with the in-process peer
    on its own engine."""
    n = args.readings
    engine = "postgresql" if "postgresql" in peers else "duckdb"
    peer = peers[engine]
    stored, distinct = counts
    seconds, st = drain.seconds, drain.sync
    # Only the readings acknowledged inside the timed window: counting the first batch's too
    # (as before) overstated the rate by one batch (4% of 1M, 33% of a 4-batch smoke run).
    timed_readings = n - drain.acked_at_first if drain.first_ok is not None else n
    rate = timed_readings / max(seconds, 1e-3)
    per_reading = st.get("bytes_sent", 0) / n
    figures = {
        "readings": n,
        "drain_s": round(seconds, 2),
        "readings_per_s": round(rate),
        "bytes_per_reading": round(per_reading, 2),
        "batches": st.get("successes"),
        "retries": st.get("retries"),
        "peak_rss_mb": peaks,
        "cloud_readings": stored,
        "cloud_distinct": distinct,
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
        "<= 12 bytes per reading": per_reading <= 12,
        "gateway RSS <= 250 MB": peaks["gateway"] <= 250,
        "cloud RSS <= 250 MB": peaks["cloud"] <= 250,
        "every reading in the cloud exactly once": stored == distinct == n,
    }
    print(f"drained {n:,} readings ({engine}) in {seconds:.2f} s: {rate:,.0f} readings/s = "
          f"{figures['share_of_in_process_peer']:.2f} x the in-process peer's "
          f"{peer['readings_per_s']:,}")  # fmt: skip
    print(f"wire: {per_reading:.2f} bytes/reading ({st.get('successes')} batches)")
    print(f"peak RSS: gateway {peaks['gateway']} MB, cloud {peaks['cloud']} MB")
    print(f"cloud: {stored:,} readings, {distinct:,} distinct")
    for what, met in ok.items():
        print(f"  {'met   ' if met else 'MISSED'} {what}")
    print(json.dumps({"bench": "sync_drain", **figures, "targets": ok}))


def main() -> int:
    args = parse_args()
    # SIGTERM ends the run like Ctrl-C: through the finally block that stops both servers.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with database(args.database, args.private_postgres) as url:
        return run(args, url)


def run(args: argparse.Namespace, url: str | None) -> int:
    n = args.readings
    work = Path(tempfile.mkdtemp(prefix="iotsphere-drain-"))
    cloud_dir, gw_dir = work / "cloud", work / "gateway"
    gw_dir.mkdir(parents=True)
    print(f"prefilling {n:,} readings ...", flush=True)
    fill_s = prefill(gw_dir / "gateway.duckdb", n, args.devices)
    print(f"  {fill_s:.1f} s ({n / fill_s:,.0f} readings/s into the gateway store)")
    print("in-process peer: read, encode, decode, apply; one process, no HTTP ...", flush=True)
    gw_db = gw_dir / "gateway.duckdb"
    peers = {
        "duckdb": in_process_peer(gw_db, CloudSettings(data_dir=work / "peer-cloud"), n, args.batch)
    }
    print_peer(peers["duckdb"], "DuckDB")
    if url is not None:
        with scratch_schema(url, "iotsphere_drain_peer") as peer_url:
            settings = CloudSettings(data_dir=work / "peer-pg", database_url=peer_url)
            peers["postgresql"] = in_process_peer(gw_db, settings, n, args.batch)
        print_peer(peers["postgresql"], "PostgreSQL")
        os.environ["IOTSPHERE_DATABASE_URL"] = url  # `cloud serve` and `cloud gateway add`
    (gw_dir / "gateway.toml").write_text(
        "[gateway]\n"
        f"sync_batch_max_readings = {args.batch}\n"
        "sync_tick_s = 0.05\nsync_batch_max_age_s = 0.05\nsync_backoff_max_s = 1.0\n"
    )
    cloud, cloud_url, cloud_log = start_cloud(work, cloud_dir)
    gateway: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(cloud_url, cloud)
        enroll(cloud_url, cloud_dir, gw_dir)
        gateway = start_gateway(work, gw_dir)
        rss = PeakRss({"gateway": gateway.pid, "cloud": cloud.pid})
        print(f"  gateway pid {gateway.pid}, cloud pid {cloud.pid}", flush=True)
        drain = time_drain(gateway, gw_dir, work, n)
        peaks = rss.stop()
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        cloud.terminate()
        cloud.wait(30)
        cloud_log.close()
    report(args, drain, peaks, peers, fill_s, cloud_counts(cloud_dir, url))
    if os.environ.get("KEEP") is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
