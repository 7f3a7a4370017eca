"""The whole path as users run it: a sensor publishes with mosquitto_pub to `iotsphere gateway
run`, which is enrolled with `iotsphere cloud serve`; a central user sees the reading on the
dashboard and in the telemetry API."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.sync.clock_watch import kernel_clock_synchronised
from tests.conftest import IOTSPHERE, REPO, GatewayProcess, cli, cli_json
from tests.support.ports import free_port, restartable_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)
PASSWORD = "e2e-passw0rd"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data = tmp_path / "cloud"
    added = subprocess.run(
        [*IOTSPHERE, "cloud", "user", "add", "admin@example.com", "--role", "admin",
         "--data-dir", str(data)],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    log = tmp_path / "cloud.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*IOTSPHERE, "cloud", "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "cloud ready" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", data
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_device_to_gateway_to_cloud_dashboard(
    cloud: tuple[str, Path], gateway_process: GatewayProcess
) -> None:
    base, cloud_data = cloud
    gw_data, mqtt_port = gateway_process.data_dir, gateway_process.mqtt_port
    enrollment = json.loads(
        subprocess.run(
            [*IOTSPHERE, "cloud", "gateway", "add", "site-1", "--data-dir", str(cloud_data)],
            capture_output=True, text=True, cwd=REPO, check=True,
        ).stdout
    )  # fmt: skip
    cli("gateway", "enroll", "--cloud", base, "--token", enrollment["enrollment_token"],
        data_dir=gw_data)  # fmt: skip
    device = cli_json("gateway", "device", "add", "e2e-1", data_dir=gw_data)
    gateway_process.start()

    published = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-u", "e2e-1",
         "-P", device["token"], "-t", "devices/e2e-1/telemetry", "-q", "1",
         "-m", json.dumps({"ts": 1795842000000, "values": {"temperature": 22.5}})],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr

    login = httpx.post(
        f"{base}/api/auth/login", json={"email": "admin@example.com", "password": PASSWORD}
    )
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}

    def dashboard_device() -> dict[str, Any] | None:
        devices = httpx.get(f"{base}/api/dashboard", headers=auth).json()["devices"]
        return next((d for d in devices if d["device_id"] == "e2e-1"), None)

    seen = wait_for(dashboard_device, "the reading on the cloud dashboard")
    assert seen["latest"] == {"temperature": 22.5}
    assert seen["gateway_id"] == enrollment["gateway_id"]
    points = httpx.get(
        f"{base}/api/devices/e2e-1/telemetry",
        params={"metric": "temperature", "from": 1795841000000, "to": 1795843000000},
        headers=auth,
    ).json()["points"]
    # exactly once; flagged when this machine's kernel says its clock is not NTP-synchronised
    unsynced = kernel_clock_synchronised() is False
    expected: dict[str, object] = {"ts": 1795842000000, "value": 22.5}
    if unsynced:
        expected["flags"] = ["GATEWAY_CLOCK_UNSYNCED"]
    assert points == [expected]

    status = cli_json("gateway", "status", data_dir=gw_data)
    assert status["sync"]["state"] == "enrolled" and status["sync"]["backlog_readings"] == 0


def test_rule_created_in_the_cloud_fires_at_the_gateway(
    cloud: tuple[str, Path], gateway_process: GatewayProcess
) -> None:
    base, cloud_data = cloud
    gw_data, mqtt_port = gateway_process.data_dir, gateway_process.mqtt_port
    with (gw_data / "gateway.toml").open("a") as toml:
        toml.write("\n[gateway]\nsync_config_every_s = 0.5\n")
    token = json.loads(
        subprocess.run(
            [*IOTSPHERE, "cloud", "gateway", "add", "site-2", "--data-dir", str(cloud_data)],
            capture_output=True, text=True, cwd=REPO, check=True,
        ).stdout
    )["enrollment_token"]  # fmt: skip
    cli("gateway", "enroll", "--cloud", base, "--token", token, data_dir=gw_data)
    device = cli_json("gateway", "device", "add", "hot-1", data_dir=gw_data)
    gateway_process.start()
    login = httpx.post(
        f"{base}/api/auth/login", json={"email": "admin@example.com", "password": PASSWORD}
    )
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    rule = httpx.post(
        f"{base}/api/monitoring/alert_rules",
        json={"name": "too hot", "metric": "temperature", "operator": ">", "threshold": 30},
        headers=auth,
    ).json()
    wait_for(
        lambda: any(r["id"] == rule["id"] for r in cli_json("gateway", "rule", "list",
                                                            data_dir=gw_data)),
        "the cloud rule at the gateway",
    )  # fmt: skip
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-u", "hot-1",
         "-P", device["token"], "-t", "devices/hot-1/telemetry", "-q", "1",
         "-m", json.dumps({"ts": 1795842000000, "values": {"temperature": 35}})],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    local = wait_for(
        lambda: cli_json("gateway", "alerts", "--state", "active", data_dir=gw_data),
        "the alert at the gateway",
    )
    assert [(a["rule_id"], a["device_id"], a["value"]) for a in local] == [
        (rule["id"], "hot-1", 35.0)
    ]
    synced = wait_for(
        lambda: [a for a in httpx.get(f"{base}/api/alerts", headers=auth).json()
                 if a["rule_id"] == rule["id"]],
        "the gateway's alert in the cloud",
    )  # fmt: skip
    assert synced[0]["state"] == "active" and synced[0]["value"] == 35.0

    # a device revoked in the cloud is revoked at its gateway: listed there as revoked, and
    # its credentials no longer work on the broker
    assert httpx.post(f"{base}/api/devices/hot-1/revoke", headers=auth).status_code == 204
    wait_for(
        lambda: [d for d in cli_json("gateway", "device", "list", data_dir=gw_data)
                 if d["device_id"] == "hot-1" and d["status"] == "revoked"],
        "the cloud's revocation at the gateway",
    )  # fmt: skip
    refused = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mqtt_port), "-u", "hot-1",
         "-P", device["token"], "-t", "devices/hot-1/telemetry", "-q", "1", "-m", "{}"],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def _start_cloud(data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    ready_before = log.read_text().count("cloud ready") if log.exists() else 0
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [*IOTSPHERE, "cloud", "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while log.read_text().count("cloud ready") <= ready_before or proc.poll() is not None:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc


def test_offline_site_catches_up_exactly_once(
    tmp_path: Path, gateway_process: GatewayProcess
) -> None:
    """Cloud down while 50,000 readings and an alert arrive; cloud back: each arrives once."""
    cloud_data, port = tmp_path / "cloud2", restartable_port()  # the cloud restarts on it
    added = subprocess.run(
        [*IOTSPHERE, "cloud", "user", "add", "admin@example.com", "--role", "admin",
         "--data-dir", str(cloud_data)],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    token = json.loads(
        subprocess.run(
            [*IOTSPHERE, "cloud", "gateway", "add", "remote", "--data-dir", str(cloud_data)],
            capture_output=True, text=True, cwd=REPO, check=True,
        ).stdout
    )["enrollment_token"]  # fmt: skip
    log = tmp_path / "cloud2.log"
    proc = _start_cloud(cloud_data, port, log)
    base = f"http://127.0.0.1:{port}"
    gw_data = gateway_process.data_dir
    cli("gateway", "enroll", "--cloud", base, "--token", token, data_dir=gw_data)
    proc.terminate()  # the site goes offline
    assert proc.wait(timeout=30) == 0

    creds = [cli_json("gateway", "device", "add", f"far-{i}", data_dir=gw_data) for i in range(5)]
    cli("gateway", "rule", "add", "--metric", "m0", "--op", ">", "--threshold", "2",
        data_dir=gw_data)  # fmt: skip
    (tmp_path / "creds.json").write_text(json.dumps(creds))
    gateway_process.start()
    sim = subprocess.run(
        [*IOTSPHERE, "sim", "mqtt", "--credentials", str(tmp_path / "creds.json"),
         "--port", str(gateway_process.mqtt_port), "--saturate", "--count", "1000",
         "--metrics", ",".join(f"m{i}" for i in range(10)), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert json.loads(sim.stdout)["acked"] == 5000  # 5 devices x 1000 messages x 10 readings

    def waiting() -> dict[str, Any] | None:
        s = cli_json("gateway", "status", data_dir=gw_data)
        return s if s["sync"]["backlog_readings"] == 50_000 else None

    status = wait_for(waiting, "50,000 readings waiting at the gateway")
    assert status["readings_stored"] == 50_000
    assert status["sync"]["consecutive_failures"] > 0  # it kept trying while offline
    inject = cli_json("gateway", "alerts", data_dir=gw_data)
    assert len(inject) >= 1  # random walks around 20: m0 > 2 fires for every device

    proc = _start_cloud(cloud_data, port, log)  # back online
    try:
        auth = {
            "Authorization": "Bearer "
            + httpx.post(
                f"{base}/api/auth/login",
                json={"email": "admin@example.com", "password": PASSWORD},
            ).json()["access_token"]
        }
        wait_for(
            lambda: (
                cli_json("gateway", "status", data_dir=gw_data)["sync"]["backlog_readings"] == 0
            ),
            "the backlog to drain",
            timeout_s=120,
        )
        for cred in creds:
            points = httpx.get(
                f"{base}/api/devices/{cred['device_id']}/telemetry",
                params={"metric": "m3", "from": 0, "to": 4_000_000_000_000},
                headers=auth,
            ).json()["points"]
            stamps = [p["ts"] for p in points]
            assert len(stamps) == 1000 and len(set(stamps)) == 1000  # each reading once
            assert stamps == sorted(stamps)
        cloud_alerts = httpx.get(f"{base}/api/alerts", headers=auth).json()
        local_ids = {a["id"] for a in cli_json("gateway", "alerts", data_dir=gw_data)}
        assert {a["id"] for a in cloud_alerts} == local_ids  # each alert once
    finally:
        proc.terminate()
        proc.wait(timeout=30)
