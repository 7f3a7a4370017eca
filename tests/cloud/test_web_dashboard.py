"""The cloud dashboard in real headless Chromium (Debian's /usr/bin/chromium via Playwright).

One site per module: an in-process cloud (uvicorn on a free loopback port, so a test can close
its database for real) with a real `iotsphere gateway run` enrolled to it; a device publishes
through the gateway's Mosquitto, the gateway syncs signed batches, and the browser shows them.
Each test gets a fresh browser context (its own cookies). Screenshots of the main
pages go to artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest

from cloud.app.admin_ops import add_gateway, add_user
from cloud.app.server import GracefulServer, uvicorn_server
from cloud.app.services import build_services, open_duckdb_store
from cloud.app.settings import CloudSettings
from cloud.security.auth import Principal, TokenService, load_or_create_secret
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock, SystemClock
from common.rules import InvalidRule, parse_rule
from tests.conftest import REPO, THERMO_TOML, GatewayProcess, cli, cli_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():  # ./dev.sh test installs it (browser_setup)
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(120)

EMAIL, PASSWORD = "ops@example.com", "dashboard-passw0rd"
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DEVICE = "thermo-1"
T = TypeVar("T")
TZ = "America/St_Johns"  # -03:30: a time shown in UTC or the server's zone would not match


class CloudThread:
    """The cloud app on a real socket, served from a thread with its own event loop."""

    def __init__(self, server: GracefulServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "cloud did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@dataclass
class Site:
    base: str
    store: SqlCloudStore
    settings: CloudSettings
    user: Principal
    readings: list[tuple[int, float]]
    http: httpx.Client = field(default_factory=httpx.Client)

    def token(self) -> str:
        r = self.http.post(
            f"{self.base}/api/auth/login", json={"email": EMAIL, "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return self.http.request(method, f"{self.base}{path}", headers=headers, **kw)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread: Playwright's sync API keeps a loop running in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web")
    settings = CloudSettings(data_dir=root / "cloud")
    store = open_duckdb_store(settings)
    services = build_services(settings, store, SystemClock())
    now = SystemClock().now_ms()
    user = run_async(add_user(store, EMAIL, PASSWORD, Role.ADMIN, "default", now))
    enrollment = run_async(add_gateway(store, "site-1", "default", 3600, now))
    cloud = CloudThread(uvicorn_server(services, "127.0.0.1", free_port()))
    cloud.start()
    base = f"http://127.0.0.1:{cloud.server.config.port}"
    principal = Principal(user["user_id"], "", Role.ADMIN)
    gw_data = root / "gateway"
    gw_data.mkdir()
    (gw_data / "gateway.toml").write_text(THERMO_TOML)
    gateway = GatewayProcess(gw_data, free_port())
    site = Site(base, store, settings, principal, [])
    try:
        cli("gateway", "enroll", "--cloud", base, "--token", enrollment["enrollment_token"],
            data_dir=gw_data)  # fmt: skip
        device = cli_json("gateway", "device", "add", DEVICE, "--type", "thermo", data_dir=gw_data)
        gateway.start()
        # a reading every 5 minutes over the last hour, through the gateway's broker
        base_ts = now - now % 300_000 - 55 * 60_000
        site.readings = [(base_ts + i * 300_000, round(20 + i * 0.5, 1)) for i in range(12)]
        payload = [{"ts": ts, "values": {"temperature": v}} for ts, v in site.readings]
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gateway.mqtt_port), "-u", DEVICE,
             "-P", device["token"], "-t", f"devices/{DEVICE}/telemetry", "-q", "1",
             "-m", json.dumps(payload)],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip

        def synced() -> bool:
            r = site.api(
                "GET", f"/api/devices/{DEVICE}/telemetry",
                params={"metric": "temperature", "from": 0, "to": now + 3_600_000},
            )  # fmt: skip
            return r.status_code == 200 and len(r.json()["points"]) == len(site.readings)

        wait_for(synced, "the gateway's readings in the cloud")
        # units and a quick live refresh, as an operator would configure them
        r = site.api(
            "PUT", "/api/dashboard/config",
            json={"title": "Plant overview", "refresh_seconds": 1, "units": {"temperature": "°C"}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield site
    finally:
        if gateway.proc is not None:
            gateway.stop()
        cloud.stop()
        site.http.close()
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page in a fresh context, recording every request and console error it makes."""

    def __init__(self, browser: Any, site: Site, **context: Any) -> None:
        self.context = browser.new_context(
            timezone_id=TZ, locale="en-US", service_workers="block", **context
        )
        self.context.set_default_timeout(15_000)
        self.page = self.context.new_page()
        self.site = site
        self.requests: list[tuple[str, str]] = []
        self.console_errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append((r.method, r.url)))
        self.page.on(
            "console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def login(self, path: str = "/") -> None:
        page = self.page
        page.goto(self.site.base + path)
        page.wait_for_url("**/login?**")
        # keyboard only: the e-mail field has focus, Tab reaches the password, Enter submits.
        # (the URL changes before the page has loaded: keys typed earlier go nowhere)
        playwright_sync.expect(page.locator("#email")).to_be_focused()
        page.keyboard.type(EMAIL)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/login" not in url)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def api_calls(self, method: str, path: str) -> list[str]:
        url = self.site.base + path
        return [u for m, u in self.requests if m == method and u.split("?")[0] == url]

    def close(self) -> None:
        foreign = [u for _, u in self.requests if not u.startswith((self.site.base, "data:"))]
        self.context.close()
        assert foreign == [], f"the page loaded from elsewhere: {foreign}"


@pytest.fixture
def tab(browser: Any, site: Site) -> Iterator[Tab]:
    t = Tab(browser, site)
    yield t
    t.close()


def local_hhmm(ms: int) -> str:
    """h:mm as an en-US viewer in TZ reads it (not the host's or the server's zone)."""
    d = datetime.fromtimestamp(ms / 1000, ZoneInfo(TZ))
    return f"{d.hour % 12 or 12}:{d.minute:02d}"


def test_login_overview_and_device_chart_from_a_real_gateway(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/")
    assert page.url == site.base + "/"
    row = page.locator("tr", has=page.locator(f"a[href='#/devices/{DEVICE}']"))
    row.wait_for()
    last_value = site.readings[-1][1]
    assert f"{last_value:g}\u00a0°C" in row.inner_text()  # the latest value, with its unit
    assert "online" in row.inner_text()
    # the timestamp in the viewer's zone (Newfoundland), with the exact instant in datetime=
    last_seen = site.api("GET", f"/api/devices/{DEVICE}").json()["last_seen"]
    seen = row.locator("time")
    assert local_hhmm(last_seen) in seen.inner_text()
    instant = datetime.fromisoformat(str(seen.get_attribute("datetime")).replace("Z", "+00:00"))
    assert int(instant.timestamp() * 1000) == last_seen
    assert TZ in page.locator("#tz-note").inner_text()
    gw_row = page.locator("#s-gateways tbody tr", has_text="site-1")
    assert "online" in gw_row.inner_text()
    assert gw_row.locator("td").nth(4).inner_text() == str(len(site.readings))  # synced
    tab.shot("overview")

    page.locator(f"a[href='#/devices/{DEVICE}']").click()
    chart = page.locator("#chart-temperature")
    chart.locator(".plot[data-ready='true'] canvas").first.wait_for()  # uPlot drew it
    # bucketed: fewer points than readings, every reading counted in one
    assert 0 < int(chart.get_attribute("data-points") or 0) < len(site.readings)
    assert int(chart.get_attribute("data-readings") or 0) == len(site.readings)
    assert "temperature (°C)" in chart.locator("figcaption").inner_text()
    calls = tab.api_calls("GET", f"/api/devices/{DEVICE}/telemetry")
    assert calls and "bucket=" in calls[-1]  # bucketed by the API, not in the browser
    chart.locator("summary").click()  # the accessible data table has the same values
    table = chart.locator("details table").inner_text()
    assert f"{site.readings[0][1]:g}\u00a0°C" in table  # the first reading, a bucket's minimum
    tab.shot("device")

    # a narrower range comes from the API again and lands in the URL (kept across a login)
    page.select_option("#range-preset", "1h")
    page.wait_for_url("**range=1h")
    chart.locator(".plot[data-ready='true']").wait_for()
    assert tab.console_errors == []

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.reload()
    page.locator("#chart-temperature .plot[data-ready='true']").wait_for()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone's screen"
    tab.shot("device-phone")


def test_rule_form_checks_before_posting_and_the_alert_appears_live(tab: Tab, site: Site) -> None:
    page = tab.page
    # a webhook nobody answers: the alert's delivery to it shows as pending/retrying
    hook = site.api(
        "POST", "/api/notification_channels",
        json={"name": "ops-hook", "type": "webhook", "url": f"http://127.0.0.1:{free_port()}/"},
    )  # fmt: skip
    assert hook.status_code == 200, hook.text
    tab.login("/#/channels")
    page.locator("#s-notification-channels, table", has_text="ops-hook").first.wait_for()
    tab.shot("channels")
    page.goto(site.base + "/#/rules/new")
    page.fill("#metric", "accuracy")
    page.select_option("#operator", "<")
    page.fill("#threshold", "high")  # not a number: the form must catch it
    page.select_option("#scope", "source")
    page.fill("#scope_value", "model:churn-v3")
    page.click("#rule-submit")
    error = page.locator("#threshold-error")
    error.wait_for()
    assert "Enter a number" in error.inner_text()  # in words, not "finite number"
    assert page.locator("#threshold").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "threshold"
    tab.shot("rule-form-invalid")
    assert tab.api_calls("POST", "/api/monitoring/alert_rules") == []  # nothing was posted

    page.fill("#threshold", "0.8")
    page.fill("#name", "churn model accuracy")
    page.get_by_label("ops-hook (webhook)").check()
    page.click("#rule-submit")
    page.wait_for_url("**/#/rules")
    assert len(tab.api_calls("POST", "/api/monitoring/alert_rules")) == 1
    page.locator("tr", has_text="churn model accuracy").wait_for()
    assert "accuracy < 0.8" in page.locator("tr", has_text="churn model accuracy").inner_text()
    tab.shot("rules")

    page.goto(site.base + "/#/")
    page.locator("#s-open-alerts").wait_for()
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    now = SystemClock().now_ms()
    r = site.api(
        "POST", "/api/monitoring/metrics",
        json=[
            {"source": "model:churn-v3", "metric": "accuracy", "value": v, "ts": now - ago}
            for v, ago in ((0.93, 1_200_000), (0.88, 600_000), (0.61, 0))
        ],
    )  # fmt: skip
    assert r.status_code == 200, r.text
    alert_row = page.locator("tr", has=page.locator("a[href='#/models/model%3Achurn-v3']"))
    alert_row.wait_for(timeout=30_000)  # the monitoring loop raised it; polling brought it
    assert page.evaluate("window.__sameDocument") is True
    assert "0.61" in alert_row.inner_text() and "active" in alert_row.inner_text()
    deliveries = alert_row.locator(".deliveries")
    assert re.search(r"ops-hook: (pending|retrying|failed)", deliveries.inner_text())
    tab.shot("overview-alert")

    alert_row.get_by_role("button", name="Acknowledge").click()
    alert_row.locator(".badge.acknowledged").wait_for()
    alerts = site.api("GET", "/api/alerts").json()
    ours = [a for a in alerts if a["source"] == "model:churn-v3"]
    assert [a["state"] for a in ours] == ["acknowledged"]

    page.goto(site.base + "/#/models/model%3Achurn-v3")
    page.locator("#chart-accuracy").wait_for()
    assert "churn model accuracy" in page.locator("#s-rules-on-this-model").inner_text()
    assert "acknowledged" in page.locator("#s-alerts-on-this-model").inner_text()
    tab.shot("models")
    page.goto(site.base + "/#/alerts")
    page.locator("#s-active-alerts").wait_for()
    tab.shot("alerts")
    open_row = page.locator("#s-active-alerts tr", has_text="model:churn-v3")
    open_row.get_by_role("button", name="Resolve").click()
    page.locator("#s-past-alerts tr", has_text="model:churn-v3").wait_for()
    ours = [a for a in site.api("GET", "/api/alerts").json() if a["source"] == "model:churn-v3"]
    assert "resolved" in [a["state"] for a in ours]
    assert tab.console_errors == []


def test_rules_and_channels_are_deleted_in_two_steps(tab: Tab, site: Site) -> None:
    page = tab.page
    url = f"http://127.0.0.1:{free_port()}/"
    hook = {"name": "old-hook", "type": "webhook", "url": url}
    channel_id = site.api("POST", "/api/notification_channels", json=hook).json()["id"]
    rule = {"name": "old rule", "metric": "pressure", "operator": ">", "threshold": 5}
    rule_id = site.api("POST", "/api/monitoring/alert_rules", json=rule).json()["id"]
    tab.login("/")
    for page_path, button_id, api_path, name in (
        ("/#/rules", f"delete-{rule_id}", f"/api/monitoring/alert_rules/{rule_id}", "old rule"),
        (
            "/#/channels",
            f"delete-channel-{channel_id}",
            f"/api/notification_channels/{channel_id}",
            "old-hook",
        ),
    ):
        page.goto(site.base + page_path)
        button = page.locator(f"#{button_id}")
        button.click()  # the first click only arms it
        assert button.inner_text() == "Confirm delete"
        assert tab.api_calls("DELETE", api_path) == []
        button.click()
        page.locator("tr", has_text=name).wait_for(state="detached")
        assert len(tab.api_calls("DELETE", api_path)) == 1
        assert site.api("GET", api_path).status_code == 404
    assert tab.console_errors == []


# the page's in-memory session (the same module instance app.js uses)
EDIT_SESSION = """async changes => {
    const s = await import('/static/js/session.js');
    s.set({...s.get(), ...changes});
}"""
ACCESS = "async () => (await import('/static/js/session.js')).get().access"


def expired_token(site: Site) -> str:
    """A genuinely expired access token, signed with the cloud's own key."""
    org = run_async(site.store.user_by_email(EMAIL))
    assert org is not None
    past = ManualClock(SystemClock().now_ms() - 3_600_000)
    tokens = TokenService(
        load_or_create_secret(site.settings.jwt_secret_path), past,
        issuer=site.settings.issuer, audience=site.settings.audience, ttl_s=60,
    )  # fmt: skip
    return tokens.issue(Principal(org.id, org.org_id, org.role))


def test_device_page_custom_window_is_checked_and_kept_in_the_url(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login(f"/#/devices/{DEVICE}?range=6h")
    page.locator("#chart-temperature").wait_for()
    page.select_option("#range-preset", "custom")
    first_ts = site.readings[0][0]
    fmt = "%Y-%m-%dT%H:%M"
    local = lambda ms: datetime.fromtimestamp(ms / 1000, ZoneInfo(TZ)).strftime(fmt)  # noqa: E731
    page.fill("#range-from", local(first_ts + 3_600_000))  # a start after the end: refused
    page.fill("#range-to", local(first_ts))
    page.click("form.range button[type=submit]")
    playwright_sync.expect(page.locator("#range-error")).to_have_text(
        "Choose a start before the end."
    )
    assert "from=" not in page.url
    page.fill("#range-from", local(first_ts - 600_000))
    page.fill("#range-to", local(first_ts + 3_600_000))
    page.click("form.range button[type=submit]")
    page.wait_for_url(re.compile(r"from=\d+&to=\d+"))
    page.locator("#chart-temperature").wait_for()


def test_expired_token_goes_to_login_and_back(tab: Tab, site: Site) -> None:
    page = tab.page
    where = f"/#/devices/{DEVICE}?range=6h"
    tab.login(where)
    page.locator("#chart-temperature").wait_for()
    # the session is over (its refresh cookie gone), and the server says the access token
    # expired (the browser still thought it valid)
    tab.context.clear_cookies()
    page.evaluate(EDIT_SESSION, {"access": expired_token(site)})
    page.wait_for_url("**/login?**")  # the next live refresh got 401
    assert "session has ended" in page.locator("#login-reason").inner_text()
    tab.shot("login-expired")
    page.fill("#email", EMAIL)
    page.fill("#password", "wrong password!")
    page.click("#login-submit")
    playwright_sync.expect(page.locator("#login-error")).to_contain_text("Wrong e-mail or password")
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(site.base + where)
    page.locator("#chart-temperature").wait_for()


def test_access_token_is_refreshed_before_it_expires(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/#/alerts")
    page.locator("#s-active-alerts").wait_for()
    before = page.evaluate(ACCESS)
    refreshes = len(tab.api_calls("POST", "/api/auth/refresh"))  # the page load's own
    expires_soon = page.evaluate("Date.now() + 5000")  # inside the refresh margin
    page.evaluate(EDIT_SESSION, {"expiresAt": expires_soon})
    wait_for(lambda: page.evaluate(ACCESS) != before, "a new access token")
    assert len(tab.api_calls("POST", "/api/auth/refresh")) == refreshes + 1
    page.goto(site.base + "/#/rules")
    page.locator("#new-rule").wait_for()  # the new token works
    assert "/login" not in page.url


def test_store_down_friendly_error_retry_and_recovery(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/")
    page.locator("#s-devices").wait_for()
    site.store.make_unavailable()
    try:
        page.reload()
        problem = page.locator(".problem.unavailable")
        problem.wait_for()
        assert "temporarily unavailable" in problem.inner_text()
        assert "Trying again automatically in" in problem.inner_text()  # and it will
        assert "Traceback" not in page.content()
        tab.shot("store-down")
        # a reload starts by refreshing the access token (kept in memory only), which needs
        # the store too: the page asks the API again, whichever call it is
        api_calls = (
            "performance.getEntriesByType('resource').filter(e => e.name.includes('/api/')).length"
        )
        calls = page.evaluate(api_calls)
        page.click("#retry")  # still down: asks again, and still says so
        page.wait_for_function(f"() => {api_calls} > {calls}")
        page.locator(".problem.unavailable #retry").wait_for()
    finally:
        site.store.make_available()
    # at once, in one step (the automatic retry may have got there first)
    page.evaluate("() => document.getElementById('retry')?.click()")
    page.locator("#s-devices").wait_for()
    assert DEVICE in page.locator("#s-devices").inner_text()
    assert page.locator(".problem").count() == 0


def test_other_problems_show_their_title(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/#/devices/no-such-device")
    heading = page.locator("#problem-title")
    heading.wait_for()
    assert heading.inner_text() == "Not found"
    assert "no device 'no-such-device'" in page.locator(".problem").inner_text()
    tab.shot("not-found")


RULE_DOCS: list[dict[str, Any]] = [
    {"metric": "temperature", "operator": ">", "threshold": 30},
    {"metric": "temperature", "operator": ">", "threshold": "30"},
    {"metric": "temperature", "operator": ">"},
    {"metric": "bad metric!", "operator": "<", "threshold": 1},
    {"operator": "<", "threshold": 1},
    {"metric": "m", "operator": "~", "threshold": 1},
    {"metric": "m"},
    {"metric": "m", "operator": "==", "threshold": True},
    {"metric": "m", "operator": "!=", "threshold": "open"},
    {"metric": "m", "operator": "==", "threshold": "x" * 257},
    {"metric": "m", "operator": "==", "threshold": [1]},
    {"metric": "m", "operator": "nodata", "for_seconds": 60},
    {"metric": "m", "operator": "nodata"},
    {"metric": "m", "operator": "nodata", "threshold": 3, "for_seconds": 5},
    {"metric": "m", "operator": ">", "threshold": 1, "for_seconds": -1},
    {"metric": "m", "operator": ">", "threshold": 1, "hysteresis": -0.5},
    {"metric": "m", "operator": "==", "threshold": 1, "hysteresis": 0.5},
    {"metric": "m", "operator": ">", "threshold": 1, "hysteresis": 0.5, "for_seconds": 10},
    {"metric": "m", "operator": ">", "threshold": 1, "severity": "fatal"},
    {"metric": "m", "operator": ">", "threshold": 1, "enabled": "yes"},
    {"metric": "m", "operator": ">", "threshold": 1, "channels": ["a", ""]},
    {"metric": "m", "operator": ">", "threshold": 1, "channels": "a"},
    {"metric": "m", "operator": ">", "threshold": 1, "device_id": "d", "source": "model:x"},
    {"metric": "m", "operator": ">", "threshold": 1, "device_type": ""},
    {"metric": "m", "operator": ">", "threshold": 1, "name": "   "},
    {"metric": "m", "operator": ">", "threshold": 1, "name": "n" * 201},
    {"metric": "m" * 65, "operator": ">=", "threshold": 0},
]


def api_paths(doc: dict[str, Any]) -> list[str]:
    try:
        parse_rule(doc, id="r", version=1)
    except InvalidRule as exc:
        return sorted(e.path for e in exc.problem.errors)
    return []


def test_form_validation_mirrors_the_api(tab: Tab, site: Site) -> None:
    page = tab.page
    page.goto(site.base + "/login")
    got = page.evaluate(
        """async docs => { const m = await import('/static/js/rule-validate.js');
                           return docs.map(d => m.validateRule(d).map(e => e.path).sort()); }""",
        RULE_DOCS,
    )
    expected = [api_paths(d) for d in RULE_DOCS]
    assert any(expected) and not all(expected)  # the table holds valid and invalid rules
    assert got == expected


def test_vendor_assets_are_served_locally(tab: Tab, site: Site) -> None:
    r = site.http.get(f"{site.base}/static/vendor/uplot/uPlot.esm.js")
    assert r.status_code == 200 and "uPlot" in r.text
    r = site.http.get(f"{site.base}/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "http" not in r.text  # no external (or absolute) link in the page
