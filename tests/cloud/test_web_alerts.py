"""Alerts that explain themselves, in real headless Chromium (issue 15, item 2): a real gateway
(`iotsphere gateway run`) with a rule of its own (`gateway rule add`) raises an alert from a
reading published to its broker; the alert reaches a real cloud through sync; its page shows
the rule's name, condition, where it was evaluated (which gateway) and its history, including
an acknowledgement made from the alerts list's bulk action; the Rules page lists the gateway's
rule read-only beside the cloud's. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cloud.app.admin_ops import add_gateway, add_user
from cloud.app.server import uvicorn_server
from cloud.app.services import build_services, open_duckdb_store
from cloud.app.settings import CloudSettings
from cloud.storage.interface import Role
from common.clock import SystemClock
from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import EMAIL, PASSWORD, SHOTS, CloudThread, Site, Tab, run_async
from tests.conftest import THERMO_TOML, GatewayProcess, cli, cli_json
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

browser = web.browser
tab = web.tab
DEVICE = "boiler-1"
RULE_NAME = "Boiler too hot"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-alerts")
    settings = CloudSettings(data_dir=root / "cloud")
    store = open_duckdb_store(settings)
    services = build_services(settings, store, SystemClock())
    now = SystemClock().now_ms()
    user = run_async(add_user(store, EMAIL, PASSWORD, Role.ADMIN, "default", now))
    enrollment = run_async(add_gateway(store, "boiler-room", "default", 3600, now))
    cloud = CloudThread(uvicorn_server(services, "127.0.0.1", free_port()))
    cloud.start()
    base = f"http://127.0.0.1:{cloud.server.config.port}"
    gw_data = root / "gateway"
    gw_data.mkdir()
    (gw_data / "gateway.toml").write_text(THERMO_TOML)
    gateway = GatewayProcess(gw_data, free_port())
    site = Site(base, store, settings, web.Principal(user["user_id"], "", Role.ADMIN), [])
    try:
        cli("gateway", "enroll", "--cloud", base, "--token", enrollment["enrollment_token"],
            data_dir=gw_data)  # fmt: skip
        device = cli_json("gateway", "device", "add", DEVICE, "--type", "thermo", data_dir=gw_data)
        gateway.start()
        # a rule of the gateway's own, evaluated there (the cloud never had it)
        cli("gateway", "rule", "add", "--metric", "temperature", "--op", ">", "--threshold", "80",
            "--device", DEVICE, "--for", "0", "--hysteresis", "2", "--severity", "critical",
            "--name", RULE_NAME, data_dir=gw_data)  # fmt: skip
        subprocess.run(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(gateway.mqtt_port), "-u", DEVICE,
             "-P", device["token"], "-t", f"devices/{DEVICE}/telemetry", "-q", "1",
             "-m", json.dumps({"temperature": 84.5})],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip

        def synced() -> Any:
            alerts = site.api("GET", "/api/alerts").json()
            rules = site.api("GET", "/api/monitoring/gateway_rules").json()
            return alerts and rules and alerts

        wait_for(synced, "the gateway's alert and rule in the cloud", timeout_s=60)
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield site
    finally:
        if gateway.proc is not None:
            gateway.stop()
        cloud.stop()
        site.http.close()
        store.close()


def test_a_gateway_alert_explains_itself_and_its_rule_is_listed_read_only(
    tab: Tab, site: Site
) -> None:
    page = tab.page
    tab.login("/#/alerts")
    row = page.locator("#s-active-alerts tbody tr", has_text=DEVICE)
    row.wait_for()
    assert RULE_NAME in row.inner_text()
    # acknowledged with the bulk action: one request for the selection
    row.locator("input.pick").check()
    assert page.locator("#bulk-count").inner_text() == "1 selected"
    page.locator("#bulk-ack").click()
    page.locator("#s-active-alerts tbody tr", has_text="acknowledged").wait_for()
    assert len(tab.api_calls("POST", "/api/alert_actions")) == 1
    assert page.locator("#bulk-count").inner_text() == "0 selected"
    assert page.locator("#bulk-ack").is_disabled() and page.locator("#bulk-resolve").is_disabled()
    tab.shot("alerts-list")

    page.locator("#s-active-alerts a.alert-link", has_text=RULE_NAME).click()
    page.wait_for_url("**/#/alerts/*")
    page.locator("#alert-condition").wait_for()
    assert page.locator("#alert-rule-name").inner_text() == RULE_NAME
    assert page.locator("#alert-condition").inner_text().startswith("temperature > 80")
    assert "hysteresis" in page.locator("#alert-condition").inner_text()
    assert page.locator("#alert-scope").inner_text() == f"device {DEVICE}"
    assert page.locator("#alert-evaluated").inner_text() == "on gateway boiler-room"
    assert "temperature = 84.5" in page.locator("#alert-raised-by").inner_text()
    history = page.locator("#s-history tbody")
    history.locator("tr", has_text="Acknowledged").wait_for()
    rows = history.locator("tr").all_inner_texts()
    assert rows[0].startswith(tuple("0123456789JFMASOND")) and "Raised" in rows[0]
    assert "gateway " in rows[0]
    assert "Acknowledged" in rows[1] and EMAIL in rows[1]
    tab.shot("alert-detail")

    page.goto(site.base + "/#/rules")
    gw_rows = page.locator("#s-gateway-rules tbody tr")
    gw_rows.first.wait_for()
    text = gw_rows.first.inner_text()
    assert "boiler-room" in text and RULE_NAME in text and "temperature > 80" in text
    # read-only: no edit link or delete button for it
    assert gw_rows.first.locator("a, button").count() == 0
    tab.shot("rules-with-gateway-rules")
    assert tab.console_errors == []
