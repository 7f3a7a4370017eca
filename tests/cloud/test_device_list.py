"""The device list searched, filtered, sorted and paged on the server, and a device's readings
as streamed CSV (issue 15, item 4), over real HTTP on both engines."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import pytest

from cloud.app.services import Services
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import (
    T0,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
    reading,
    served,
)

pytestmark = [both_engines, pytest.mark.timeout(120)]

N = 120  # devices: more than one page


async def seed(store: SqlCloudStore) -> str:
    await add_user(store, "ops@example.com")
    org = (await store.ensure_org("default", T0)).id
    other = (await store.ensure_org("other", T0)).id
    for gw, first in (("gw-a", 0), ("gw-b", N // 2)):
        batch = []
        for i in range(first, first + N // 2):
            # even devices heard 1 min ago (online), odd ones an hour ago (offline)
            seen = T0 - (60_000 if i % 2 == 0 else 3_600_000)
            batch.append(reading(f"sensor-{i:04d}", "temperature", seen - 5, 20.0 + i))
        await store.insert_readings(org, gw, batch, T0)
    for i in range(N):
        kind = "thermo" if i % 3 else "door"
        await store.upsert_device(org, f"sensor-{i:04d}", None, kind)
    await store.upsert_device(org, "never-seen", None, "door")
    # another org's device matching every search: never listed
    await store.insert_readings(other, "gw-x", [reading("sensor-0001-x", "t", T0, 1.0)], T0)
    return org


async def test_pages_search_filter_sort(services: Services, store: SqlCloudStore) -> None:
    await seed(store)
    async with served(services) as http:
        auth = bearer(await login(http, "ops@example.com"))

        # no list parameter: every device, as before (existing clients)
        r = await http.get("/api/devices", headers=auth)
        assert r.status_code == 200 and len(r.json()) == N + 1
        assert "x-total-count" not in r.headers

        r = await http.get("/api/devices?limit=25&offset=50", headers=auth)
        assert r.status_code == 200, r.text
        # "never-seen" sorts first
        assert [d["device_id"] for d in r.json()] == [f"sensor-{i:04d}" for i in range(49, 74)]
        assert r.headers["x-total-count"] == str(N + 1)
        assert r.json()[0]["latest"] == {"temperature": 69.0}

        # substring, case-insensitive, finds the one device
        r = await http.get("/api/devices?q=SOR-0042", headers=auth)
        assert [d["device_id"] for d in r.json()] == ["sensor-0042"]
        assert r.headers["x-total-count"] == "1"

        r = await http.get("/api/devices?status=online&limit=500", headers=auth)
        assert {d["status"] for d in r.json()} == {"online"} and len(r.json()) == N // 2
        r = await http.get("/api/devices?status=offline&limit=500", headers=auth)
        assert {d["status"] for d in r.json()} == {"offline"}
        assert len(r.json()) == N // 2 + 1  # with the never-seen one

        gws = {d["gateway_id"] for d in (await http.get("/api/devices", headers=auth)).json()}
        r = await http.get("/api/devices?gateway=gw-b&limit=500", headers=auth)
        assert {d["gateway_id"] for d in r.json()} == {"gw-b"} and len(r.json()) == N // 2
        assert "gw-x" not in gws

        r = await http.get("/api/devices?type=door&limit=500", headers=auth)
        assert {d["type"] for d in r.json()} == {"door"} and len(r.json()) == N // 3 + 1

        r = await http.get("/api/devices?sort=last_seen&order=desc&limit=3", headers=auth)
        assert [d["last_seen"] for d in r.json()] == [T0 - 60_000] * 3
        r = await http.get("/api/devices?sort=last_seen&order=asc&limit=500", headers=auth)
        assert r.json()[-1]["device_id"] == "never-seen"  # never seen: last either way
        r = await http.get("/api/devices?sort=device_id&order=desc&limit=1", headers=auth)
        assert r.json()[0]["device_id"] == "sensor-0119"

        # the dashboard: one page and its counts
        r = await http.get("/api/dashboard?limit=10&q=sensor&status=online", headers=auth)
        body = r.json()
        assert len(body["devices"]) == 10
        assert body["devices_page"] == {
            "total": N // 2,
            "limit": 10,
            "offset": 0,
            "all_devices": N + 1,
            "online": N // 2,
            "types": ["door", "thermo"],
        }
        r = await http.get("/api/dashboard", headers=auth)
        assert len(r.json()["devices"]) == N + 1 and "devices_page" not in r.json()

        for bad in ("limit=0", "limit=501", "offset=-1", "sort=password", "status=maybe"):
            assert_problem(await http.get(f"/api/devices?{bad}", headers=auth), 422)
            assert_problem(await http.get(f"/api/dashboard?{bad}", headers=auth), 422)


async def test_readings_csv_streamed(services: Services, store: SqlCloudStore) -> None:
    await add_user(store, "ops@example.com")
    org = (await store.ensure_org("default", T0)).id
    n = 12_000  # more than two chunks of the export
    batch = [reading("dev-1", "temperature", T0 - 1_000_000 + i * 10, i / 10) for i in range(n)]
    batch += [reading("dev-1", "label", T0 - 500, "=HYPERLINK(1)")]
    await store.insert_readings(org, "gw", batch, T0)
    async with served(services) as http:
        auth = bearer(await login(http, "ops@example.com"))
        lo, hi = T0 - 1_000_000 + 100, T0  # the first 10 readings are outside
        async with http.stream(
            "GET", f"/api/devices/dev-1/readings.csv?from={lo}&to={hi}", headers=auth
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/csv")
            assert "attachment" in r.headers["content-disposition"]
            assert "content-length" not in r.headers  # streamed (chunked), not built whole
            chunks = [c async for c in r.aiter_bytes()]
        rows = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
        assert rows[0] == ["device_id", "metric", "ts_ms", "time_utc", "value", "flags"]
        temps = [row for row in rows[1:] if row[1] == "temperature"]
        assert len(temps) == n - 10
        assert temps[0][2] == str(lo) and float(temps[0][4]) == 1.0
        assert [int(t[2]) for t in temps] == sorted(int(t[2]) for t in temps)
        assert [row[4] for row in rows[1:] if row[1] == "label"] == ["'=HYPERLINK(1)"]

        one = await http.get(
            f"/api/devices/dev-1/readings.csv?from={lo}&to={hi}&metric=label", headers=auth
        )
        assert len(one.text.strip().splitlines()) == 2
        assert_problem(await http.get("/api/devices/nope/readings.csv", headers=auth), 404)
        assert_problem(await http.get("/api/devices/dev-1/readings.csv?from=-1", headers=auth), 422)
        assert_problem(await http.get("/api/devices/dev-1/readings.csv"), 401)
        # a gateway may name devices in any script; the file name is ASCII (a header is Latin-1)
        await store.insert_readings(org, "gw", [reading("温度-1", "t", T0 - 10, 1.0)], T0)
        r = await http.get("/api/devices/温度-1/readings.csv", headers=auth)
        assert r.status_code == 200 and 'filename="__-1-' in r.headers["content-disposition"]

        # a plain download link: an export ticket instead of the bearer token
        r = await http.post("/api/events/ticket?scope=export", headers=auth)
        export = r.json()["ticket"]
        link = f"/api/devices/dev-1/readings.csv?from={lo}&to={hi}&metric=label&ticket={export}"
        r = await http.get(link)
        assert r.status_code == 200 and "'=HYPERLINK(1)" in r.text
        stream = (await http.post("/api/events/ticket", headers=auth)).json()["ticket"]
        assert_problem(await http.get(f"/api/devices/dev-1/readings.csv?ticket={stream}"), 401)
        assert_problem(await http.get(f"/api/events?ticket={export}"), 401)


async def test_concurrent_identical_overview_requests_share_one_query(
    services: Services, store: SqlCloudStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pushed change makes every open overview refetch at once: identical requests that
    arrive while one is computing take its answer instead of querying again."""
    await seed(store)
    calls = 0
    real = store.device_page

    async def slow_page(org_id: str, query: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5)  # the first is still computing when the others arrive
        return await real(org_id, query)

    monkeypatch.setattr(store, "device_page", slow_page)
    async with served(services) as http:
        auth = bearer(await login(http, "ops@example.com"))
        answers = await asyncio.gather(
            *(http.get("/api/dashboard?limit=50", headers=auth) for _ in range(20))
        )
        assert {r.status_code for r in answers} == {200}
        assert len({r.content for r in answers}) == 1
        assert calls < 5  # 20 without sharing
        other = await http.get("/api/dashboard?limit=10", headers=auth)  # another query
        assert len(other.json()["devices"]) == 10 and calls >= 2
