"""`cloud user add` / `cloud gateway add` while `cloud serve` holds the store: they go through
the server's local admin API (loopback, bearer secret from the data dir) and behave exactly like
the direct path they take when no server runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.app.admin_ops import LOCAL_ADMIN_SECRET_FILE, running_cloud_url
from cloud.app.asgi import create_app
from cloud.app.services import Services
from tests.cloud.test_cloud_server import IOTSPHERE, run_cli
from tests.conftest import REPO
from tests.support.cloud import (
    PASSWORD,
    assert_problem,
)
from tests.support.ports import free_port

USERS = "/api/local-admin/users"
GATEWAYS = "/api/local-admin/gateways"


class Serving:
    """A `cloud serve` subprocess on a free port, ready."""

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [*IOTSPHERE, "cloud", "serve", "--data-dir", str(data), "--port", str(self.port)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        while "cloud ready" not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def secret(self) -> str:
        return (self.data / LOCAL_ADMIN_SECRET_FILE).read_text().strip()

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret()}"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code == 0, self.log.read_text()
        assert "Traceback" not in self.log.read_text()


@contextlib.contextmanager
def serving(data: Path, log: Path) -> Iterator[Serving]:
    server = Serving(data, log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    base = tmp_path_factory.mktemp("cloud-local-admin")
    with serving(base / "data", base / "cloud.log") as server:
        yield server


def login(base: str, email: str, password: str = PASSWORD) -> httpx.Response:
    return httpx.post(f"{base}/api/auth/login", json={"email": email, "password": password})


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_run_info_names_the_live_server(cloud: Serving) -> None:
    info = json.loads((cloud.data / "run" / "cloud.json").read_text())
    assert info == {"pid": cloud.proc.pid, "port": cloud.port, "bind": "127.0.0.1", "tls": False}
    assert running_cloud_url(cloud.data) == cloud.base
    assert (cloud.data / LOCAL_ADMIN_SECRET_FILE).stat().st_mode & 0o777 == 0o600


def test_user_add_while_serving_then_login(cloud: Serving) -> None:
    added = run_cli(
        "user", "add", " Ann@Example.com ", "--role", "operator", "--org", "acme",
        data_dir=cloud.data, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    out = json.loads(added.stdout)
    assert set(out) == {"user_id", "email", "role", "org"}
    assert (out["email"], out["role"], out["org"]) == ("ann@example.com", "operator", "acme")
    r = login(cloud.base, "ann@example.com")
    assert r.status_code == 200, r.text


def test_existing_user_is_one_line_exit_1(cloud: Serving) -> None:
    first = run_cli("user", "add", "bob@example.com", data_dir=cloud.data, stdin=PASSWORD + "\n")
    assert first.returncode == 0, first.stderr
    dup = run_cli("user", "add", "BOB@example.com", data_dir=cloud.data, stdin="another pw\n")
    assert dup.returncode == 1
    assert one_error_line(dup) == "iotsphere: error: user bob@example.com already exists"
    assert login(cloud.base, "bob@example.com").status_code == 200  # the first password stays


def test_gateway_add_while_serving(cloud: Serving) -> None:
    added = run_cli("gateway", "add", "site-9", data_dir=cloud.data)
    assert added.returncode == 0, added.stderr
    out = json.loads(added.stdout)
    assert set(out) == {"gateway_id", "enrollment_token"} and len(out["enrollment_token"]) > 20
    dup = run_cli("gateway", "add", "site-9", data_dir=cloud.data)
    assert dup.returncode == 1
    assert (
        one_error_line(dup)
        == "iotsphere: error: gateway 'site-9' already exists in organization 'default'"
    )
    # visible through the public API, to an admin of the default organization
    admin = {"email": "root@example.com", "password": PASSWORD, "role": "admin"}
    r = httpx.post(f"{cloud.base}{USERS}", json=admin, headers=cloud.auth())
    assert r.status_code == 201, r.text
    token = login(cloud.base, "root@example.com").json()["access_token"]
    r = httpx.get(f"{cloud.base}/api/gateways", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert [g["name"] for g in r.json()] == ["site-9"]


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic {secret}", "Bearer {secret}x"])
def test_without_the_secret_401(cloud: Serving, auth: str | None) -> None:
    headers = {"Authorization": auth.format(secret=cloud.secret())} if auth is not None else {}
    body = {"email": "eve@example.com", "password": PASSWORD, "role": "admin"}
    assert_problem(httpx.post(f"{cloud.base}{USERS}", json=body, headers=headers), 401)
    assert_problem(httpx.post(f"{cloud.base}{GATEWAYS}", json={"name": "x"}, headers=headers), 401)
    # refused before the body is looked at: no validation hints either
    assert_problem(httpx.post(f"{cloud.base}{USERS}", json={}, headers=headers), 401)
    assert login(cloud.base, "eve@example.com").status_code == 401


def test_api_validates_like_the_cli(cloud: Serving) -> None:
    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{cloud.base}{USERS}", json=body, headers=cloud.auth())

    doc = assert_problem(post({"email": "nope", "password": PASSWORD}), 422)
    assert doc["detail"] == "not an e-mail address: 'nope'"
    doc = assert_problem(post({"email": "c@example.com", "password": "short"}), 422)
    assert doc["detail"] == "password must be at least 8 characters"
    assert_problem(post({"email": "c@example.com", "password": PASSWORD, "role": "god"}), 422)
    r = post({"email": "c@example.com", "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["role"] == "viewer" and r.json()["org"] == "default"
    doc = assert_problem(post({"email": "c@example.com", "password": PASSWORD}), 409)
    assert doc["detail"] == "user c@example.com already exists"


def test_direct_path_when_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, tmp_path / "cloud.log"):
        added = run_cli("user", "add", "dan@example.com", data_dir=data, stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
    assert not (data / "run" / "cloud.json").exists()  # a clean stop removes it
    # the store is free again: these open it directly, with the same answers
    dup = run_cli("user", "add", "dan@example.com", data_dir=data, stdin=PASSWORD + "\n")
    assert dup.returncode == 1
    assert one_error_line(dup) == "iotsphere: error: user dan@example.com already exists"


def test_stale_run_info_falls_back_to_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    # a live pid (ours) but nothing listening on the port: e.g. a pid reused after a crash
    info = {"pid": os.getpid(), "port": free_port(), "bind": "0.0.0.0"}
    (data / "run" / "cloud.json").write_text(json.dumps(info))
    assert running_cloud_url(data) == f"http://127.0.0.1:{info['port']}"
    added = run_cli("user", "add", "fay@example.com", data_dir=data, stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data / "run" / "cloud.json").write_text(json.dumps({**info, "pid": dead.pid}))
    assert running_cloud_url(data) is None


async def test_local_admin_is_not_in_the_openapi_document(services: Services) -> None:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert paths and not [p for p in paths if p.startswith("/api/local-admin")]
        # but the routes exist (and want the secret)
        assert_problem(await http.post(GATEWAYS, json={"name": "x"}), 401)
        secret = (services.settings.data_dir / LOCAL_ADMIN_SECRET_FILE).read_text().strip()
        r = await http.post(
            GATEWAYS, json={"name": "x"}, headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.status_code == 201, r.text
