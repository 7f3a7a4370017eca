"""kill -9 of the gateway, and power cuts (the gateway and its Mosquitto SIGKILLed together),
during QoS 1 streams: every reading a device got a PUBACK for is stored exactly once after the
restart (the front acknowledges telemetry only after its commit; dedup on (device, metric, ts))."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO, GatewayProcess, cli_json

pytestmark = pytest.mark.timeout(300)


def run_crash_scenario(
    gp: GatewayProcess,
    tmp_path: Path,
    devices: int,
    per_device: int,
    kills: int,
    *,
    rate: int = 2000,
    power_cut: bool = False,
) -> None:
    data_dir = gp.data_dir
    creds = [
        cli_json("gateway", "device", "add", f"crash{i}", data_dir=data_dir) for i in range(devices)
    ]
    creds_file = tmp_path / "creds.json"
    creds_file.write_text(json.dumps(creds))
    acked_log = tmp_path / "acked.log"
    sim_log = tmp_path / "sim.log"
    gp.start()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "common.cli",
            "sim",
            "mqtt",
            "--credentials",
            str(creds_file),
            "--port",
            str(gp.mqtt_port),
            "--rate",
            str(rate),
            "--count",
            str(per_device),
            "--metrics",
            "temperature",
            "--inflight",
            "50",
            "--backoff",
            "0.2",
            "--acked-log",
            str(acked_log),
            "--json",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        # A file, not a pipe: nobody reads stderr during the run, and a full pipe buffer (64 KiB
        # of reconnect lines after many cuts) would block the simulator.
        stderr=sim_log.open("w"),
        text=True,
    )
    try:
        for _ in range(kills):
            # kill once the stream is well under way
            deadline = time.monotonic() + 60
            start_lines = _count_lines(acked_log)
            while _count_lines(acked_log) < start_lines + devices * per_device // (kills + 2):
                assert time.monotonic() < deadline, "simulator made no progress"
                assert sim.poll() is None, "the stream ended before every cut: make it longer"
                time.sleep(0.05)
            if power_cut:
                gp.power_cut()
            else:
                gp.stop(signal.SIGKILL)
            time.sleep(0.3)
            gp.start()
        out, _ = sim.communicate(timeout=240)
    finally:
        if sim.poll() is None:  # a failed run must not leave the simulator behind
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, sim_log.read_text()[-2000:]
    stats = json.loads(out)
    acked = set()
    for line in acked_log.read_text().splitlines():
        device_id, _seq, ts = line.split()
        acked.add((device_id, int(ts)))
    # the simulator resends what was not acknowledged, so in the end all of it was
    assert len(acked) == devices * per_device
    assert stats["acked"] >= len(acked) and stats["dropped"] == 0

    # wait until the gateway has drained the broker's queue
    deadline = time.monotonic() + 120
    while True:
        count = cli_json("gateway", "status", data_dir=data_dir)["readings_stored"]
        if count >= len(acked) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert gp.stop() == 0
    con = duckdb.connect(str(data_dir / "gateway.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT device_id, ts, count(*) FROM readings WHERE metric = 'temperature' GROUP BY ALL"
    ).fetchall()
    con.close()
    dupes = [r for r in rows if r[2] != 1]
    assert dupes == []
    have = {(d, ts) for d, ts, _n in rows}
    missing = acked - have
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def test_kill9_during_qos1_stream_loses_nothing(
    gateway_process: GatewayProcess, tmp_path: Path
) -> None:
    run_crash_scenario(gateway_process, tmp_path, devices=4, per_device=5000, kills=2)


def test_power_cut_during_a_flood_loses_no_acknowledged_reading(
    gateway_process: GatewayProcess, tmp_path: Path
) -> None:
    run_crash_scenario(
        gateway_process, tmp_path, devices=10, per_device=2000, kills=2, power_cut=True
    )


def test_power_cut_during_a_paced_stream_loses_no_acknowledged_reading(
    gateway_process: GatewayProcess, tmp_path: Path
) -> None:
    # 10 devices x 50 readings/s: 500 readings/s, the field case of the reproduction
    run_crash_scenario(
        gateway_process, tmp_path, devices=10, per_device=400, kills=2, rate=50, power_cut=True
    )


@pytest.mark.soak
def test_power_cut_twenty_times_soak(gateway_process: GatewayProcess, tmp_path: Path) -> None:
    run_crash_scenario(
        gateway_process, tmp_path, devices=10, per_device=20_000, kills=20, rate=200,
        power_cut=True,
    )  # fmt: skip


@pytest.mark.soak
def test_kill9_repeatedly_soak(gateway_process: GatewayProcess, tmp_path: Path) -> None:
    run_crash_scenario(gateway_process, tmp_path, devices=10, per_device=10_000, kills=6)


def _broker_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "broker" / "mosquitto.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _wait_dead(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_no_orphan_broker_after_kill9_and_stale_broker_is_replaced(
    gateway_process: GatewayProcess,
) -> None:
    data_dir = gateway_process.data_dir
    gateway_process.start()
    first = _broker_pid(data_dir)
    assert first is not None
    gateway_process.stop(signal.SIGKILL)
    assert _wait_dead(first), "the managed Mosquitto outlived a kill -9 of its gateway"

    # A broker left running on the gateway's config (e.g. started by hand): the next start
    # stops it and starts its own.
    stale = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(data_dir / "broker" / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while _broker_pid(data_dir) != stale.pid:
            assert time.monotonic() < deadline, "stale broker did not write its pid file"
            time.sleep(0.05)
        gateway_process.start()
        assert stale.wait(timeout=15) is not None  # stopped by the new gateway
        assert _broker_pid(data_dir) != stale.pid
        assert cli_json("gateway", "status", data_dir=data_dir)["broker"]["state"] == "running"
    finally:
        if stale.poll() is None:
            stale.kill()
