"""Live by push, in real headless Chromium, on test_web_dashboard's site (a real cloud with a
real gateway syncing to it): a reading committed in the cloud reaches an open overview over
Server-Sent Events (the page polls only every 30 s while the stream is open, so the push is
what brings it), the page is patched in place (an open data table stays open and the same
element through 30 s of updates, a chart keeps its canvas and zoom, the search box keeps focus),
and the device list is searched and paged on the server. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from common.clock import SystemClock
from common.model import Reading
from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import DEVICE, Site, Tab, run_async

pytestmark = pytest.mark.timeout(180)

site = web.site
browser = web.browser
tab = web.tab

DASHBOARD_CALLS = (
    "() => performance.getEntriesByType('resource')"
    ".filter(e => e.name.includes('/api/dashboard?')).length"
)


def commit(site: Site, device: str, value: float, metric: str = "temperature") -> None:
    """A reading committed in the cloud's store, as a sync batch would (not via the page)."""
    now = SystemClock().now_ms()
    org = run_async(site.store.ensure_org("default", now)).id
    (gateway,) = [g for g in run_async(site.store.list_gateways(org)) if g.name == "site-1"]
    r = Reading(device_id=device, metric=metric, ts=now, value=value, received_at=now)
    run_async(site.store.insert_readings(org, gateway.gateway_id, [r], now))


def pushing(page: Any) -> None:
    page.wait_for_function("() => document.getElementById('live-status').dataset.push === 'on'")


def test_a_committed_reading_reaches_the_open_overview_by_push(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/")
    row = page.locator("tr", has=page.locator(f"a[href='#/devices/{DEVICE}']"))
    row.wait_for()
    pushing(page)  # the stream is open: polling is down to every 30 s
    assert tab.api_calls("POST", "/api/events/ticket")
    streams = [u for m, u in tab.requests if m == "GET" and "/api/events?ticket=" in u]
    assert streams and all("access_token" not in u for u in streams)
    page.locator("#device-search").focus()
    page.keyboard.type("thermo")  # typed, then the page is patched under the cursor
    page.wait_for_function("() => location.hash.includes('q=thermo')")
    calls = page.evaluate(DASHBOARD_CALLS)
    committed = time.monotonic()
    commit(site, DEVICE, 77.7)
    row.filter(has_text="77.7").wait_for(timeout=10_000)
    seen_after = time.monotonic() - committed
    assert page.evaluate(DASHBOARD_CALLS) - calls <= 3  # one fetch per notice, no polling
    # the search box kept focus and its text through the patch
    assert page.evaluate("document.activeElement.id") == "device-search"
    assert page.locator("#device-search").input_value() == "thermo"
    tab.shot("overview-pushed")
    print(f"reading committed -> painted on the overview: {seen_after:.2f} s")


def test_search_filter_and_pages_on_the_server(tab: Tab, site: Site) -> None:
    now = SystemClock().now_ms()
    org = run_async(site.store.ensure_org("default", now)).id
    batch = [
        Reading(device_id=f"bulk-{i:04d}", metric="temperature", ts=now, value=1.0, received_at=now)
        for i in range(120)
    ]
    run_async(site.store.insert_readings(org, "gw-bulk", batch, now))
    page = tab.page
    tab.login("/")
    page.locator("#device-range").wait_for()
    assert "of 121" in page.locator("#device-range").inner_text()  # with thermo-1
    assert page.locator("#s-devices tbody tr").count() == 50  # one page, not the fleet
    page.click("#device-next")
    page.wait_for_function("() => location.hash.includes('page=2')")
    page.locator("#device-range", has_text="Showing 51\u2013100 of 121").wait_for()
    page.locator("#device-search").fill("lk-004")
    page.locator("#device-range", has_text="of 10").wait_for()
    page.locator("#device-search").fill("bulk-0042")
    page.locator("#device-range", has_text="Showing 1\u20131 of 1").wait_for()
    assert page.locator("#s-devices tbody tr").inner_text().startswith("bulk-0042")
    page.locator("#device-search").fill("")
    page.select_option("#device-gateway", label="site-1")
    page.wait_for_function(
        "() => location.hash.includes('gateway=') && !location.hash.includes('q=')"
    )
    # the same "1 of 1" as the search before: wait for the row itself
    page.locator("#s-devices tbody tr", has_text=DEVICE).wait_for()
    assert page.locator("#s-devices tbody tr").count() == 1
    assert "Showing 1\u20131 of 1" in page.locator("#device-range").inner_text()
    tab.shot("overview-search")
    # a page past the last (an old link, or fewer matches now): the last page there is
    page.goto(tab.site.base + "/#/?page=9")
    page.locator("#device-range", has_text="Showing 101\u2013121 of 121").wait_for()
    assert "page=3" in page.url
    # every answer was one page
    answers = [u for u in tab.api_calls("GET", "/api/dashboard")]
    assert answers and all("limit=50" in u for u in answers)


def test_open_data_table_and_chart_zoom_survive_30_s_of_updates(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login(f"/#/devices/{DEVICE}?range=1h")
    chart = page.locator("#chart-temperature")
    chart.locator(".plot[data-ready='true'] canvas").first.wait_for()
    pushing(page)
    chart.locator("summary").click()
    assert chart.locator("details").get_attribute("open") is not None
    # zoom in: drag across the middle of the plot
    box = chart.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=5)
    page.mouse.up()
    # mark the elements: patched in place, they are the same objects afterwards
    page.evaluate(
        "() => { const c = document.getElementById('chart-temperature');"
        " c.querySelector('details').iotMark = 1; c.querySelector('canvas').iotMark = 1; }"
    )
    first_row = chart.locator("details tbody tr").first.inner_text()
    deadline = time.monotonic() + 30
    value = 50.0
    while time.monotonic() < deadline:  # 30 s of updates, one every 2 s
        value += 1
        commit(site, DEVICE, value)
        time.sleep(2)
        assert chart.locator("details").get_attribute("open") is not None
    page.wait_for_function(
        "() => Number(document.querySelector('#chart-temperature .plot').dataset.updates) >= 5"
    )
    marks = page.evaluate(
        "() => { const c = document.getElementById('chart-temperature');"
        " return [c.querySelector('details').iotMark, c.querySelector('canvas').iotMark,"
        " c.querySelector('.plot').dataset.zoomed]; }"
    )
    assert marks == [1, 1, "true"], marks  # same table (still open), same canvas, still zoomed
    assert chart.locator("details tbody tr").first.inner_text() != first_row  # new data shown
    tab.shot("device-live-table-open")


def test_the_stream_needs_a_ticket_of_this_session(tab: Tab, site: Site) -> None:
    r = site.http.get(f"{site.base}/api/events")
    assert r.status_code == 401
    r = site.http.get(f"{site.base}/api/events", params={"ticket": site.token()})
    assert r.status_code == 401  # an access token is not a ticket
