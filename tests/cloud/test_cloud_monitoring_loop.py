"""The monitoring loop on a real store of each engine with a manual clock (no server): device
rules, for_seconds and no-data rules via tick, rule deletion ends the episode, state survives a
restart of the loop, and raise + notification enqueue are one transaction. PostgreSQL: two
workers' loops on one database raise each alert once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cloud.app.metrics import Registry
from cloud.app.services import open_store
from cloud.app.settings import CloudSettings, MonitorSettings
from cloud.monitoring.ingest import MetricPoint
from cloud.monitoring.loop import MonitoringLoop, MonitorMetrics
from cloud.monitoring.records import Committed
from cloud.monitoring.store import MonitoringStore
from cloud.notify.channels import parse_channel
from cloud.notify.store import NotifyStore
from cloud.storage.errors import StoreError, StoreUnavailable
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from common.rules import parse_rule
from tests.support.cloud import T0, both_engines, reading

pytestmark = both_engines
ORG = "org-1"


class Env:
    def __init__(self, settings: CloudSettings, clock: ManualClock) -> None:
        self.settings, self.clock = settings, clock
        self.open()

    def open(self) -> None:
        self.store: SqlCloudStore = open_store(self.settings)
        self.notify = NotifyStore(self.store.db)
        self.monitoring = MonitoringStore(self.store.db)
        self.wakes = 0
        self.loop = MonitoringLoop(
            self.monitoring,
            self.clock,
            MonitorSettings(interval_s=1, batch=2),
            MonitorMetrics.on(Registry()),
            on_notifications=self._woken,
        )

    def _woken(self) -> None:
        self.wakes += 1

    def reopen(self) -> None:
        self.store.close()
        self.open()

    async def rule(self, **doc: object) -> str:
        rule = parse_rule(doc, id=f"r{len(await self.monitoring.list_rules(ORG))}", version=1)
        return (await self.monitoring.create_rule(ORG, rule, self.clock.now_ms())).id

    async def states(self) -> list[tuple[str | None, str]]:
        return [(a.rule_id, a.state.value) for a in await self.store.list_alerts(ORG)]


@pytest.fixture
def env(settings: CloudSettings) -> Iterator[Env]:
    e = Env(settings, ManualClock(T0))
    yield e
    e.store.close()


async def test_device_rule_with_for_seconds_raises_on_tick_once(env: Env) -> None:
    await env.rule(device_type="fridge", metric="temp", operator=">", threshold=8, for_seconds=60)
    await env.store.upsert_device(ORG, "f1", None, "fridge")
    await env.store.upsert_device(ORG, "x1", None, "oven")
    await env.store.insert_readings(
        ORG, "gw", [reading("f1", "temp", T0, 9.0), reading("x1", "temp", T0, 99.0)], T0
    )
    await env.loop.run_once()
    assert await env.states() == []  # breaching, but not for 60 s yet
    env.clock.advance(61)
    await env.loop.run_once()
    alerts = await env.store.list_alerts(ORG)
    assert [(a.device_id, a.state.value) for a in alerts] == [("f1", "active")]
    env.reopen()  # a restarted loop does not raise the open episode again
    env.clock.advance(61)
    await env.loop.run_once()
    assert len(await env.store.list_alerts(ORG)) == 1
    await env.store.insert_readings(ORG, "gw", [reading("f1", "temp", T0 + 70_000, 7.0)], T0)
    await env.loop.run_once()
    assert await env.states() == [("r0", "resolved")]


async def test_nodata_rule_and_deleting_a_rule_resolves_its_alert(env: Env) -> None:
    rid = await env.rule(source="job:etl", metric="rows", operator="nodata", for_seconds=300)
    await env.loop.run_once()  # starts the silence timer
    env.clock.advance(299)
    await env.loop.run_once()
    assert await env.states() == []
    env.clock.advance(1)
    await env.loop.run_once()
    assert await env.states() == [(rid, "active")]
    await env.monitoring.delete_rule(ORG, rid, env.clock.now_ms())
    await env.loop.run_once()
    assert await env.states() == [(rid, "resolved")]


async def test_alert_and_notifications_commit_together(env: Env) -> None:
    channel = parse_channel({"name": "h", "type": "webhook", "url": "http://127.0.0.1:9/"}, id="c1")
    await env.notify.save_channel(ORG, channel, T0)
    await env.rule(source="model:m", metric="acc", operator="<", threshold=0.8, channels=["c1"])
    points = [MetricPoint("model:m", "acc", v, T0 + i) for i, v in enumerate([0.9, 0.9, 0.7])]
    await env.monitoring.insert_metrics(ORG, points, T0)

    # The connection is lost at the commit, after the pass wrote its alert: nothing of the
    # pass may be visible, and the next pass raises the alert exactly once, with its
    # notification.
    real = env.monitoring._commit
    failed = []

    def failing(*args: Any) -> Committed:
        done = real(*args)
        if args[2].raises:
            failed.append(True)
            raise StoreUnavailable("connection lost at commit")
        return done

    env.monitoring._commit = failing  # type: ignore[method-assign]
    # batch=2: the first pass judges two metrics (no change), the third needs a second pass
    while await env.loop.run_once():
        pass
    assert failed and await env.states() == []
    env.monitoring._commit = real  # type: ignore[method-assign]
    while await env.loop.run_once():
        pass
    alerts = await env.store.list_alerts(ORG)
    assert [(a.source, a.value) for a in alerts] == [("model:m", 0.7)]
    status = await env.notify.status_for_alerts([alerts[0].id])
    assert [(s["channel_id"], s["status"]) for s in status[alerts[0].id]] == [("c1", "pending")]
    assert env.wakes == 1
    await env.loop.run_once()
    assert len(await env.store.list_alerts(ORG)) == 1


@pytest.mark.engines("duckdb")  # make_unavailable: DuckDB's (PostgreSQL: tests stop the server)
async def test_store_errors_are_raised_not_swallowed_by_the_store(env: Env) -> None:
    env.store.make_unavailable()
    with pytest.raises(StoreError):
        await env.monitoring.list_rules(ORG)
    env.store.make_available()
