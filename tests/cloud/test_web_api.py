"""What the dashboard needs from the server, without a browser: its pages and headers, the
vendor assets (and a clear log line when they are missing), GET /api/monitoring/sources and
the sync fields of GET /api/gateways."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from cloud.api import webui
from cloud.app.admin_ops import add_gateway
from cloud.app.asgi import create_app
from cloud.app.services import Services
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.cloud.test_cloud_sync import batch, enroll, post
from tests.support.cloud import (
    T0,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
)

pytestmark = both_engines


async def test_pages_are_served_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    for path, marker in (("/", "/static/js/app.js"), ("/login", "/static/js/login.js")):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert marker in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    r = await client.get("/static/js/api.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert_problem(await client.get("/static/js/no-such-module.js"), 404)
    assert_problem(await client.get("/static/../cloud/app.py"), 404)


async def test_missing_vendor_assets_are_logged_not_fatal(
    services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setattr(webui, "UPLOT_DIR", tmp_path / "nowhere")
    with caplog.at_level(logging.WARNING, logger="iotsphere.cloud.web"):
        app = create_app(services)
    assert any("dashboard charts unavailable" in r.getMessage() for r in caplog.records)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
        assert (await c.get("/")).status_code == 200
        assert_problem(await c.get("/static/vendor/uplot/uPlot.esm.js"), 404)


async def test_vendor_assets_installed(client: httpx.AsyncClient) -> None:
    if webui.vendor_missing():  # pragma: no cover - ./dev.sh setup installs them
        pytest.fail("run ./dev.sh setup: cloud/web/node_modules is missing")
    r = await client.get("/static/vendor/uplot/uPlot.esm.js")
    assert r.status_code == 200 and "as default" in r.text


async def test_sources_list_every_model_metric_with_its_newest_value(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    await add_user(store, "ds@example.com", Role.OPERATOR)
    auth = bearer(await login(client, "ds@example.com"))
    assert (await client.get("/api/monitoring/sources", headers=auth)).json() == []
    points = [
        {"source": "model:churn-v3", "metric": "accuracy", "value": 0.9, "ts": T0 - 2000},
        {"source": "model:churn-v3", "metric": "accuracy", "value": 0.7, "ts": T0 - 1000},
        {"source": "job:etl", "metric": "ok", "value": True, "ts": T0 - 500},
    ]
    r = await client.post("/api/monitoring/metrics", json=points, headers=auth)
    assert r.status_code == 200, r.text
    r = await client.get("/api/monitoring/sources", headers=auth)
    assert r.json() == [
        {"source": "job:etl", "metric": "ok", "count": 1, "last_ts": T0 - 500, "last_value": True},
        {"source": "model:churn-v3", "metric": "accuracy", "count": 2, "last_ts": T0 - 1000,
         "last_value": 0.7},
    ]  # fmt: skip
    await add_user(store, "other@example.com", Role.ADMIN, org="elsewhere")
    other = bearer(await login(client, "other@example.com"))
    assert (await client.get("/api/monitoring/sources", headers=other)).json() == []
    assert_problem(await client.get("/api/monitoring/sources"), 401)


async def test_gateways_show_status_and_last_sync(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services, clock: ManualClock
) -> None:
    await add_user(store, "ann@example.com", Role.VIEWER)
    auth = bearer(await login(client, "ann@example.com"))
    await add_gateway(store, "idle", "default", 3600, T0)
    gw = await enroll(client, store, clock, "site-1", "default")
    clock.advance(30)
    assert (await post(client, gw, batch(gw.gateway_id, 1, n=5))).status_code == 200
    clock.advance(30)
    second = batch(gw.gateway_id, 6, devices=("d2",), n=3)  # other readings: all stored
    assert (await post(client, gw, second)).status_code == 200
    listed = {g["name"]: g for g in (await client.get("/api/gateways", headers=auth)).json()}
    synced, idle = listed["site-1"], listed["idle"]
    assert (synced["status"], synced["last_sync_at"], synced["readings_synced"]) == (
        "online",
        T0 + 60_000,
        8,
    )
    # never heard from: offline, nothing synced
    assert (idle["status"], idle["last_sync_at"], idle["readings_synced"]) == ("offline", None, 0)
    clock.advance(services.settings.online_threshold_s + 1)
    listed = {g["name"]: g for g in (await client.get("/api/gateways", headers=auth)).json()}
    assert listed["site-1"]["status"] == "offline"
