"""The monitoring store on both engines (the same test, each engine its own run): rules and
their versions, metrics stored once with their series, API keys. Then what only PostgreSQL
has, several workers on one database: rule versions stay distinct under concurrent changes, an
org's pass is skipped while another worker holds it, and two workers' monitoring loops running
at once raise each alert once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from cloud.app.metrics import Registry
from cloud.app.services import open_store
from cloud.app.settings import CloudSettings, MonitorSettings
from cloud.monitoring.ingest import MetricPoint
from cloud.monitoring.loop import MonitoringLoop, MonitorMetrics
from cloud.monitoring.store import MONITOR_LOCK, MonitoringStore
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from common.rules import Rule, parse_rule
from tests.support.cloud import T0, both_engines, reading

pytestmark = both_engines
ORG = "org-1"
LOW_ACC = {"source": "model:m", "metric": "acc", "operator": "<", "threshold": 0.8}


def rule(rule_id: str, **doc: object) -> Rule:
    return parse_rule({**LOW_ACC, **doc}, id=rule_id, version=1)


@pytest.fixture
def monitoring(store: SqlCloudStore) -> MonitoringStore:
    return MonitoringStore(store.db)


async def test_rules_are_versioned_with_tombstones(monitoring: MonitoringStore) -> None:
    a = await monitoring.create_rule(ORG, rule("a"), T0)
    b = await monitoring.create_rule(ORG, rule("b", threshold=0.5), T0)
    assert (a.version, b.version) == (1, 2)
    assert await monitoring.create_rule("org-2", rule("a"), T0) == a  # versions are per org
    updated = await monitoring.update_rule(ORG, replace(b, threshold=0.6), T0 + 1)
    assert updated is not None and updated.version == 3
    assert await monitoring.delete_rule(ORG, "a", T0 + 2)
    assert not await monitoring.delete_rule(ORG, "a", T0 + 3)
    assert await monitoring.update_rule(ORG, a, T0 + 3) is None
    changes = await monitoring.rule_changes_since(ORG, 1)
    assert changes.version == 4
    assert [(r.id, r.version, r.threshold) for r in changes.rules] == [("b", 3, 0.6)]
    assert changes.deleted == (("a", 4),)
    assert [r.id for r in await monitoring.list_rules(ORG)] == ["b"]
    assert await monitoring.monitored_orgs() == [ORG, "org-2"]


async def test_metrics_are_stored_once_and_listed_as_series(monitoring: MonitoringStore) -> None:
    first = [
        MetricPoint("model:m", "acc", 0.9, T0),
        MetricPoint("model:m", "acc", 0.1, T0),  # the same point again: the first copy wins
        MetricPoint("model:m", "acc", 0.7, T0 + 2),
        MetricPoint("job:etl", "ok", True, T0 + 1),
    ]
    assert await monitoring.insert_metrics(ORG, first, T0) == 3
    again = [MetricPoint("model:m", "acc", 0.5, T0 + 2), MetricPoint("job:etl", "ok", False, T0)]
    assert await monitoring.insert_metrics(ORG, again, T0 + 5) == 1  # the stored copy stays
    assert await monitoring.insert_metrics(ORG, [], T0) == 0
    assert await monitoring.metric_points(ORG, "model:m", "acc", T0, T0 + 3, 10) == [
        (T0, 0.9),
        (T0 + 2, 0.7),
    ]
    series = await monitoring.metric_series(ORG)
    assert [(s.source, s.metric, s.count, s.last_ts, s.last_value) for s in series] == [
        ("job:etl", "ok", 2, T0 + 1, True),
        ("model:m", "acc", 2, T0 + 2, 0.7),
    ]
    assert await monitoring.metric_series("org-2") == []


async def test_an_api_key_use_is_recorded_at_most_once_a_minute(
    monitoring: MonitoringStore,
) -> None:
    key = await monitoring.create_api_key(ORG, "trainer", "digest", "u1", T0)
    assert key.last_used_at is None
    await monitoring.touch_api_key(key, T0 + 1_000)
    used = await monitoring.api_key_by_hash("digest")
    assert used is not None and used.last_used_at == T0 + 1_000
    await monitoring.touch_api_key(used, T0 + 30_000)  # within the minute: not written
    await monitoring.touch_api_key(key, T0 + 30_000)  # a stale copy: the database decides
    [listed] = await monitoring.list_api_keys(ORG)
    assert listed.last_used_at == T0 + 1_000
    await monitoring.touch_api_key(used, T0 + 61_000)
    [listed] = await monitoring.list_api_keys(ORG)
    assert listed.last_used_at == T0 + 61_000
    assert listed.to_dict()["last_used_at"] == T0 + 61_000


async def test_api_keys_are_found_by_digest_until_revoked(monitoring: MonitoringStore) -> None:
    key = await monitoring.create_api_key(ORG, "trainer", "digest", "u1", T0)
    assert await monitoring.api_key_by_hash("digest") == key
    assert await monitoring.revoke_api_key(ORG, key.id, T0 + 1)
    assert not await monitoring.revoke_api_key("org-2", key.id, T0 + 1)
    assert await monitoring.api_key_by_hash("digest") is None
    [listed] = await monitoring.list_api_keys(ORG)
    assert listed.revoked_at == T0 + 1


# -- PostgreSQL: N workers on one database ----------------------------------------------------


class Worker:
    """One cloud process's monitoring side: its own pool, store and loop, a shared clock."""

    def __init__(self, settings: CloudSettings, clock: ManualClock) -> None:
        self.sql = open_store(settings)
        self.monitoring = MonitoringStore(self.sql.db)
        self.loop = MonitoringLoop(
            self.monitoring, clock, MonitorSettings(batch=50), MonitorMetrics.on(Registry())
        )


