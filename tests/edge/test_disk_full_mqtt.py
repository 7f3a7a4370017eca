"""A full disk refuses MQTT telemetry; it never acknowledges and drops it.

The gateway's data dir on a small tmpfs, a QoS 1 flood until the disk is full: every reading a
device saw PUBACKed is stored, devices are refused (disconnected, they resend) rather than
acknowledged, the gateway stays up and says why, and once space is freed the readings the
devices kept are stored exactly once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO, GatewayProcess, cli_json
from tests.support.ports import restartable_port
from tests.support.tmpfs import fill, tmpfs

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", 64) as mount:
        yield mount


def _lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def test_disk_full_refuses_mqtt_and_recovers_without_losing_an_acknowledged_reading(
    small_disk: Path, tmp_path: Path
) -> None:
    data_dir = small_disk / "gw"
    gp = GatewayProcess(data_dir, restartable_port())
    data_dir.mkdir()
    devices, per_device = 4, 12_000
    creds = [
        cli_json("gateway", "device", "add", f"full{i}", data_dir=data_dir) for i in range(devices)
    ]
    creds_file = tmp_path / "creds.json"
    creds_file.write_text(json.dumps(creds))
    acked_log = tmp_path / "acked.log"
    gp.start()
    sim = None
    try:
        filler = fill(small_disk, 3 << 20)
        sim = subprocess.Popen(
            [
                sys.executable, "-m", "common.cli", "sim", "mqtt",
                "--credentials", str(creds_file), "--port", str(gp.mqtt_port),
                "--rate", "3000", "--count", str(per_device),
                "--metrics", "temperature,humidity,pressure,voltage",
                "--inflight", "50", "--backoff", "0.2", "--acked-log", str(acked_log), "--json",
            ],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # The disk fills: the gateway refuses (devices reconnect and resend) and says why.
        deadline = time.monotonic() + 120
        while True:
            status = cli_json("gateway", "status", data_dir=data_dir)
            storage = status.get("storage") or {}
            if storage.get("state") == "unavailable":
                break
            assert sim.poll() is None, "the flood ended before the disk was full"
            assert time.monotonic() < deadline, f"the disk never filled: {status}"
            time.sleep(0.2)
        assert "space" in json.dumps(storage).lower()
        # A device connecting now is told "server unavailable" (it retries with its backoff)
        # instead of being admitted and disconnected at its first PUBLISH.
        device = creds[0]
        refused = subprocess.run(
            [
                "mosquitto_pub", "-h", "127.0.0.1", "-p", str(gp.mqtt_port),
                "-u", device["device_id"], "-P", device["token"],
                "-t", f"devices/{device['device_id']}/telemetry", "-m", '{"t": 1}', "-q", "1",
            ],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert refused.returncode != 0
        assert "unavailable" in (refused.stdout + refused.stderr).lower()
        front = cli_json("gateway", "status", data_dir=data_dir)["mqtt_front"]
        assert front["refused_storage"] >= 1 and front["auth_failures"] == 0
        stalled_at = _lines(acked_log)
        time.sleep(2)
        assert gp.proc is not None and gp.proc.poll() is None, "the gateway exited"
        # Nothing more is acknowledged while nothing can be stored (a few in-flight commits
        # that had succeeded may still be acknowledged).
        assert _lines(acked_log) - stalled_at < 500
        filler.unlink()
        out, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, err[-2000:]
        stats = json.loads(out)
        assert stats["dropped"] == 0
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
        if gp.proc is not None and gp.proc.poll() is None:
            assert gp.stop() == 0
    acked = set()
    for line in acked_log.read_text().splitlines():
        device_id, _seq, ts = line.split()
        acked.add((device_id, int(ts)))
    assert len(acked) == devices * per_device  # every message was acknowledged in the end
    copy = tmp_path / "copy.duckdb"
    shutil.copy(data_dir / "gateway.duckdb", copy)
    con = duckdb.connect(str(copy), read_only=True)
    rows = con.execute(
        "SELECT device_id, ts, count(*) FROM readings WHERE metric = 'temperature' GROUP BY ALL"
    ).fetchall()
    con.close()
    assert [r for r in rows if r[2] != 1] == []
    missing = acked - {(d, ts) for d, ts, _n in rows}
    assert not missing, f"{len(missing)} acknowledged readings lost"
