"""A gateway's `state` in GET /api/gateways: online, lagging (silent past `lag_after_s`, a
backlog over a full batch, or readings waiting without a batch) or offline (silent past
`offline_after_s`). The rule alone on a ManualClock, then over the API with signed batches."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx

from cloud.api.views import gateway_state
from cloud.app.admin_ops import add_gateway
from cloud.app.services import Services
from cloud.app.settings import CloudSettings, GatewayStateSettings
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.cloud.test_cloud_sync import batch, enroll, get_config, post
from tests.support.cloud import add_user, bearer, both_engines, login

LIMITS = GatewayStateSettings()


def test_the_defaults_fit_the_gateways_rhythm() -> None:
    # an idle gateway is heard from every 10 s (its configuration fetch): never lagging
    assert 10 < LIMITS.lag_after_s <= 15 < LIMITS.offline_after_s
    assert CloudSettings(data_dir=Path(".")).gateway_state == LIMITS


def test_state_by_contact_batch_and_backlog() -> None:
    clock = ManualClock()
    seen = clock.now_ms()

    def state(last_batch: int | None = seen, backlog: int | None = 0) -> str:
        return gateway_state(seen, last_batch, backlog, clock.now_ms(), LIMITS)

    assert gateway_state(None, None, None, clock.now_ms(), LIMITS) == "offline"  # never heard
    assert state() == "online"
    assert state(last_batch=None, backlog=None) == "online"  # enrolled, nothing to send yet
    assert state(backlog=LIMITS.lag_backlog_readings) == "online"  # one full batch: keeps up
    assert state(backlog=LIMITS.lag_backlog_readings + 1) == "lagging"
    clock.advance(LIMITS.lag_after_s)
    assert state() == "online"  # the limit itself is still in time
    assert state(last_batch=seen, backlog=5) == "online"
    clock.advance(0.001)
    # silent past the limit (its requests refused, or nothing arrives): lagging
    assert state() == "lagging"
    clock.advance(LIMITS.offline_after_s - LIMITS.lag_after_s)
    assert state() == "offline"


def test_readings_waiting_without_a_batch_are_lagging_though_the_gateway_is_heard() -> None:
    clock = ManualClock()
    last_batch = clock.now_ms()
    clock.advance(LIMITS.lag_after_s + 1)
    heard = clock.now_ms()  # a configuration fetch went through; batches did not
    assert gateway_state(heard, last_batch, 0, heard, LIMITS) == "online"  # nothing waiting
    assert gateway_state(heard, last_batch, 12, heard, LIMITS) == "lagging"
    assert gateway_state(heard, None, 12, heard, LIMITS) == "lagging"


@both_engines
async def test_gateways_list_their_state(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services, clock: ManualClock
) -> None:
    limits = services.settings.gateway_state
    await add_user(store, "ann@example.com", Role.VIEWER)
    auth = bearer(await login(client, "ann@example.com"))
    await add_gateway(store, "idle", "default", 3600, clock.now_ms())
    gw = await enroll(client, store, clock, "site-1", "default")

    async def states() -> dict[str, str]:
        r = await client.get("/api/gateways", headers=auth)
        assert r.status_code == 200, r.text
        return {g["name"]: g["state"] for g in r.json()}

    assert await states() == {"idle": "offline", "site-1": "offline"}  # enrolled, not heard
    assert (await post(client, gw, batch(gw.gateway_id, 1, n=5))).status_code == 200
    assert (await states())["site-1"] == "online"
    # its batches are refused (nothing of them is recorded): lagging past the limit...
    clock.advance(limits.lag_after_s + 1)
    assert (await states())["site-1"] == "lagging"
    # ...and offline once silent past the other one
    clock.advance(limits.offline_after_s - limits.lag_after_s)
    assert (await states())["site-1"] == "offline"
    # back, but more than a full batch still waits at the gateway
    behind = dataclasses.replace(
        batch(gw.gateway_id, 6, n=3), backlog=limits.lag_backlog_readings + 1
    )
    assert (await post(client, gw, behind)).status_code == 200
    assert (await states())["site-1"] == "lagging"
    waiting = dataclasses.replace(batch(gw.gateway_id, 9, n=3), backlog=12)
    assert (await post(client, gw, waiting)).status_code == 200
    assert (await states())["site-1"] == "online"
    # heard every 10 s (configuration) but no batch carries the waiting readings: lagging
    for _ in range(2):
        clock.advance(10)
        await get_config(client, gw, 0)
    assert (await states())["site-1"] == "lagging"
    caught_up = batch(gw.gateway_id, 12, n=3)  # backlog 0
    assert (await post(client, gw, caught_up)).status_code == 200
    assert (await states()) == {"idle": "offline", "site-1": "online"}
