"""The dashboard's device list written as JSON by the database (cloud/storage/device_json.py)
is what the API built in Python before, value for value, on both engines: numbers, booleans,
strings that need escaping, devices never heard from, without a gateway or a type, and the
online/offline boundary. Also over HTTP: GET /api/dashboard parses to the same devices."""

from __future__ import annotations

import json

import pytest

from cloud.api.views import device_view
from cloud.app.services import Services
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import T0, add_user, bearer, both_engines, login, reading, served

pytestmark = [both_engines, pytest.mark.timeout(120)]

THRESHOLD_S = 300.0


async def seed(store: SqlCloudStore) -> str:
    org = (await store.ensure_org("default", T0)).id
    other = (await store.ensure_org("other", T0)).id
    values: list[float | bool | str] = [
        21.5, -0.001, 1e20, 3.0, 0.1 + 0.2, True, False, 'say "hi"\\ \n tab\t', "ünï ☃", "",
    ]  # fmt: skip
    batch = [
        reading(f"dev-{i:02d}", f"m{k}", T0 - 1000 * i - k, v)
        for i in range(6)
        for k, v in enumerate(values)
    ]
    batch.append(reading("edge", "t", T0 - 7, 1.0))
    await store.insert_readings(org, "gw-a", batch, T0)
    await store.upsert_device(org, "never-seen", None, None)  # no readings, no latest
    await store.upsert_device(org, "dev-01", "gw-a", 'type "x"')
    await store.insert_readings(other, "gw-z", [reading("elsewhere", "t", T0, 5.0)], T0)
    return org


async def test_same_devices_as_built_in_python(store: SqlCloudStore) -> None:
    org = await seed(store)
    text = await store.device_list_json(org, T0, THRESHOLD_S)
    expected = [device_view(d, T0, THRESHOLD_S) for d in await store.list_devices(org)]
    assert json.loads(text) == expected
    assert [d["device_id"] for d in expected][:2] == ["dev-00", "dev-01"]
    assert any(d["status"] == "online" for d in expected)
    # the online/offline boundary: last_seen exactly threshold_s ago is online, 1 ms more not
    (seen,) = [d["last_seen"] for d in expected if d["device_id"] == "edge"]
    for now in (seen + int(THRESHOLD_S * 1000), seen + int(THRESHOLD_S * 1000) + 1):
        got = json.loads(await store.device_list_json(org, now, THRESHOLD_S))
        assert got == [device_view(d, now, THRESHOLD_S) for d in await store.list_devices(org)]
    status = {d["device_id"]: d["status"] for d in got}
    assert status["edge"] == "offline" and status["never-seen"] == "offline"
    assert (await store.device_list_json("no-such-org", T0, THRESHOLD_S)) == "[]"


async def test_dashboard_over_http(store: SqlCloudStore, services: Services) -> None:
    org = await seed(store)
    await add_user(store, "ops@example.com")
    now, threshold_s = services.clock.now_ms(), services.settings.online_threshold_s
    expected = [device_view(d, now, threshold_s) for d in await store.list_devices(org)]
    async with served(services) as client:
        tokens = await login(client, "ops@example.com")
        r = await client.get("/api/dashboard", headers=bearer(tokens))
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["devices"] == expected
    assert set(body) == {"config", "devices", "alerts"}
