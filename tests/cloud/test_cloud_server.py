"""The cloud over real sockets: in-process uvicorn, and `iotsphere cloud serve` as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cloud.app.services import Services
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from tests.conftest import REPO
from tests.support.cloud import (
    PASSWORD,
    Outage,
    add_user,
    assert_problem,
    both_engines,
    served,
)
from tests.support.ports import free_port

pytestmark = both_engines

# the installed entry point (common.cli:main), as a user runs it
IOTSPHERE = [sys.executable, "-c", "import sys; from common.cli import main; sys.exit(main())"]


async def test_login_and_dashboard_over_a_real_socket(
    services: Services, store: SqlCloudStore, outage: Outage
) -> None:
    await add_user(store, "ann@example.com", Role.VIEWER)
    async with served(services) as http:
        r = await http.post(
            "/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = await http.get("/api/dashboard", headers=auth)
        assert r.status_code == 200 and set(r.json()) == {"config", "devices", "alerts"}
        assert_problem(await http.get("/api/dashboard"), 401)
        outage.begin()
        r = await http.get("/api/dashboard", headers=auth)
        assert_problem(r, 503)
        assert r.headers["retry-after"] == "5"
        outage.end()
        assert (await http.get("/api/dashboard", headers=auth)).status_code == 200


def run_cli(*args: str, data_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IOTSPHERE, "cloud", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_cli_user_add_errors_are_one_line(tmp_path: Path) -> None:
    ok = run_cli("user", "add", "ann@example.com", data_dir=tmp_path, stdin="long enough pw\n")
    assert ok.returncode == 0, ok.stderr
    dup = run_cli("user", "add", "ANN@example.com", data_dir=tmp_path, stdin="long enough pw\n")
    assert dup.returncode == 1
    assert (
        dup.stderr.strip().splitlines()[-1]
        == "iotsphere: error: user ann@example.com already exists"
    )
    assert "Traceback" not in dup.stderr
    short = run_cli("user", "add", "bob@example.com", data_dir=tmp_path, stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cloud_serve_cli_user_login_and_graceful_exit(tmp_path: Path, sig: int) -> None:
    data = tmp_path / "data"
    added = run_cli(
        "user", "add", "ops@example.com", "--role", "operator",
        data_dir=data, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    gw = run_cli("gateway", "add", "site-1", data_dir=data)
    assert gw.returncode == 0, gw.stderr
    assert '"enrollment_token"' in gw.stdout
    secret = data / "cloud_jwt.key"
    port = free_port()
    log = tmp_path / "cloud.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*IOTSPHERE, "cloud", "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 30
        while "cloud ready" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert secret.stat().st_mode & 0o777 == 0o600
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(
            f"{base}/api/auth/login", json={"email": "ops@example.com", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = httpx.get(f"{base}/api/gateways", headers=auth)
        assert [g["name"] for g in r.json()] == ["site-1"]
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "cloud stopped" in log.read_text()
    assert "Traceback" not in log.read_text()
