"""Sync drain benchmark: a gateway with a backlog of unsynced readings catches up with the cloud.

    .venv/bin/python bench/sync_drain.py [--readings N] [--batch B] [--devices D]

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

Targets (issue 4): >= 100,000 readings/s (1M in <= 10 s), <= 12 bytes per reading, RSS <= 250 MB
each. Printed as met / missed; a measurement, not a test. Output: human lines, then one JSON line.
Environment: KEEP=1 keeps the work dir (logs, both databases); GATEWAY_ARGS="-v" adds flags to
`gateway run` (e.g. debug logs with per-batch timings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.model import Reading  # noqa: E402
from edge.backend import admin_secret, running_gateway_url  # noqa: E402
from edge.store import Batch, GatewayStore  # noqa: E402

T0 = 1_764_300_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=40_000, help="readings per sync batch")
    ap.add_argument("--devices", type=int, default=20)
    args = ap.parse_args()
    n = args.readings
    work = Path(tempfile.mkdtemp(prefix="iotsphere-drain-"))
    cloud_dir, gw_dir = work / "cloud", work / "gateway"
    gw_dir.mkdir(parents=True)
    print(f"prefilling {n:,} readings ...", flush=True)
    fill_s = prefill(gw_dir / "gateway.duckdb", n, args.devices)
    print(f"  {fill_s:.1f} s ({n / fill_s:,.0f} readings/s into the gateway store)")
    (gw_dir / "gateway.toml").write_text(
        "[gateway]\n"
        f"sync_batch_max_readings = {args.batch}\n"
        "sync_tick_s = 0.05\nsync_batch_max_age_s = 0.05\nsync_backoff_max_s = 1.0\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cloud_log = (work / "cloud.log").open("wb")
    cloud = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "cloud", "serve", "--data-dir", str(cloud_dir),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=cloud_log,
    )  # fmt: skip
    gateway: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(url, cloud)
        token = json.loads(cli("cloud", "gateway", "add", "drain", "--data-dir", str(cloud_dir)))
        cli("gateway", "enroll", "--cloud", url, "--token", token["enrollment_token"],
            "--data-dir", str(gw_dir))  # fmt: skip
        gw_log = (work / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "gateway", "run", "--data-dir", str(gw_dir),
             "--mqtt-port", "0", "--coap-port", "0", "--http-port", "0",
             *os.environ.get("GATEWAY_ARGS", "").split()],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=gw_log,
        )  # fmt: skip
        rss = PeakRss({"gateway": gateway.pid, "cloud": cloud.pid})
        print(f"  gateway pid {gateway.pid}, cloud pid {cloud.pid}", flush=True)
        first_ok: float | None = None
        started = time.monotonic()
        st: dict[str, Any] = {}
        while time.monotonic() - started < 600:
            if gateway.poll() is not None:
                raise SystemExit(f"the gateway exited; see {work / 'gateway.log'}")
            try:
                st = status(gw_dir)["sync"]
            except (LookupError, httpx.HTTPError):
                time.sleep(0.2)
                continue
            if first_ok is None and st.get("successes", 0) > 0:
                first_ok = time.monotonic()
            if st.get("backlog_readings") == 0 and st.get("readings_acked", 0) >= n:
                break
            time.sleep(0.05)
        done = time.monotonic()
        peaks = rss.stop()
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        cloud.terminate()
        cloud.wait(30)
        cloud_log.close()
    con = duckdb.connect(str(cloud_dir / "cloud.duckdb"), read_only=True)
    stored, distinct = con.execute(
        "SELECT count(*), count(DISTINCT (device_id, metric, ts)) FROM readings"
    ).fetchall()[0]
    con.close()
    # From the first acknowledged batch (the cloud and the gateway are up) to backlog 0.
    seconds = done - (first_ok or started)
    rate = n / seconds
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
    }
    ok = {
        "drain >= 100,000 readings/s": rate >= 100_000,
        "<= 12 bytes per reading": per_reading <= 12,
        "gateway RSS <= 250 MB": peaks["gateway"] <= 250,
        "cloud RSS <= 250 MB": peaks["cloud"] <= 250,
        "every reading in the cloud exactly once": stored == distinct == n,
    }
    print(f"drained {n:,} readings in {seconds:.2f} s: {rate:,.0f} readings/s")
    print(f"wire: {per_reading:.2f} bytes/reading ({st.get('successes')} batches)")
    print(f"peak RSS: gateway {peaks['gateway']} MB, cloud {peaks['cloud']} MB")
    print(f"cloud: {stored:,} readings, {distinct:,} distinct")
    for what, met in ok.items():
        print(f"  {'met   ' if met else 'MISSED'} {what}")
    print(json.dumps({"bench": "sync_drain", **figures, "targets": ok}))
    if os.environ.get("KEEP") is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
