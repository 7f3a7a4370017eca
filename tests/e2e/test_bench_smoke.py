"""Benchmarks cannot rot: each runs in its --smoke mode (seconds, tiny sizes, the same code
path) and must finish with its figures. Nothing about speed is asserted: only that the run
worked, its last line is JSON and the key figures in it are there."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import REPO


@dataclass(frozen=True)
class Bench:
    script: str
    figures: tuple[str, ...]  # dotted paths into the final JSON line; each must be present
    timeout_s: float  # about 5x the smoke run on the 2-core box (15 s at most so far)


BENCHES = (
    Bench(
        "ingest_mqtt.py",
        ("ceiling.msgs_per_s", "saturated.readings_per_s", "saturated.cpu_us_per_reading",
         "latency.readings_per_s", "latency.ingest_lag_at_end.p99_ms",
         "targets.share_of_ceiling.value"),
        90,
    ),
    Bench(
        "cloud_api.py",
        ("floor.p50_ms", "dashboard.p50_ms", "dashboard.p95_ms", "buckets.p95_ms",
         "overview.p95_ms", "buckets.buckets_per_answer", "dashboard_concurrent.requests_per_s",
         "versus_floor.dashboard_p50_x_floor", "versus_floor.buckets_p50_x_floor"),
        60,
    ),
    Bench(
        "ingest_coap.py",
        ("ceiling.per_s", "con.per_s", "con.p99_ms", "con.server_cpu_us_per_request",
         "non.per_s", "share_of_ceiling.con", "share_of_ceiling.non"),
        90,
    ),
    Bench(
        "sync_drain.py",
        ("readings_per_s", "bytes_per_reading", "peak_rss_mb.gateway", "peak_rss_mb.cloud",
         "in_process_peer.readings_per_s", "share_of_in_process_peer"),
        60,
    ),
    Bench(
        "sync_encoding.py",
        ("value_sets.decimal.in_use.bytes_per_reading", "value_sets.decimal.in_use.encode_ms",
         "value_sets.decimal.in_use.decode_ms", "value_sets.decimal.versus_baseline.bytes",
         "value_sets.float.in_use.bytes_per_reading", "value_sets.float.versus_baseline.bytes"),
        30,
    ),
    Bench(
        "alert_list.py",
        ("duckdb.open_page.server_p95_ms", "duckdb.open_page.bytes",
         "duckdb.severity_and_search.server_p95_ms", "duckdb.next_page.server_p95_ms",
         "worst.server_p95_ms", "worst.bytes"),
        60,
    ),
    Bench(
        "pg_driver.py",
        ("psycopg_sync_threads.copy.readings_per_s", "psycopg_sync_threads.user.p95_ms",
         "psycopg_sync_threads.latest.p95_ms", "psycopg_sync_threads.fetch.median_ms",
         "psycopg_async.copy.readings_per_s", "psycopg_async.latest.p95_ms"),
        30,
    ),
    Bench(
        "dashboard_live.py",
        ("duckdb.overview.before_all_devices.server_ms_p95", "duckdb.overview.after_paged.bytes",
         "duckdb.overview.after_paged.server_ms_p95", "duckdb.push.push_ms_p50",
         "duckdb.push.push_ms_p99"),
        90,
    ),
    Bench(  # the native layout alone where TimescaleDB is not installed (CI)
        "timescale.py",
        ("drain.native.readings_per_s", "sparse.24h queries, policy state.native buckets.p95_ms",
         "dense.MB per M uncompressed.native.readings"),
        60,
    ),
)  # fmt: skip


def _figure(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for key in path.split("."):
        assert isinstance(value, dict) and key in value, f"no {path!r} in the JSON line"
        value = value[key]
    return value


def _run(bench: Bench) -> tuple[int, str, str]:
    """The smoke run; on a timeout SIGTERM first, so the bench stops the servers it started."""
    proc = subprocess.Popen(
        [sys.executable, f"bench/{bench.script}", "--smoke"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=bench.timeout_s - 10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{bench.script} --smoke still running after {bench.timeout_s - 10:.0f} s:\n"
                    f"{err[-3000:]}{out[-3000:]}")  # fmt: skip
    return proc.returncode, out, err


@pytest.mark.parametrize(
    "bench",
    [pytest.param(b, id=b.script, marks=pytest.mark.timeout(b.timeout_s)) for b in BENCHES],
)
def test_bench_smoke(bench: Bench) -> None:
    code, out, err = _run(bench)
    assert code == 0, err[-3000:] + out[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) > 1, f"no human-readable lines before the JSON:\n{out}"
    result = json.loads(lines[-1])
    assert result["bench"] == bench.script.removesuffix(".py")
    for path in bench.figures:
        value = _figure(result, path)
        assert value is not None and value != "", f"{path} is empty: {value!r}"
        assert not (isinstance(value, float) and math.isnan(value)), f"{path} is NaN"


def test_every_benchmark_has_a_smoke_run() -> None:
    """A new bench/*.py script (one with a __main__) must join BENCHES to be kept working."""
    scripts = {
        p.name
        for p in (REPO / "bench").glob("*.py")
        if re.search(r'^if __name__ == "__main__":', p.read_text(), re.MULTILINE)
    }
    assert scripts == {b.script for b in BENCHES}
