"""The cloud outgrown one process, as an operator runs it: two `iotsphere cloud serve` on one
PostgreSQL (the second with two workers), a real gateway syncing to the first, central users on
the second. Readings and gateway alerts show on either; a rule made on one fires once from
metrics posted to the other, its webhook delivered once; failed logins spread over both lock
out on both."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IOTSPHERE, REPO, GatewayProcess, cli, cli_json
from tests.support.cloud_monitoring import Receiver, receiver
from tests.support.ports import free_port
from tests.support.waiting import until, wait_for

__all__ = ["receiver"]  # fixture
pytestmark = pytest.mark.timeout(240)
PASSWORD = "scale-out-passw0rd"


def cloud_cli(*args: str, url: str, data: Path, stdin: str = "") -> Any:
    done = subprocess.run(
        [*IOTSPHERE, "cloud", *args, "--database", url, "--data-dir", str(data), "--json"],
        input=stdin, capture_output=True, text=True, cwd=REPO, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextmanager
def cloud_process(url: str, data: Path, workers: int = 1) -> Iterator[str]:
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    with (data / "cloud.log").open("wb") as err:
        proc = subprocess.Popen(
            [*IOTSPHERE, "cloud", "serve", "--database", url, "--data-dir", str(data),
             "--port", str(port), "--workers", str(workers)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (data / "cloud.log").read_text()
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, f"cloud serve on {port}", timeout_s=60)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def login(http: httpx.AsyncClient, base: str, password: str = PASSWORD) -> httpx.Response:
    body = {"email": "admin@example.com", "password": password}
    return await http.post(f"{base}/api/auth/login", json=body)


async def test_two_cloud_processes_on_one_postgresql(
    pg_url: str, tmp_path: Path, gateway_process: GatewayProcess, receiver: Receiver
) -> None:
    cloud_data = tmp_path / "cloud-admin"
    cloud_cli("user", "add", "admin@example.com", "--role", "admin",
              url=pg_url, data=cloud_data, stdin=PASSWORD + "\n")  # fmt: skip
    enrollment = cloud_cli("gateway", "add", "site-1", url=pg_url, data=cloud_data)
    with (
        cloud_process(pg_url, tmp_path / "cloud-a") as a,
        cloud_process(pg_url, tmp_path / "cloud-b", workers=2) as b,
    ):
        await scale_out(a, b, gateway_process, enrollment, receiver)


async def scale_out(
    a: str, b: str, gateway_process: GatewayProcess, enrollment: Any, receiver: Receiver
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        # a real gateway syncs to the first process
        gw = gateway_process.data_dir
        cli("gateway", "enroll", "--cloud", a, "--token", enrollment["enrollment_token"],
            data_dir=gw)  # fmt: skip
        token = cli_json("gateway", "device", "add", "hot-1", data_dir=gw)["token"]
        cli("gateway", "rule", "add", "--metric", "temperature", "--op", ">", "--threshold",
            "40", "--device", "hot-1", "--severity", "critical", data_dir=gw)  # fmt: skip
        gateway_process.start()
        published = await asyncio.to_thread(
            subprocess.run,
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gateway_process.mqtt_port),
             "-u", "hot-1", "-P", token, "-t", "devices/hot-1/telemetry", "-q", "1",
             "-m", json.dumps({"values": {"temperature": 55.0}})],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert published.returncode == 0, published.stderr

        # the central user works on the second: the first's readings and the gateway's alert
        session = await login(http, b)
        assert session.status_code == 200, session.text
        auth = {"Authorization": f"Bearer {session.json()['access_token']}"}

        async def on_b_dashboard() -> Any:
            doc = (await http.get(f"{b}/api/dashboard", headers=auth)).json()
            devices = [d for d in doc["devices"] if d["latest"].get("temperature") == 55.0]
            return devices and doc["alerts"] and doc

        doc = await until(on_b_dashboard, timeout_s=60)
        assert [a["device_id"] for a in doc["alerts"]] == ["hot-1"]

        # a rule created on the second fires once from metrics posted to the first
        channel = await http.post(
            f"{b}/api/notification_channels",
            headers=auth,
            json={"name": "ops", "type": "webhook", "url": receiver.url},
        )
        assert channel.is_success, channel.text
        rule = await http.post(
            f"{b}/api/monitoring/alert_rules",
            headers=auth,
            json={"source": "model:churn", "metric": "accuracy", "operator": "<",
                  "threshold": 0.8, "channels": [channel.json()["id"]]},
        )  # fmt: skip
        assert rule.is_success, rule.text
        metric = [{"source": "model:churn", "metric": "accuracy", "value": 0.5}]
        posted = await http.post(f"{a}/api/monitoring/metrics", headers=auth, json=metric)
        assert posted.status_code == 200, posted.text

        async def model_alerts() -> list[Any]:
            got = (await http.get(f"{a}/api/alerts", headers=auth)).json()
            return [x for x in got if x.get("rule_id") == rule.json()["id"]]

        await until(lambda: receiver.delivered, timeout_s=60)
        await asyncio.sleep(3)  # every process has had passes and worker rounds since
        assert len(await model_alerts()) == 1
        assert len(receiver.requests) == 1  # one send from three processes' workers

        # failed logins spread over both processes lock out on both (5 in 15 min)
        for i in range(5):
            wrong = await login(http, (a, b)[i % 2], password="wrong-password")
            assert wrong.status_code == 401
        for base in (a, b):
            assert (await login(http, base)).status_code == 429
