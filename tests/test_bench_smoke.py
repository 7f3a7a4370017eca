"""Benchmarks cannot rot: each runs in its --smoke mode (seconds, tiny sizes) and must finish
with its figures. Nothing about speed is asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def test_ingest_mqtt_bench_smoke() -> None:
    done = subprocess.run(
        [sys.executable, "bench/ingest_mqtt.py", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["saturated"]["readings_per_s"] > 0
    assert result["saturated"]["cpu_us_per_reading"] is not None
    assert result["latency"]["ingest_lag_at_end"]["samples"] > 0
