"""`iotsphere demo` (the README's run command) starts a cloud and an enrolled gateway, runs
sensors (MQTT and CoAP), stops cleanly, and its readings reach the cloud; a second run reuses
everything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge.security.local_password import load_hash, verify
from tests.conftest import IOTSPHERE, REPO, cli_json
from tests.support.ports import restartable_port

pytestmark = pytest.mark.timeout(180)


def run_demo(data: Path, seconds: int, ports: tuple[int, int]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOTSPHERE, "demo", "--data-dir", str(data), "--seconds", str(seconds),
         "--mqtt-port", str(ports[0]), "--port", str(ports[1]), "--rate", "2",
         "--coap-port", "0", "--http-port", "0"],  # any free port: parallel runs do not collide
        capture_output=True, text=True, cwd=REPO, timeout=150, check=False,
    )  # fmt: skip


def test_demo_runs_everything_and_syncs(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    ports = (restartable_port(), restartable_port())  # the same for both runs, as 1883 and 8000 are
    first = run_demo(data, 8, ports)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "log in as admin@demo.local" in first.stderr
    assert (data / "demo-login.txt").stat().st_mode & 0o777 == 0o600
    assert "Traceback" not in first.stderr
    # the CoAP sensors ran beside the MQTT ones and their readings were stored
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    coap = summary["coap_simulator"]
    assert coap["device_ids"] == ["demo-coap-1", "demo-coap-2"] and coap["acked"] > 0
    assert summary["simulator"]["acked"] > 0
    assert "demo-coap-1" in first.stderr  # the banner names them
    # the installer's local status page: a password set for it, shown where to find it
    login_file = data / "gateway-status-login.txt"
    assert "local status page: http://127.0.0.1:" in first.stderr
    assert str(login_file) in first.stderr
    assert login_file.stat().st_mode & 0o777 == 0o600
    assert verify(load_hash(data / "gateway") or "", login_file.read_text().strip())
    for device_id in coap["device_ids"]:
        rows = cli_json("gateway", "readings", "--device", device_id, data_dir=data / "gateway")
        assert rows and {r["device_id"] for r in rows} == {device_id}
    synced = cli_json("gateway", "status", data_dir=data / "gateway")["sync"]
    assert synced["state"] == "enrolled" and synced["last_success_at"] is not None
    # a second run reuses the login and the enrollment and syncs what the first left behind
    second = run_demo(data, 6, ports)
    assert second.returncode == 0, second.stderr[-3000:]
    status = cli_json("gateway", "status", data_dir=data / "gateway")
    assert status["readings_stored"] > 0
    assert status["sync"]["last_success_at"] > synced["last_success_at"]
