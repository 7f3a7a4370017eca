"""The sync store and the readings it writes, at the store level, on both engines (the API-level
tests in test_cloud_sync.py need the monitoring and notify stores too); then what only
PostgreSQL has: daily partitions, retention, and several workers on one database."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

import cloud.sync.store
from cloud.storage.errors import StoreError
from cloud.storage.pg import PgDatabase
from cloud.storage.pg_partitions import (
    DAY_MS,
    HIGH_MS,
    LOW_MS,
    create_ahead,
    drop_before,
    partition_name,
    partitions,
)
from cloud.storage.store import SqlCloudStore
from cloud.sync.records import EnrollmentRefused
from cloud.sync.store import SyncStore
from common.sync_wire import AlertChange, ReadingColumns, SyncBatch
from tests.support.cloud import T0, both_engines

DAY0 = T0 // DAY_MS


@dataclasses.dataclass
class Site:
    org_id: str
    gateway_id: str
    sync: SyncStore


@pytest.fixture
async def site(store: SqlCloudStore) -> Site:
    org = await store.ensure_org("default", T0)
    gw = await store.create_gateway(org.id, "site-a", "token-digest", T0 + 60_000, T0)
    sync = SyncStore(store.db)
    await sync.enroll("token-digest", b"k" * 32, T0)
    return Site(org.id, gw.gateway_id, sync)


@pytest.fixture
async def second_worker(store: SqlCloudStore) -> AsyncIterator[SyncStore]:
    """Another worker's sync store on the same database: its own PgDatabase (pool) on
    PostgreSQL, as another process would have; the same Database on DuckDB (one process)."""
    if isinstance(store.db, PgDatabase):
        db = PgDatabase(store.db.url)
        yield SyncStore(db)
        db.close()
    else:
        yield SyncStore(store.db)


def make_batch(gw: str, first: int, ts: Sequence[int], device: str = "d1") -> SyncBatch:
    n = len(ts)
    columns: dict[str, Any] = {
        "seq": range(first, first + n),
        "device_id": [device] * n,
        "metric": ["temp"] * n,
        "ts": ts,
        "received_at": [t + 7 for t in ts],
        "value": [20.0 + i / 100 for i in range(n)],
        "flags": [0] * n,
        "dev_seq": [None] * n,
    }
    return SyncBatch.create(
        gateway_id=gw,
        first_seq=first,
        last_seq=first + n - 1,
        boot_id="boot-1",
        gateway_clock_ms=T0,
        readings=ReadingColumns(**{k: tuple(v) for k, v in columns.items()}),
        counters={"validation_errors": 3},
    )


def minutes(n: int, start: int = T0 - 3_600_000) -> list[int]:
    return [start + i * 60_000 for i in range(n)]


async def count(store: SqlCloudStore, table: str, where: str = "") -> int:
    rows = await store.db.run(
        lambda c: c.execute(f"SELECT count(*) FROM {table} {where}").fetchall()
    )
    return int(rows[0][0])


# -- both engines ------------------------------------------------------------------------------


@both_engines
async def test_a_batch_is_stored_once_and_resent_readings_are_not_stored_twice(
    store: SqlCloudStore, site: Site
) -> None:
    b = make_batch(site.gateway_id, 1, minutes(20))
    ack = await site.sync.apply_batch(site.org_id, b, T0)
    assert (ack.stored, ack.duplicates) == (20, 0)
    assert await site.sync.apply_batch(site.org_id, b, T0 + 5) == ack  # the stored ack
    # another batch resending 20 stored readings and 5 new ones, one of them twice
    ts = minutes(25)
    again = make_batch(site.gateway_id, 21, [*ts, ts[-1]])
    ack2 = await site.sync.apply_batch(site.org_id, again, T0 + 10)
    assert (ack2.stored, ack2.duplicates) == (5, 21)
    assert await count(store, "readings") == 25
    # a reading repeated inside a batch of otherwise new ones is stored once
    later = minutes(3, T0)
    ack3 = await site.sync.apply_batch(
        site.org_id, make_batch(site.gateway_id, 47, [*later, later[0]]), T0
    )
    assert (ack3.stored, ack3.duplicates) == (3, 1)
    assert await count(store, "readings") == 28
    ts += later
    assert await site.sync.batch_count(site.gateway_id) == 3
    assert await site.sync.counters(site.gateway_id) == {"validation_errors": 3, "dropped": 0}

    (device,) = await store.list_devices(site.org_id)
    assert device.gateway_id == site.gateway_id and device.last_seen == ts[-1] + 7
    assert device.latest == {"temp": pytest.approx(20.02)}  # the newest, not the last sent
    points = await store.telemetry_points(site.org_id, "d1", "temp", ts[0], ts[-1] + 1, 100)
    assert [p.ts for p in points] == ts
    buckets = await store.telemetry_buckets(
        site.org_id, "d1", "temp", ts[0], ts[-1] + 1, 600_000, 100
    )
    assert sum(b.count for b in buckets) == 28
    assert all(b.ts % 600_000 == 0 for b in buckets)  # aligned to the epoch
    assert buckets[0].min == pytest.approx(20.0) and buckets[-1].max == pytest.approx(20.02)


@both_engines
async def test_store_level_readings_keep_latest_and_booleans_bucket_as_numbers(
    store: SqlCloudStore,
) -> None:
    from common.model import Reading

    org = await store.ensure_org("default", T0)
    rows = [
        Reading("d1", "door", T0 - 2000, True, T0),
        Reading("d1", "door", T0 - 1000, False, T0),
        Reading("d1", "label", T0 - 1000, "ok", T0),
    ]
    assert await store.insert_readings(org.id, "gw", rows, T0) == 3
    assert await store.insert_readings(org.id, "gw", rows[:1], T0) == 0
    device = await store.get_device(org.id, "d1")
    assert device is not None and device.latest == {"door": False, "label": "ok"}
    (bucket,) = await store.telemetry_buckets(org.id, "d1", "door", 0, T0, 3_600_000, 10)
    assert (bucket.min, bucket.max, bucket.avg, bucket.count) == (0.0, 1.0, 0.5, 2)


@both_engines
async def test_a_failure_mid_batch_applies_nothing(
    store: SqlCloudStore, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    alert = AlertChange(1, "a1", "r1", "d1", "temp", "critical", "active", 30.0, T0 - 1000)
    b = dataclasses.replace(make_batch(site.gateway_id, 1, minutes(5)), alerts=(alert,))

    def boom(*_args: object) -> None:
        raise StoreError("disk gone")  # after the readings went in

    monkeypatch.setattr(cloud.sync.store, "_upsert_alert", boom)
    with pytest.raises(StoreError):
        await site.sync.apply_batch(site.org_id, b, T0)
    for table in ("readings", "latest", "sync_batches", "gateway_counters", "alerts"):
        assert await count(store, table) == 0, table
    monkeypatch.undo()
    assert (await site.sync.apply_batch(site.org_id, b, T0)).stored == 5
    assert await count(store, "alerts") == 1


@both_engines
async def test_the_pipelined_wait_sees_a_batch_another_worker_stored(
    store: SqlCloudStore, site: Site, second_worker: SyncStore
) -> None:
    first = make_batch(site.gateway_id, 1, minutes(5))
    assert not await site.sync.wait_until_stored(site.gateway_id, first.batch_id, 0.05)
    waiting = asyncio.create_task(
        site.sync.wait_until_stored(site.gateway_id, first.batch_id, 10.0)
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await second_worker.apply_batch(site.org_id, first, T0)  # stored by the other worker
    assert await asyncio.wait_for(waiting, 5.0)
    assert await site.sync.wait_until_stored(site.gateway_id, first.batch_id, 0.0)


@both_engines
async def test_enrollment_is_one_time(store: SqlCloudStore, site: Site) -> None:
    with pytest.raises(EnrollmentRefused) as refused:
        await site.sync.enroll("token-digest", b"x" * 32, T0)
    assert refused.value.status == 409
    with pytest.raises(EnrollmentRefused) as unknown:
        await site.sync.enroll("no-such-digest", b"x" * 32, T0)
    assert unknown.value.status == 401
    assert site.sync.active_public_key(site.gateway_id) == b"k" * 32


# -- PostgreSQL only -----------------------------------------------------------------------------


@pytest.mark.engines("postgresql")
async def test_daily_partitions_are_made_on_demand_and_dropped_by_retention(
    store: SqlCloudStore, site: Site
) -> None:
    if store.timescale:
        pytest.skip("the native partitions' own mechanics (TimescaleDB: test_cloud_timescale.py)")
    db = store.db
    assert await db.run(partitions) == []
    ts = [T0 - DAY_MS, T0 - 1, T0, T0 + 1]  # two days: DAY0 - 1 and DAY0 (T0 is mid-day)
    ack = await site.sync.apply_batch(site.org_id, make_batch(site.gateway_id, 1, ts), T0)
    assert ack.stored == 4
    names = [partition_name(DAY0 - 1), partition_name(DAY0)]
    assert await db.run(partitions) == names
    assert names[1] == "readings_p20251128"
    assert await count(store, names[0]) == 1 and await count(store, names[1]) == 3
    assert await count(store, "readings_default") == 0
    # made ahead of time: today and tomorrow (today's exists already: made once)
    assert await db.run(db.transaction(lambda c: create_ahead(c, T0))) == [partition_name(DAY0 + 1)]

    # retention: a partition goes only when wholly older than the cutoff
    dropped = await db.run(db.transaction(lambda c: drop_before(c, DAY0 * DAY_MS + 1)))
    assert dropped == [names[0]]
    assert await count(store, "readings") == 3
    assert await db.run(partitions) == [names[1], partition_name(DAY0 + 1)]
    # a late reading of the dropped day makes its partition again (never the default's)
    late = make_batch(site.gateway_id, 10, [T0 - DAY_MS + 5])
    assert (await site.sync.apply_batch(site.org_id, late, T0)).stored == 1
    assert await count(store, names[0]) == 1


@pytest.mark.engines("postgresql")
async def test_timestamps_outside_2000_to_2100_stay_in_the_default_partition(
    store: SqlCloudStore, site: Site
) -> None:
    if store.timescale:
        pytest.skip("the native partitions' own mechanics (TimescaleDB: test_cloud_timescale.py)")
    odd = [0, 1_000, LOW_MS - 1, HIGH_MS, HIGH_MS + DAY_MS]  # clocks never set, or wild
    ack = await site.sync.apply_batch(site.org_id, make_batch(site.gateway_id, 1, odd), T0)
    assert ack.stored == 5
    assert await count(store, "readings_default") == 5
    assert await store.db.run(partitions) == []
    # and a normal reading beside them gets its day's partition, which PostgreSQL allows
    # because the default holds no row of that day
    ok = make_batch(site.gateway_id, 6, [LOW_MS, T0])
    assert (await site.sync.apply_batch(site.org_id, ok, T0)).stored == 2
    assert await count(store, "readings_default") == 5
    expected = [partition_name(LOW_MS // DAY_MS), partition_name(DAY0)]
    assert await store.db.run(partitions) == expected
    points = await store.telemetry_points(site.org_id, "d1", "temp", 0, 2**62, 100)
    assert [p.ts for p in points] == sorted([*odd, LOW_MS, T0])
    # retention also clears the default partition's rows older than the cutoff (clocks never
    # set), and keeps those from beyond 2100
    db = store.db
    assert await db.run(db.transaction(lambda c: drop_before(c, LOW_MS + DAY_MS))) == [
        partition_name(LOW_MS // DAY_MS)
    ]
    remaining = await store.telemetry_points(site.org_id, "d1", "temp", 0, 2**62, 100)
    assert [p.ts for p in remaining] == [T0, HIGH_MS, HIGH_MS + DAY_MS]


@pytest.mark.engines("postgresql")
async def test_the_same_batch_sent_to_two_workers_at_once_is_stored_once(
    store: SqlCloudStore, site: Site, second_worker: SyncStore
) -> None:
    for round_ in range(5):
        b = make_batch(site.gateway_id, 1 + round_ * 1000, minutes(500, T0 + round_ * DAY_MS))
        acks = await asyncio.gather(
            site.sync.apply_batch(site.org_id, b, T0),
            second_worker.apply_batch(site.org_id, b, T0),
        )
        assert acks[0] == acks[1]
        assert (acks[0].stored, acks[0].duplicates) == (500, 0)
    assert await count(store, "readings") == 2500
    assert await count(store, "sync_batches") == 5


@pytest.mark.engines("postgresql")
async def test_two_workers_making_the_same_new_partition_do_not_collide(
    store: SqlCloudStore, site: Site, second_worker: SyncStore
) -> None:
    # two gateways' batches of the same new day, at once (no per-gateway lock between them)
    gw2 = await store.create_gateway(site.org_id, "site-b", "digest-b", T0 + 60_000, T0)
    for day in range(3):
        start = T0 + (day + 1) * DAY_MS
        acks = await asyncio.gather(
            site.sync.apply_batch(
                site.org_id, make_batch(site.gateway_id, 1 + day * 100, minutes(50, start)), T0
            ),
            second_worker.apply_batch(
                site.org_id, make_batch(gw2.gateway_id, 1 + day * 100, minutes(50, start), "d2"), T0
            ),
        )
        assert [a.stored for a in acks] == [50, 50]
    if not store.timescale:  # (a hypertable makes its chunks itself)
        assert len(await store.db.run(partitions)) == 3


@pytest.mark.engines("postgresql")
async def test_one_token_enrolled_by_two_workers_at_once_succeeds_once(
    store: SqlCloudStore, second_worker: SyncStore
) -> None:
    org = await store.ensure_org("default", T0)
    first = SyncStore(store.db)
    for i in range(5):
        await store.create_gateway(org.id, f"gw-{i}", f"digest-{i}", T0 + 60_000, T0)
        outcomes = await asyncio.gather(
            first.enroll(f"digest-{i}", b"a" * 32, T0),
            second_worker.enroll(f"digest-{i}", b"b" * 32, T0),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, EnrollmentRefused)]
        assert len(refused) == 1 and refused[0].status == 409, outcomes
    assert await count(store, "gateway_keys") == 5
