"""`iotsphere cloud user list|disable|enable|passwd|delete` against a running `cloud serve`
(through its local admin API) and against a stopped one (the store opened directly), with the
user's sessions checked over real HTTP: access tokens refused within 5 s, refresh tokens dead."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cloud.test_cloud_local_admin import Serving, login, one_error_line, serving
from tests.cloud.test_cloud_server import run_cli
from tests.support.cloud import PASSWORD

NEW_PASSWORD = "a new and better passphrase"
REVOKED_WITHIN_S = 5.0


def cli(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return run_cli("user", *args, data_dir=data, stdin=stdin)


def cli_ok(data: Path, *args: str, stdin: str = "") -> Any:
    proc = cli(data, *args, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def session(base: str, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = login(base, email, password)
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    return tokens


def dashboard(base: str, tokens: dict[str, Any]) -> int:
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    return httpx.get(f"{base}/api/dashboard", headers=auth).status_code


def refresh(base: str, tokens: dict[str, Any]) -> int:
    body = {"refresh_token": tokens["refresh_token"]}
    return httpx.post(f"{base}/api/auth/refresh", json=body).status_code


def seconds_until_refused(base: str, tokens: dict[str, Any], since: float) -> float:
    """Poll with the access token until it gets 401; seconds from `since`."""
    while dashboard(base, tokens) != 401:
        assert time.monotonic() - since < REVOKED_WITHIN_S, "access token still accepted"
        time.sleep(0.05)
    return time.monotonic() - since


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("cloud-users-cli")
    with serving(base / "data", base / "cloud.log") as server:
        cli_ok(server.data, "add", "root@example.com", "--role", "admin", stdin=PASSWORD + "\n")
        yield server


def test_disable_enable_while_serving(cloud: Serving) -> None:
    cli_ok(cloud.data, "add", "ann@example.com", "--role", "operator", stdin=PASSWORD + "\n")
    ann = session(cloud.base, "ann@example.com")
    assert dashboard(cloud.base, ann) == 200
    start = time.monotonic()
    out = cli_ok(cloud.data, "disable", "Ann@Example.com")
    returned = time.monotonic()
    assert (out["email"], out["role"], out["org"], out["disabled"]) == (
        "ann@example.com", "operator", "default", True,
    )  # fmt: skip
    refused_after = seconds_until_refused(cloud.base, ann, start)
    print(
        f"disable: command took {returned - start:.2f} s,"
        f" access refused {refused_after - (returned - start):.3f} s after it returned"
    )
    assert refresh(cloud.base, ann) == 401
    assert login(cloud.base, "ann@example.com").status_code == 401
    out = cli_ok(cloud.data, "enable", "ann@example.com")
    assert out["disabled"] is False
    back = session(cloud.base, "ann@example.com")
    assert dashboard(cloud.base, back) == 200 and refresh(cloud.base, back) == 200
    assert refresh(cloud.base, ann) == 401  # the session ended by the disable stays ended


def test_passwd_while_serving(cloud: Serving) -> None:
    cli_ok(cloud.data, "add", "bob@example.com", stdin=PASSWORD + "\n")
    bob = session(cloud.base, "bob@example.com")
    short = cli(cloud.data, "passwd", "bob@example.com", stdin="short\n")
    assert short.returncode == 2
    assert one_error_line(short) == "iotsphere: error: password must be at least 8 characters"
    start = time.monotonic()
    cli_ok(cloud.data, "passwd", "bob@example.com", stdin=NEW_PASSWORD + "\n")
    seconds_until_refused(cloud.base, bob, start)
    assert refresh(cloud.base, bob) == 401
    assert login(cloud.base, "bob@example.com").status_code == 401  # the old password
    assert dashboard(cloud.base, session(cloud.base, "bob@example.com", NEW_PASSWORD)) == 200


def test_delete_while_serving(cloud: Serving) -> None:
    cli_ok(cloud.data, "add", "cid@example.com", stdin=PASSWORD + "\n")
    cid = session(cloud.base, "cid@example.com")
    start = time.monotonic()
    out = cli_ok(cloud.data, "delete", "cid@example.com")
    assert out["email"] == "cid@example.com" and out["deleted"] is True
    refused_after = seconds_until_refused(cloud.base, cid, start)
    print(f"delete: access refused {refused_after:.2f} s after the command started")
    assert refresh(cloud.base, cid) == 401
    again = cli(cloud.data, "delete", "cid@example.com")
    assert again.returncode == 1
    assert one_error_line(again) == "iotsphere: error: no user cid@example.com"


def test_list_and_errors_while_serving(cloud: Serving) -> None:
    listed = cli_ok(cloud.data, "list", "--json")
    assert "root@example.com" in [u["email"] for u in listed]
    assert set(listed[0]) == {"user_id", "email", "role", "org", "disabled", "created_at"}
    lines = cli(cloud.data, "list").stdout.splitlines()  # one JSON object a line
    assert [json.loads(line)["email"] for line in lines] == [u["email"] for u in listed]
    unknown = cli(cloud.data, "list", "--org", "nope")
    assert unknown.returncode == 1
    assert one_error_line(unknown) == "iotsphere: error: no organization 'nope'"
    bad = cli(cloud.data, "disable", "not-an-address")
    assert bad.returncode == 2
    assert one_error_line(bad) == "iotsphere: error: not an e-mail address: 'not-an-address'"
    last = cli(cloud.data, "delete", "root@example.com")
    assert last.returncode == 1
    assert one_error_line(last) == (
        "iotsphere: error: root@example.com is the last enabled admin of their organization;"
        " make another user admin first"
    )
    assert login(cloud.base, "root@example.com").status_code == 200


def test_commands_on_a_stopped_cloud(tmp_path: Path) -> None:
    """With no server the CLI opens the store itself; the next server honours every change,
    also for access tokens issued before it (they carry the user's old token version)."""
    data = tmp_path / "data"
    log = tmp_path / "cloud.log"
    cli_ok(data, "add", "root@example.com", "--role", "admin", stdin=PASSWORD + "\n")
    cli_ok(data, "add", "ann@example.com", stdin=PASSWORD + "\n")
    with serving(data, log) as server:
        ann = session(server.base, "ann@example.com")
    assert cli_ok(data, "disable", "ann@example.com")["disabled"] is True
    listed = cli_ok(data, "list", "--org", "default", "--json")
    assert [(u["email"], u["disabled"]) for u in listed] == [
        ("ann@example.com", True),
        ("root@example.com", False),
    ]
    with serving(data, log) as server:
        assert dashboard(server.base, ann) == 401
        assert refresh(server.base, ann) == 401
        assert login(server.base, "ann@example.com").status_code == 401
    assert cli_ok(data, "enable", "ann@example.com")["disabled"] is False
    cli_ok(data, "passwd", "ann@example.com", stdin=NEW_PASSWORD + "\n")
    with serving(data, log) as server:
        assert login(server.base, "ann@example.com").status_code == 401
        ann = session(server.base, "ann@example.com", NEW_PASSWORD)
        assert dashboard(server.base, ann) == 200
    assert cli_ok(data, "delete", "ann@example.com")["deleted"] is True
    last = cli(data, "disable", "root@example.com")
    assert last.returncode == 1 and "last enabled admin" in one_error_line(last)
    missing = cli(data, "enable", "ann@example.com")
    assert missing.returncode == 1
    assert one_error_line(missing) == "iotsphere: error: no user ann@example.com"
    with serving(data, log) as server:
        assert dashboard(server.base, ann) == 401
        assert refresh(server.base, ann) == 401
