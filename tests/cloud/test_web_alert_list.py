"""The alerts page as a table for thousands (issue 15, item 4), in real headless Chromium on a
real cloud: 55 open alerts, one started each hour; the page asks the server for one page at a
time and pages on by cursor, searches by substring, filters by severity and by when the alerts
started (a preset or a custom from/to in the viewer's time zone, kept in the URL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from cloud.app.admin_ops import add_user
from cloud.app.server import uvicorn_server
from cloud.app.services import build_services, open_duckdb_store
from cloud.app.settings import CloudSettings
from cloud.security.auth import Principal
from cloud.storage.interface import NewAlert, Role
from common.clock import SystemClock
from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import EMAIL, PASSWORD, TZ, CloudThread, Site, Tab, run_async
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(120)

browser = web.browser
tab = web.tab
HOUR = 3_600_000
ALERTS = 55  # more than the open list's page of 50


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    settings = CloudSettings(data_dir=tmp_path_factory.mktemp("web-alert-list") / "cloud")
    store = open_duckdb_store(settings)
    services = build_services(settings, store, SystemClock())
    now = SystemClock().now_ms()
    user = run_async(add_user(store, EMAIL, PASSWORD, Role.ADMIN, "default", now))

    async def seed() -> None:
        org = await store.ensure_org("default", now)
        for i in range(ALERTS):  # pump-00 started now, pump-54 54 hours ago; every 5th critical
            severity = "critical" if i % 5 == 0 else "warning"
            alert = NewAlert(None, severity, "pressure", 9.5, now - i * HOUR, f"pump-{i:02d}")
            await store.create_alert(org.id, alert)

    run_async(seed())
    cloud = CloudThread(uvicorn_server(services, "127.0.0.1", free_port()))
    cloud.start()
    base = f"http://127.0.0.1:{cloud.server.config.port}"
    site = Site(base, store, settings, Principal(user["user_id"], "", Role.ADMIN), [])
    try:
        yield site
    finally:
        cloud.stop()
        site.http.close()
        store.close()


def local_input(ms: int) -> str:
    """A datetime-local value as the viewer (in TZ) types it."""
    return datetime.fromtimestamp(ms / 1000, ZoneInfo(TZ)).strftime("%Y-%m-%dT%H:%M")


def alerts_asked(tab: Tab) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(u).query) for u in tab.api_calls("GET", "/api/alerts")]


def test_alerts_are_paged_searched_and_filtered_on_the_server(tab: Tab, site: Site) -> None:
    page = tab.page
    shown = page.locator("#open-alerts-range")
    rows = page.locator("#s-active-alerts tbody tr")
    tab.login("/#/alerts")
    expect(shown).to_have_text("50 of 55 open alerts shown")
    assert rows.count() == 50
    assert all(q["limit"] == ["50"] for q in alerts_asked(tab) if "resolved" not in q["state"])

    page.click("#open-alerts-next")  # the next page by the answer's cursor
    expect(shown).to_have_text("5 of 55 open alerts shown")
    expect(rows).to_have_count(5)
    assert any("cursor" in q for q in alerts_asked(tab))
    page.click("#open-alerts-prev")
    expect(shown).to_have_text("50 of 55 open alerts shown")

    page.fill("#alert-search", "pump-07")  # a substring of one device, asked of the server
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("pump-07")
    page.fill("#alert-search", "")
    expect(shown).to_have_text("50 of 55 open alerts shown")

    page.select_option("#alert-severity", "critical")  # pump-00, -05, ..., -50
    expect(shown).to_have_text("11 of 11 open alerts shown")
    page.select_option("#alert-range", "24h")  # and started in the last day: -00 to -20
    expect(shown).to_have_text("5 of 5 open alerts shown")


def test_a_custom_time_window_is_applied_kept_in_the_url_and_checked(tab: Tab, site: Site) -> None:
    page = tab.page
    shown = page.locator("#open-alerts-range")
    tab.login("/#/alerts?severity=critical")
    expect(shown).to_have_text("11 of 11 open alerts shown")
    assert page.locator("#alert-from").is_hidden()

    page.select_option("#alert-range", "custom")  # the dates first: nothing asked yet
    asked = len(alerts_asked(tab))
    expect(page.locator("#alert-from")).to_be_visible()
    now = SystemClock().now_ms()
    # a start after the end is refused in words, on the field, and asks nothing
    page.fill("#alert-from", local_input(now - 2 * HOUR))
    page.fill("#alert-to", local_input(now - 12 * HOUR))
    page.click("#alert-range-apply")
    expect(page.locator("#alert-range-error")).to_have_text("Choose a start before the end.")
    assert page.locator("#alert-to").get_attribute("aria-invalid") == "true"
    assert len(alerts_asked(tab)) == asked

    # 31 to 9 hours ago (minutes as the field has them): pump-10, -15, -20, -25, -30
    page.fill("#alert-from", local_input(now - 31 * HOUR))
    page.fill("#alert-to", local_input(now - 9 * HOUR))
    page.locator("#alert-to").press("Enter")
    expect(shown).to_have_text("5 of 5 open alerts shown")
    last = alerts_asked(tab)[-1]
    assert int(last["to"][0]) - int(last["from"][0]) == 22 * HOUR
    expect(page.locator("#alert-range-error")).to_have_text("")

    # a link to this window (or a reload) shows the same alerts and the dates it was given
    query = parse_qs(urlsplit(page.url).fragment.split("?", 1)[1])
    assert query["from"] == last["from"] and query["to"] == last["to"]
    page.reload()
    expect(shown).to_have_text("5 of 5 open alerts shown")
    expect(page.locator("#alert-from")).to_have_value(local_input(int(last["from"][0])))
    expect(page.locator("#alert-range")).to_have_value("custom")

    page.select_option("#alert-range", "")  # any time again: the window is gone
    expect(shown).to_have_text("11 of 11 open alerts shown")
    assert "from=" not in page.url
    assert page.locator("#alert-from").is_hidden()
    assert tab.console_errors == []


def test_the_bulk_bar_and_row_buttons_work_after_a_live_patch(tab: Tab, site: Site) -> None:
    """A pushed change patches the page in place: the bar and the buttons on screen are the
    first render's (or copies a patch inserted), and must still count, act and report."""
    page = tab.page
    tab.login("/#/alerts?q=valve")
    expect(page.locator("#open-alerts-range")).to_have_text("No open alerts")

    async def raise_one() -> str:
        org = await site.store.ensure_org("default", SystemClock().now_ms())
        alert = NewAlert(None, "critical", "flow", 3.0, SystemClock().now_ms(), "valve-1")
        return (await site.store.create_alert(org.id, alert)).id

    alert_id = run_async(raise_one())  # arrives by push (or the poll): a patch, no reload
    row = page.locator("#s-active-alerts tbody tr", has_text="valve-1")
    row.wait_for()
    row.locator("input.pick").check()
    expect(page.locator("#bulk-count")).to_have_text("1 selected")
    expect(page.locator("#bulk-ack")).to_be_enabled()
    page.locator(f"#ack-{alert_id}").click()  # the inserted row's own button
    expect(row).to_contain_text("acknowledged")
    assert len(tab.api_calls("POST", f"/api/alerts/{alert_id}/ack")) == 1
    assert tab.console_errors == []


def test_a_cursor_the_server_refuses_starts_the_lists_again(tab: Tab, site: Site) -> None:
    """An old link's cursor is a 409 stale-cursor: the page shows the first pages and drops
    it from the URL, rather than an error whose "Try again" asks with it again."""
    page = tab.page
    tab.login("/#/alerts?cursor=bm90LW91cnM")  # well-formed base64url, not one of ours
    expect(page.locator("#open-alerts-range")).to_have_text(re.compile(r"^50 of \d+ open alerts"))
    assert "cursor" not in page.url
    assert page.locator("#retry").count() == 0
