"""The dashboard through an outage, in real headless Chromium, on test_web_dashboard's site (a
real cloud with a real gateway syncing to it): the store's DuckDB connection closed under the
running cloud (`make_unavailable`), the pages keep their data under a "stale since" banner
counting down to the 503's Retry-After, retry by themselves and recover without a click; and a
gateway that is behind is shown as lagging, in words. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import DEVICE, Site, Tab

pytestmark = pytest.mark.timeout(120)

# the same module-scoped site, browser and per-test tab as the dashboard's own tests
site = web.site
browser = web.browser
tab = web.tab

DASHBOARD_CALLS = (
    "() => performance.getEntriesByType('resource')"
    ".filter(e => e.name.includes('/api/dashboard')).length"
)


def countdown(page: Any) -> int:
    text = page.locator("#outage-countdown").inner_text()
    m = re.fullmatch(r"(\d+) s|now", text)
    assert m, text
    return int(m.group(1) or 0)


def test_store_outage_keeps_the_data_counts_down_and_recovers_by_itself(
    tab: Tab, site: Site
) -> None:
    page = tab.page
    wait_s = site.settings.retry_after_s  # the 503's Retry-After
    tab.login("/")
    page.locator("#s-devices").wait_for()
    assert DEVICE in page.locator("#s-devices").inner_text()
    site.store.make_unavailable()  # closes the real DuckDB connection under the running cloud
    try:
        # the next refresh (every second here) meets the 503: the rows stay, the banner says
        page.locator("#outage.shown").wait_for(timeout=5_000)
        status = page.locator("#outage-status")
        assert status.get_attribute("role") == "status"
        assert re.search(r"Stale since \d\d:\d\d:\d\d", status.inner_text())
        assert "Trying again automatically in" in status.inner_text()
        assert page.locator("#live-status").inner_text().startswith("Stale since")
        assert DEVICE in page.locator("#s-devices").inner_text()
        assert page.locator(".problem").count() == 0
        first = countdown(page)
        assert 1 <= first <= wait_s
        page.wait_for_function(  # it counts down, visibly
            f"() => /^([0-9]+) s$/.test(document.getElementById('outage-countdown').textContent)"
            f" && parseInt(document.getElementById('outage-countdown').textContent) < {first}",
            timeout=3_000,
        )
        tab.shot("store-down-stale")
        # it tries again by itself once the countdown ends, and stays stale (still down)
        calls = page.evaluate(DASHBOARD_CALLS)
        page.wait_for_function(f"{DASHBOARD_CALLS} > {calls}", timeout=(wait_s + 2) * 1000)
        page.wait_for_function(
            "() => parseInt(document.getElementById('outage-countdown').textContent) >= "
            f"{wait_s - 1}",
            timeout=3_000,
        )  # a new countdown from the new 503's Retry-After
        assert DEVICE in page.locator("#s-devices").inner_text()
        # "Retry now" asks at once
        calls = page.evaluate(DASHBOARD_CALLS)
        page.click("#retry-now")
        page.wait_for_function(f"{DASHBOARD_CALLS} > {calls}", timeout=2_000)
        page.locator("#outage.shown").wait_for()
        assert page.locator(".problem").count() == 0
    finally:
        site.store.make_available()
    back = time.monotonic()
    # no click: the page's own retry finds the store, the banner goes, the data refreshes
    page.wait_for_function(
        "() => !document.getElementById('outage').classList.contains('shown')",
        timeout=(wait_s + 2) * 1000,
    )
    assert time.monotonic() - back <= wait_s + 2
    assert page.locator("#outage-status").inner_text() == ""
    assert page.locator("#live-status").inner_text().startswith("Live")
    assert DEVICE in page.locator("#s-devices").inner_text()
    tab.shot("store-back")
    # the only console errors are the browser's own lines about the 503 answers
    assert [e for e in tab.console_errors if "503" not in e] == []


@pytest.mark.parametrize("path", [f"/#/devices/{DEVICE}", "/#/alerts"])
def test_device_and_alert_pages_keep_their_data_through_an_outage(
    tab: Tab, site: Site, path: str
) -> None:
    page = tab.page
    tab.login(path)
    heading = page.locator("main h1")
    heading.wait_for()
    shown = heading.inner_text()
    site.store.make_unavailable()
    try:
        page.locator("#outage.shown").wait_for(timeout=(site.settings.retry_after_s + 12) * 1000)
        assert heading.inner_text() == shown and page.locator(".problem").count() == 0
    finally:
        site.store.make_available()
    page.wait_for_function(
        "() => !document.getElementById('outage').classList.contains('shown')",
        timeout=(site.settings.retry_after_s + 2) * 1000,
    )
    assert heading.inner_text() == shown


def test_a_lagging_gateway_is_shown_in_words_not_as_online(tab: Tab, site: Site) -> None:
    # the cloud's answer with the gateway's state as GET /api/gateways gives it when behind
    def lagging(route: Any) -> None:
        answer = route.fetch()
        gateways = [{**g, "state": "lagging"} for g in answer.json()]
        route.fulfill(response=answer, json=gateways)

    tab.page.route("**/api/gateways", lagging)
    tab.login("/")
    row = tab.page.locator("#s-gateways tbody tr", has_text="site-1")
    row.wait_for()
    assert row.locator(".badge").inner_text() == "lagging"
    assert "online" not in row.inner_text()
    assert "0 of 1" in tab.page.locator(".summary").inner_text()  # gateways online: none
    tab.shot("gateway-lagging")
