"""The readings' maintenance on both engines: retention deletes what is older than it (on
PostgreSQL by dropping whole daily partitions), keeps the rest, and PostgreSQL gets the next
days' partitions ahead of time."""

from __future__ import annotations

from cloud.storage.retention import AHEAD_DAYS, DAY_MS, maintain_readings
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import T0, both_engines, reading

pytestmark = both_engines
NOW = (T0 // DAY_MS) * DAY_MS + 12 * 3_600_000  # noon UTC


async def stored(store: SqlCloudStore) -> list[int]:
    rows = await store.db.run(lambda c: c.execute("SELECT ts FROM readings ORDER BY ts").fetchall())
    return [r[0] for r in rows]


async def test_retention_keeps_the_recent_days(store: SqlCloudStore) -> None:
    org = await store.ensure_org("acme", T0)
    days_ago = [10, 5, 3, 1, 0]
    await store.insert_readings(
        org.id, "gw", [reading("d1", "t", NOW - d * DAY_MS, float(d)) for d in days_ago], NOW
    )
    nothing = await maintain_readings(store.db, NOW, None)  # no retention: nothing deleted
    assert await stored(store) == [NOW - d * DAY_MS for d in days_ago]
    assert not nothing.dropped and not nothing.deleted

    done = await maintain_readings(store.db, NOW, 4)
    assert await stored(store) == [NOW - d * DAY_MS for d in (3, 1, 0)]
    if store.db.dialect == "postgresql":
        assert len(done.dropped) == 2  # the days 10 and 5 ago, whole
    else:
        assert done.deleted == 2
    again = await maintain_readings(store.db, NOW, 4)  # idempotent: a second worker's round
    assert not again.dropped and not again.deleted and not again.created
    assert await stored(store) == [NOW - d * DAY_MS for d in (3, 1, 0)]


async def test_postgresql_partitions_are_made_ahead(store: SqlCloudStore) -> None:
    done = await maintain_readings(store.db, NOW, None)
    if store.db.dialect != "postgresql" or store.timescale:  # TimescaleDB makes its own chunks
        assert done.created == ()
        return
    assert len(done.created) == AHEAD_DAYS
    org = await store.ensure_org("acme", T0)
    tomorrow = NOW + DAY_MS
    assert await store.insert_readings(org.id, "gw", [reading("d1", "t", tomorrow, 1.0)], NOW)
    partition = await store.db.run(
        lambda c: c.execute(
            "SELECT tableoid::regclass::text FROM readings WHERE ts = ?", [tomorrow]
        ).fetchall()
    )
    assert partition[0][0] == done.created[1]  # in the partition made ahead, not the default
