"""Accessibility and the phone, in real headless Chromium on test_web_dashboard's site (a real
cloud with a real gateway syncing to it), plus a gateway's own status page.

axe-core (cloud/web's devDependency, installed by `./dev.sh setup`) runs on every cloud page
and on the gateway status page, at a desktop (1280x800) and a phone (390x844) viewport, with
its default rules (WCAG 2.x A/AA and best practices): 0 violations. Screenshots of each go to
artifacts/screenshots/. On the phone, tables are cards whose action buttons are on screen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import SystemClock
from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import DEVICE, SHOTS, Site, Tab
from tests.conftest import REPO, GatewayProcess, cli, cli_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

site = web.site
browser = web.browser

AXE = REPO / "cloud" / "web" / "node_modules" / "axe-core" / "axe.min.js"
if not AXE.is_file():  # pragma: no cover - ./dev.sh setup runs npm ci in cloud/web
    pytest.fail("axe-core is missing: run ./dev.sh setup (npm ci in cloud/web)")

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
SOURCE = "model:a11y"

# (name, path, what shows the page has its data)
PAGES = [
    ("overview", "/#/", "#s-devices"),
    ("device", f"/#/devices/{DEVICE}", "#chart-temperature .plot[data-ready='true']"),
    ("alerts", "/#/alerts", "#s-active-alerts"),
    ("rules", "/#/rules", "#new-rule"),
    ("rule-form", "/#/rules/new", "#rule-submit"),
    ("models", "/#/models", "#models-api-keys"),
    ("model", "/#/models/model%3Aa11y", "#chart-accuracy"),
    ("channels", "/#/channels", "#channel-name"),
    ("api-keys", "/#/api-keys", "#api-key-create"),
]


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is, each with the first few offending nodes.
    Evaluated through the DevTools protocol: the pages' CSP allows no inline script."""
    page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ['violations'] })).violations
            .map(v => ({ id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.slice(0, 3).map(n => n.target.join(' ')) }))"""
    )
    return found


@pytest.fixture(scope="module")
def seeded(site: Site) -> Site:
    """What makes every page show its tables: a channel, a rule on a model, an alert it
    raised (with a delivery to the channel), an API key."""
    hook = {"name": "a11y-hook", "type": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}
    channel = site.api("POST", "/api/notification_channels", json=hook).json()
    rule = {"name": "a11y accuracy", "metric": "accuracy", "operator": "<", "threshold": 0.8,
            "source": SOURCE, "channels": [channel["id"]]}  # fmt: skip
    assert site.api("POST", "/api/monitoring/alert_rules", json=rule).status_code == 200
    now = SystemClock().now_ms()
    points = [{"source": SOURCE, "metric": "accuracy", "value": v, "ts": now - ago}
              for v, ago in ((0.93, 600_000), (0.5, 0))]  # fmt: skip
    assert site.api("POST", "/api/monitoring/metrics", json=points).status_code == 200
    assert site.api("POST", "/api/api_keys", json={"name": "a11y job"}).status_code == 200
    wait_for(
        lambda: any(a["source"] == SOURCE for a in site.api("GET", "/api/alerts").json()),
        "the alert the rule raised",
    )
    return site


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_axe_finds_nothing_on_any_cloud_page(browser: Any, seeded: Site, viewport: str) -> None:
    tab = Tab(browser, seeded, viewport=VIEWPORTS[viewport])
    page = tab.page
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        page.goto(seeded.base + "/login")
        page.locator("#login-form").wait_for()
        found["login"] = axe_violations(page)
        page.screenshot(path=str(SHOTS / f"axe-login-{viewport}.png"), full_page=True)
        tab.login("/")
        for name, path, ready in PAGES:
            page.goto(seeded.base + path)
            page.locator(ready).first.wait_for()
            found[name] = axe_violations(page)
            page.screenshot(path=str(SHOTS / f"axe-{name}-{viewport}.png"), full_page=True)
        assert tab.console_errors == []
    finally:
        tab.close()
    bad = {name: v for name, v in found.items() if v}
    assert bad == {}, json.dumps(bad, indent=1)
    assert set(found) == {"login", *(name for name, _, _ in PAGES)}


def test_on_a_phone_rows_are_cards_with_their_actions_on_screen(browser: Any, seeded: Site) -> None:
    tab = Tab(browser, seeded, viewport=VIEWPORTS["phone"])
    page = tab.page
    try:
        tab.login("/#/alerts")
        row = page.locator("#s-active-alerts tbody tr", has_text=SOURCE).first
        row.wait_for()
        header = page.locator("header.top").bounding_box()
        assert header is not None and header["height"] <= 100, header  # was ~190 of 844
        for button in (row.get_by_role("button", name="Acknowledge"),
                       row.get_by_role("button", name="Resolve")):  # fmt: skip
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        # a card: each cell labelled by its column, no sideways scrolling anywhere
        assert row.locator("td[data-label='Severity']").count() == 1
        label = row.locator("td[data-label='Severity']").evaluate(
            "td => getComputedStyle(td, '::before').content"
        )
        assert label == '"Severity"'
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the phone"
        page.screenshot(path=str(SHOTS / "phone-alerts.png"), full_page=True)

        page.goto(seeded.base + "/#/channels")
        delete = page.get_by_role("button", name="Delete channel a11y-hook")
        delete.wait_for()
        box = delete.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390, box
        wide = page.evaluate(
            "[...document.querySelectorAll('.table-wrap')].some(w => w.scrollWidth > w.clientWidth)"
        )
        assert not wide, "a table scrolls sideways"
        page.screenshot(path=str(SHOTS / "phone-channels.png"), full_page=True)
        assert tab.console_errors == []
    finally:
        tab.close()


# -- the gateway's own status page ---------------------------------------------------------------

STATUS_PASSWORD = "a11y-status-pw"


@pytest.fixture
def status_page(data_dir: Path, gateway_process: GatewayProcess) -> Iterator[str]:
    """A gateway with a device that sent, one that did not, and a refused message."""
    dev = cli_json("gateway", "device", "add", "probe-1", "--type", "thermo", data_dir=data_dir)
    cli_json("gateway", "device", "add", "probe-2", "--type", "thermo", data_dir=data_dir)
    done = cli("gateway", "password", "set", data_dir=data_dir, input=STATUS_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    gateway_process.start()
    base = f"http://127.0.0.1:{gateway_process.http_port()}"
    with httpx.Client(base_url=base) as c:
        url = f"/api/v1/{dev['token']}/telemetry"
        assert c.post(url, json={"values": {"temperature": 21.5}}).status_code == 200
        assert c.post(url, json={"values": {"label": "x" * 300}}).status_code == 400
    yield base


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_axe_finds_nothing_on_the_gateway_status_page(
    browser: Any, status_page: str, viewport: str
) -> None:
    context = browser.new_context(viewport=VIEWPORTS[viewport], locale="en-US")
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto(status_page + "/")
        page.wait_for_url("**/login")
        login = axe_violations(page)
        page.fill("#password", STATUS_PASSWORD)
        page.press("#password", "Enter")
        page.wait_for_url(status_page + "/")
        page.locator("#s-rejections tbody tr", has_text="probe-1").wait_for()
        # cells name their column (cards on a phone), also once status.js redrew the tables
        page.locator("body[data-refreshed]").wait_for(state="attached", timeout=20_000)
        reason = page.locator("#s-rejections td[data-label='Reason']").first.inner_text()
        assert "string of 300 characters; the limit is 256" in reason
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the screen"
        status = axe_violations(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"axe-gateway-status-{viewport}.png"), full_page=True)
    finally:
        context.close()
    assert {"login": login, "status": status} == {"login": [], "status": []}, json.dumps(
        {"login": login, "status": status}, indent=1
    )
