"""GET /api/events (Server-Sent Events) for live pages (issue 15, item 3), over real HTTP on
both engines: a ticket is needed (and is good for nothing else), an org's stream hears only
its own org's changes, a change committed through another worker's connection reaches it
(PostgreSQL), a page that does not keep up is dropped with its queue emptied, and the feed
lives through the store's outage (telling the pages when it starts and ends)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cloud.app.changes import ChangeFeed
from cloud.app.services import Services, build_services, open_store
from cloud.app.settings import CloudSettings
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.support.cloud import (
    T0,
    Outage,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
    reading,
    served,
)

pytestmark = [both_engines, pytest.mark.timeout(120)]


class Stream:
    """An open event stream: its events as (name, data), read in the background."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def next(self, name: str, within_s: float = 10) -> Any:
        async with asyncio.timeout(within_s):
            while True:
                got, data = await self.events.get()
                if got == name:
                    return data

    def drain(self) -> list[tuple[str, Any]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


@contextlib.asynccontextmanager
async def stream(http: httpx.AsyncClient, tokens: dict[str, Any]) -> AsyncIterator[Stream]:
    r = await http.post("/api/events/ticket", headers=bearer(tokens))
    assert r.status_code == 200, r.text
    s = Stream()

    async def read() -> None:
        async with http.stream("GET", f"/api/events?ticket={r.json()['ticket']}") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            name, data = "message", ""
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    await s.events.put((name, json.loads(data)))
                    name, data = "message", ""
            await s.events.put(("closed", None))

    task = asyncio.create_task(read())
    try:
        await s.next("ready")
        yield s
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task


async def orgs(store: SqlCloudStore) -> tuple[str, str]:
    await add_user(store, "a@example.com", org="org-a")
    await add_user(store, "b@example.com", org="org-b")
    a = (await store.ensure_org("org-a", T0)).id
    b = (await store.ensure_org("org-b", T0)).id
    return a, b


async def test_ticket_needed_and_good_for_nothing_else(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    await orgs(store)
    async with served(services) as http:
        tokens = await login(http, "a@example.com")
        assert_problem(await http.get("/api/events"), 401)
        assert_problem(await http.post("/api/events/ticket"), 401)
        # the access token is no ticket
        assert_problem(await http.get(f"/api/events?ticket={tokens['access_token']}"), 401)
        ticket = (await http.post("/api/events/ticket", headers=bearer(tokens))).json()
        assert ticket["expires_in"] == 60
        # the ticket is no access token
        r = await http.get("/api/devices", headers={"Authorization": f"Bearer {ticket['ticket']}"})
        assert_problem(r, 401)
        assert_problem(await http.get(f"/api/events?ticket={ticket['ticket']}x"), 401)
        clock.advance(61_000)  # expired
        assert_problem(await http.get(f"/api/events?ticket={ticket['ticket']}"), 401)


async def test_org_hears_only_its_own_changes(services: Services, store: SqlCloudStore) -> None:
    a, b = await orgs(store)
    assert services.changes is not None
    services.changes.interval_s = 0.1
    async with served(services) as http:
        ta, tb = await login(http, "a@example.com"), await login(http, "b@example.com")
        async with stream(http, ta) as sa, stream(http, tb) as sb:
            # org B: a reading and an alert
            await store.insert_readings(b, "gw-b", [reading("b-dev", "t", T0, 1.0)], T0)
            assert await sb.next("change") == {"kinds": ["devices"]}
            await asyncio.sleep(0.5)  # several polls: org A's stream must stay silent
            assert sa.drain() == []
            # org A's own change reaches A (and not B)
            await store.insert_readings(a, "gw-a", [reading("a-dev", "t", T0, 2.0)], T0)
            assert await sa.next("change") == {"kinds": ["devices"]}
            await asyncio.sleep(0.5)
            assert sb.drain() == []


@pytest.mark.engines("postgresql")
async def test_change_on_another_worker_reaches_the_page(
    services: Services, settings: CloudSettings, clock: ManualClock
) -> None:
    """Two workers on one PostgreSQL database: the page is connected to worker B, the
    reading is committed through worker A's own connections."""
    store_b = services.store
    assert isinstance(store_b, SqlCloudStore) and services.changes is not None
    a, _ = await orgs(store_b)
    services.changes.interval_s = 0.1
    store_a = open_store(settings)
    try:
        build_services(settings, store_a, clock)  # worker A: its own pool
        async with served(services) as http:
            tokens = await login(http, "a@example.com")
            async with stream(http, tokens) as s:
                await store_a.insert_readings(a, "gw", [reading("d1", "t", T0, 3.0)], T0)
                assert await s.next("change") == {"kinds": ["devices"]}
    finally:
        store_a.close()


async def test_a_batch_from_a_gateway_behind_the_others_is_announced(
    services: Services, store: SqlCloudStore
) -> None:
    """devices.last_seen is the gateways' clock and only moves forward: one gateway ahead
    pins the org's maximum. The cloud's time of each stored batch still moves."""
    feed = services.changes
    assert feed is not None and feed.batches
    a, _ = await orgs(store)
    gw = await store.create_gateway(a, "behind", "digest", T0 + 60_000, T0)
    await store.insert_readings(a, "ahead", [reading("ahead-dev", "t", T0 + 3_600_000, 1.0)], T0)
    sub = feed.subscribe(a)
    try:
        await feed.poll_once()  # the baseline
        # the late gateway's batch: an older reading, and its batch row, in one transaction
        await store.insert_readings(a, gw.gateway_id, [reading("late-dev", "t", T0, 2.0)], T0)
        await store.db.run(
            lambda c: c.execute(
                "INSERT INTO sync_batches VALUES (?, 'b1', 1, 1, 1, 0, ?)", [gw.gateway_id, T0 + 5]
            )
        )
        await feed.poll_once()
        assert sub.queue.get_nowait() == frozenset({"devices"})
    finally:
        feed.unsubscribe(sub)


async def test_slow_page_is_dropped_and_memory_bounded(store: SqlCloudStore) -> None:
    feed = ChangeFeed(store.db, interval_s=3600, queue_max=8)
    slow = feed.subscribe("org-a")
    other = feed.subscribe("org-a")
    for _ in range(200):  # far more notices than a page that never reads can hold
        feed.publish("org-a", frozenset({"devices"}))
        assert slow.queue.qsize() <= 8
        if not other.queue.empty():
            other.queue.get_nowait()  # this one keeps up
    assert slow.dropped and not other.dropped
    assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is None  # its stream ends
    assert feed.subscribers("org-a") == 1
    feed.unsubscribe(other)
    assert feed.subscribers() == 0


async def test_feed_lives_through_the_outage(
    services: Services, store: SqlCloudStore, outage: Outage
) -> None:
    a, _ = await orgs(store)
    assert services.changes is not None
    services.changes.interval_s = 0.1
    async with served(services) as http, stream(http, await login(http, "a@example.com")) as s:
        outage.begin()
        # pages are told once (they refetch, meet the 503 and show the outage banner)
        assert await s.next("change", 30) == {"kinds": ["store"]}
        await asyncio.sleep(0.5)  # polls fail meanwhile, without more notices
        assert s.drain() == []
        outage.end()
        assert await s.next("change", 30) == {"kinds": ["store"]}  # back: refetch
        await store.insert_readings(a, "gw-a", [reading("a-dev", "t", T0, 2.0)], T0)
        assert await s.next("change") == {"kinds": ["devices"]}
