"""The gateway's local status page: password, sessions, lockout, and the page in real Chromium."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import ManualClock
from common.gateway_auth import generate_private_key, save_private_key
from edge.app.gateway import Gateway
from edge.status.page import Sessions
from edge.status.view import StatusData, Table, build_view, render_table
from edge.sync.identity import Identity, key_path, save_identity
from tests.conftest import REPO, GatewayProcess, cli, cli_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for

PASSWORD = "site-installer-pw"
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
TZ = "America/St_Johns"  # -03:30: neither UTC nor the host's zone


# -- pure parts ---------------------------------------------------------------------------------


def test_sessions_expire_end_and_follow_the_password() -> None:
    clock = ManualClock()
    sessions = Sessions(clock, ttl_s=60, max_sessions=2)
    a = sessions.open("pw1")
    assert sessions.valid(a, "pw1") and not sessions.valid(a + "x", "pw1")
    assert not sessions.valid(a, "pw2")  # a new password ends the session
    assert not sessions.valid(a, "pw1")
    b = sessions.open("pw1")
    clock.advance(61)
    assert not sessions.valid(b, "pw1")
    c, d, e = sessions.open("pw1"), sessions.open("pw1"), sessions.open("pw1")
    assert len(sessions) == 2 and not sessions.valid(c, "pw1")  # bounded: oldest goes
    sessions.close(d)
    assert not sessions.valid(d, "pw1") and sessions.valid(e, "pw1")


def test_every_value_is_escaped() -> None:
    html = render_table(Table("x", "<b>T</b>", ("<i>",), (("<script>alert(1)</script>",),), "-"))
    assert "<script>" not in html and "&lt;script&gt;" in html and "<b>" not in html


def test_connection_refusals_and_fd_exhaustion_are_shown() -> None:
    listener = {"refused_max_connections": 2, "refused_per_address": 40, "accept_failures": 0}
    connections = {"fd_limit": 1024, "fd_limit_wanted": 9344, "mqtt": listener,
                   "http": {**listener, "accept_failures": 3}, "admin": None}  # fmt: skip
    data = StatusData(
        status={"connections": connections},
        devices=[], latest={}, rejections=[], audit=[], alerts=[], locked=[],
    )  # fmt: skip
    view = build_view(data, 0)
    cards = dict(view.cards)
    assert cards["Connections refused at the limits"] == "84"
    assert cards["Accepts failed (out of file descriptors)"] == "3"
    assert any("LimitNOFILE=9344" in p for p in view.problems)
    quiet = StatusData(status={}, devices=[], latest={}, rejections=[], audit=[], alerts=[],
                       locked=[])  # fmt: skip
    assert dict(build_view(quiet, 0).cards)["Connections refused at the limits"] is None


def test_devices_say_whether_they_are_sending_and_rejections_what_the_device_was_told() -> None:
    now = 1_764_300_000_000
    devices: list[dict[str, Any]] = [
        {"device_id": "d-now", "status": "active", "last_seen": now - 20_000},
        {"device_id": "d-quiet", "status": "active", "last_seen": now - 7 * 60_000 - 5_000},
        {"device_id": "d-gone", "status": "active", "last_seen": now - 26 * 3_600_000},
        {"device_id": "d-new", "status": "active", "last_seen": None},
        {"device_id": "d-old", "status": "revoked", "last_seen": now - 20_000},
    ]
    told = {"path": "/values/label", "message": "string of 300 characters; the limit is 256"}
    rejections = [
        {"at": now, "device_id": "d-now", "transport": "http", "status": 422,
         "title": "Invalid payload", "detail": "1 error in the payload", "errors": [told]},
        {"at": now, "device_id": "d-now", "transport": "mqtt", "status": 422,
         "title": "Invalid payload", "detail": "5 errors in the payload",
         "errors": [{"path": f"/{i}/ts", "message": "must be an integer"} for i in range(5)]},
        {"at": now, "device_id": "d-now", "transport": "http", "status": 413,
         "title": "Payload too large", "detail": "the payload is 70000 bytes; the limit is 65536",
         "errors": []},
    ]  # fmt: skip
    data = StatusData(status={}, devices=devices, latest={}, rejections=rejections, audit=[],
                      alerts=[], locked=[])  # fmt: skip
    tables = {t.id: t for t in build_view(data, now).tables}
    states = {row[0]: row[2] for row in tables["devices"].rows}
    assert states == {
        "d-now": "sending", "d-quiet": "silent for 7 min", "d-gone": "silent for 1 d 2 h",
        "d-new": "never sent", "d-old": "revoked",
    }  # fmt: skip
    reasons = [row[4] for row in tables["rejections"].rows]
    assert reasons[0] == "string of 300 characters; the limit is 256 (at /values/label)"
    assert str(reasons[1]).endswith("must be an integer (at /2/ts) · and 2 more")
    assert reasons[2] == "Payload too large: the payload is 70000 bytes; the limit is 65536"


# -- over HTTP ----------------------------------------------------------------------------------


def set_password(data_dir: Path, password: str) -> subprocess.CompletedProcess[str]:
    return cli("gateway", "password", "set", data_dir=data_dir, input=password + "\n", check=False)


async def test_password_login_lockout_and_logout(gateway: Gateway, data_dir: Path) -> None:
    base = f"http://127.0.0.1:{gateway.http_port}"
    await gateway.add_device("secret-device", "thermo")
    async with httpx.AsyncClient(base_url=base) as c:
        r = await c.get("/")
        assert r.status_code == 200 and "iotsphere gateway password set" in r.text
        assert "secret-device" not in r.text
        assert (await c.get("/status.json")).status_code == 403
        short = await asyncio.to_thread(set_password, data_dir, "short")
        assert short.returncode == 1 and "at least 8" in short.stderr
        done = await asyncio.to_thread(set_password, data_dir, PASSWORD)
        assert done.returncode == 0, done.stderr
        assert (data_dir / "status_password").stat().st_mode & 0o777 == 0o600
        assert PASSWORD not in (data_dir / "status_password").read_text()
        r = await c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await c.get("/status.json")).status_code == 401
        r = await c.post("/login", data={"password": "wrong-password"})
        assert r.status_code == 401 and "Wrong password" in r.text and "set-cookie" not in r.headers
        r = await c.post("/login", data={"password": PASSWORD},
                         headers={"Origin": "http://evil.example"})  # fmt: skip
        assert r.status_code == 403
        r = await c.post("/login", data={"password": PASSWORD}, headers={"Origin": base})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=" in cookie
        r = await c.get("/")
        assert r.status_code == 200 and "secret-device" in r.text
        assert "'self'" in r.headers["content-security-policy"]
        view = (await c.get("/status.json")).json()
        devices = next(t for t in view["tables"] if t["id"] == "devices")
        assert devices["rows"][0][0] == "secret-device"
        r = await c.post("/logout")
        assert r.status_code == 303
        assert (await c.get("/status.json")).status_code == 401
        # wrong passwords: 5 per address (one already counted), then 429 even for the right one
        for _ in range(4):
            assert (await c.post("/login", data={"password": "nope-nope"})).status_code == 401
        r = await c.post("/login", data={"password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    audit = [a for a in await gateway.audit(50) if a["username"] == "status-page"]
    assert sum(a["kind"] == "lockout" for a in audit) == 1
    assert sum(a["reason"] == "wrong_password" for a in audit) == 5
    assert PASSWORD not in json.dumps(audit)


# -- in Chromium ---------------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.timeout(120)
def test_the_status_page_shows_a_locked_out_device_and_the_backlog_while_the_cloud_is_down(
    gateway_process: GatewayProcess, data_dir: Path, browser: Any
) -> None:
    # Enrolled with a cloud that is not there (what `gateway enroll` leaves, cloud gone since).
    save_private_key(generate_private_key(), key_path(data_dir))
    down = f"http://127.0.0.1:{free_port()}"
    save_identity(data_dir, Identity("gw-site-7", down, "default", "site-7", 0))
    dev = cli_json("gateway", "device", "add", "thermo-1", "--type", "thermo", data_dir=data_dir)
    assert set_password(data_dir, PASSWORD).returncode == 0
    gateway_process.start()
    base = f"http://127.0.0.1:{gateway_process.http_port()}"
    with httpx.Client(base_url=base) as c:
        for i in range(3):
            body = {"ts": 1764300000000 + i * 60_000, "values": {"temperature": 20.5 + i}}
            r = c.post(f"/api/v1/{dev['token']}/telemetry", json=body)
            assert r.status_code == 200, r.text
        # a firmware bug: a label of 300 characters, refused with the reason in the answer
        body = {"ts": 1764300300000, "values": {"label": "x" * 300}}
        r = c.post(f"/api/v1/{dev['token']}/telemetry", json=body)
        assert r.status_code == 400, r.text
        (told,) = r.json()["errors"]
        assert "string of 300 characters; the limit is 256" in told["message"]
    cli_json("gateway", "device", "add", "thermo-2", "--type", "thermo", data_dir=data_dir)
    # thermo-1's firmware has a stale password: 10 refused MQTT connects lock it out
    for _ in range(10):
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gateway_process.mqtt_port),
             "-u", "thermo-1", "-P", "stale", "-t", "devices/thermo-1/telemetry", "-m", "{}",
             "-q", "1"],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
    wait_for(
        lambda: cli_json("gateway", "status", data_dir=data_dir)["sync"].get("last_error"),
        "a failed sync attempt",
    )

    context = browser.new_context(timezone_id=TZ, locale="en-GB")
    context.set_default_timeout(15_000)
    page = context.new_page()
    foreign: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(base) else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(base + "/")
        page.wait_for_url("**/login")
        page.fill("#password", "not-the-password")
        page.press("#password", "Enter")
        page.locator("#login-error").wait_for()
        assert "Wrong password" in page.locator("#login-error").inner_text()
        assert page.context.cookies() == []
        page.fill("#password", PASSWORD)
        page.press("#password", "Enter")
        page.wait_for_url(base + "/")

        locked = page.locator("#s-locked tbody tr", has_text="thermo-1")
        assert "device" in locked.inner_text()
        summary = page.locator("#s-summary")
        backlog = summary.locator("dt:text-is('Sync backlog (readings)') + dd")
        assert backlog.inner_text() == "3"
        assert "failing" in summary.locator("dt:text-is('Cloud sync') + dd").inner_text()
        assert summary.locator("dt:text-is('Last sync error') + dd").inner_text()
        assert "—" in summary.locator("dt:text-is('Last successful sync') + dd").inner_text()
        device = page.locator("#s-devices tbody tr", has_text="thermo-1")
        assert "temperature 22.5" in device.inner_text()
        assert "sending" in device.inner_text() and "active" not in device.inner_text()
        assert "never sent" in page.locator("#s-devices tbody tr", has_text="thermo-2").inner_text()
        # the rejected message shows what the device was told, not "1 error in the payload"
        rejection = page.locator("#s-rejections tbody tr", has_text="thermo-1").first
        assert f"{told['message']} (at {told['path']})" in rejection.inner_text()
        assert "error in the payload" not in rejection.inner_text()
        assert "is locked out" in page.locator("#problems").inner_text()
        audit = page.locator("#s-audit tbody")
        assert "lockout" in audit.inner_text() and "mqtt" in audit.inner_text()
        assert page.locator("#tz").inner_text() == TZ
        # times are the viewer's (the script re-rendered them from /status.json since)
        page.locator("body[data-refreshed]").wait_for(state="attached", timeout=20_000)
        seen = device.locator("time").first
        ms = int(str(seen.get_attribute("data-ms")))
        from datetime import datetime
        from zoneinfo import ZoneInfo

        local = datetime.fromtimestamp(ms / 1000, ZoneInfo(TZ))
        assert f"{local.hour:02d}:{local.minute:02d}" in seen.inner_text()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "gateway-status.png"), full_page=True)

        page.click("#logout")
        page.wait_for_url("**/login")
        assert context.request.get(base + "/status.json").status == 401  # the session ended
        page.goto(base + "/")
        page.wait_for_url("**/login")
    finally:
        context.close()
    assert foreign == [], f"the page loaded from elsewhere: {foreign}"
    # the one expected: the wrong password's 401 answer
    assert [e for e in errors if "status of 401" not in e] == [], errors
    assert len(errors) == 1