@pytest.fixture
def workers(settings: CloudSettings) -> Iterator[list[Worker]]:
    clock = ManualClock(T0)
    started = [Worker(settings, clock) for _ in range(2)]
    yield started
    for w in started:
        w.sql.close()


@pytest.mark.engines("postgresql")
async def test_concurrent_rule_changes_get_distinct_versions(workers: list[Worker]) -> None:
    creates = [
        w.monitoring.create_rule(ORG, rule(f"r{i}-{n}"), T0)
        for n in range(10)
        for i, w in enumerate(workers)
    ]
    stored = await asyncio.gather(*creates)
    assert sorted(r.version for r in stored) == list(range(1, 21))
    changes = await workers[0].monitoring.rule_changes_since(ORG, 10)
    assert [r.version for r in changes.rules] == list(range(11, 21))


@pytest.mark.engines("postgresql")
async def test_an_org_held_by_another_worker_is_skipped_then_judged(
    workers: list[Worker], settings: CloudSettings
) -> None:
    w = workers[0]
    await w.monitoring.create_rule(ORG, rule("r"), T0)
    await w.monitoring.insert_metrics(ORG, [MetricPoint("model:m", "acc", 0.5, T0)], T0)
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url, autocommit=True) as other:
        # what a worker in the middle of this org's pass holds
        other.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [MONITOR_LOCK, ORG])
        assert await w.loop.evaluate_org(ORG) is False
        assert await w.sql.list_alerts(ORG) == []  # nothing judged, nothing written
        other.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [MONITOR_LOCK, ORG])
    await w.loop.evaluate_org(ORG)
    assert [a.value for a in await w.sql.list_alerts(ORG)] == [0.5]


@pytest.mark.engines("postgresql")
async def test_two_workers_loops_raise_each_alert_once(workers: list[Worker]) -> None:
    """Both workers' loops run passes at once over the same orgs while metrics arrive through
    both: every breaching source raises exactly one alert, none is missed."""
    orgs = [f"org-{i}" for i in range(4)]
    any_model = parse_rule({**LOW_ACC, "source": None}, id="low", version=1)
    for org in orgs:
        await workers[0].monitoring.create_rule(org, any_model, T0)
    for n in range(8):
        for i, org in enumerate(orgs):
            # a new model breaches in each org and round, posted to either worker
            point = MetricPoint(f"model:m{n}", "acc", 0.5, T0 + n)
            await workers[(n + i) % 2].monitoring.insert_metrics(org, [point], T0 + n)
        await asyncio.gather(*(w.loop.run_once() for w in workers for _ in range(2)))
    for w in workers:  # the last passes, one after another
        await w.loop.run_once()
    for org in orgs:
        alerts = await workers[1].sql.list_alerts(org)
        assert sorted(a.source or "" for a in alerts) == [f"model:m{n}" for n in range(8)], org


@pytest.mark.engines("postgresql")
async def test_a_reading_committed_late_by_another_worker_is_still_judged(
    workers: list[Worker],
) -> None:
    """Worker A stamps a batch at 8 s and commits it after worker B stored one stamped 10 s
    and the loop judged that: the readings cursor stays behind (READINGS_GRACE_MS)."""
    a, b = workers
    hot = parse_rule({"metric": "temp", "operator": ">", "threshold": 8}, id="hot", version=1)
    await a.monitoring.create_rule(ORG, hot, T0)
    await b.sql.insert_readings(ORG, "gw-b", [reading("d1", "temp", T0 + 1, 5.0)], T0 + 10_000)
    await b.loop.run_once()
    await a.sql.insert_readings(ORG, "gw-a", [reading("d2", "temp", T0 + 2, 9.0)], T0 + 8_000)
    await b.loop.run_once()
    assert [(x.device_id, x.value) for x in await b.sql.list_alerts(ORG)] == [("d2", 9.0)]
