"""Draining many gateways into one cloud store at once: every reading stored exactly once, a
batch retried is stored once, a crash in the middle of a batch leaves nothing of it; and on
PostgreSQL the fast path that COPYs a batch straight into its day's partition
(cloud.storage.pg_telemetry, docs/decisions/cloud-postgres-drain.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from cloud.storage.errors import StoreError
from cloud.storage.pg import PgDatabase
from cloud.storage.pg_partitions import DAY_MS, partition_name
from cloud.storage.pg_telemetry import copy_readings
from cloud.storage.store import SqlCloudStore
from cloud.storage.telemetry import readings_table
from cloud.sync.store import SyncStore
from common.model import Reading
from common.sync_wire import ReadingColumns, SyncBatch
from tests.support.cloud import T0, both_engines

WORKERS = 3
GATEWAYS = 6


@pytest.fixture
async def workers(store: SqlCloudStore) -> AsyncIterator[list[SyncStore]]:
    """WORKERS sync stores on the store's database: each with its own connection pool on
    PostgreSQL, as separate processes would have; the one Database on DuckDB (one process)."""
    dbs: list[PgDatabase] = []
    out = [SyncStore(store.db)]
    for _ in range(WORKERS - 1):
        if isinstance(store.db, PgDatabase):
            dbs.append(PgDatabase(store.db.url))
            out.append(SyncStore(dbs[-1]))
        else:
            out.append(SyncStore(store.db))
    yield out
    for db in dbs:
        db.close()


def batch_of(gw: str, first: int, rows: Sequence[tuple[str, int]]) -> SyncBatch:
    """A sync batch of (device, ts) readings of metric temp, seqs from `first`."""
    n = len(rows)
    columns: dict[str, Any] = {
        "seq": range(first, first + n),
        "device_id": [d for d, _ in rows],
        "metric": ["temp"] * n,
        "ts": [t for _, t in rows],
        "received_at": [t + 7 for _, t in rows],
        "value": [float(t % 1000) for _, t in rows],
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
    )


def seconds(device: str, start: int, n: int) -> list[tuple[str, int]]:
    return [(device, start + i * 1000) for i in range(n)]


async def scalar(store: SqlCloudStore, sql: str) -> int:
    rows = await store.db.run(lambda c: c.execute(sql).fetchall())
    return int(rows[0][0])


async def gateways(store: SqlCloudStore, n: int) -> tuple[str, list[str]]:
    org = await store.ensure_org("default", T0)
    sync = SyncStore(store.db)
    ids = []
    for k in range(n):
        gw = await store.create_gateway(org.id, f"site-{k}", f"digest-{k}", T0 + 60_000, T0)
        await sync.enroll(f"digest-{k}", bytes([k]) * 32, T0)
        ids.append(gw.gateway_id)
    return org.id, ids


@both_engines
async def test_many_gateways_drained_through_several_workers_store_each_reading_once(
    store: SqlCloudStore, workers: list[SyncStore]
) -> None:
    org, gws = await gateways(store, GATEWAYS)
    # Per gateway: three batches of two devices of its own, the second overlapping the first by
    # 20 readings (a resend after a lost ack), the third over midnight (two partitions on
    # PostgreSQL). Each batch goes to two workers at once (the gateway timed out and resent it
    # elsewhere); every gateway drains at the same time.
    midnight = (T0 // DAY_MS + 1) * DAY_MS

    def plan(k: int) -> list[SyncBatch]:
        a, b = f"g{k}-a", f"g{k}-b"
        first = seconds(a, T0, 300) + seconds(b, T0, 300)
        second = seconds(a, T0 + 280_000, 220) + seconds(b, T0 + 300_000, 200)
        third = seconds(a, midnight - 50_000, 100) + seconds(b, midnight - 50_000, 100)
        return [batch_of(gws[k], 1, first), batch_of(gws[k], 601, second),
                batch_of(gws[k], 1021, third)]  # fmt: skip

    async def drain(k: int) -> list[tuple[int, int]]:
        out = []
        for i, b in enumerate(plan(k)):
            one, two = workers[(k + i) % WORKERS], workers[(k + i + 1) % WORKERS]
            acks = await asyncio.gather(one.apply_batch(org, b, T0), two.apply_batch(org, b, T0))
            assert acks[0] == acks[1]  # the second got the stored ack
            out.append((acks[0].stored, acks[0].duplicates))
        return out

    results = await asyncio.gather(*(drain(k) for k in range(GATEWAYS)))
    assert results == [[(600, 0), (400, 20), (200, 0)]] * GATEWAYS
    assert await scalar(store, "SELECT count(*) FROM readings") == GATEWAYS * 1200
    assert (
        await scalar(store, "SELECT count(DISTINCT (device_id, metric, ts)) FROM readings")
        == GATEWAYS * 1200
    )
    assert await scalar(store, "SELECT count(*) FROM sync_batches") == GATEWAYS * 3
    # latest holds each series' newest reading
    newest = await store.db.run(lambda c: c.execute("SELECT DISTINCT ts FROM latest").fetchall())
    assert newest == [(midnight + 49_000,)]


@both_engines
async def test_the_same_readings_from_two_gateways_at_once_are_stored_once(
    store: SqlCloudStore, workers: list[SyncStore]
) -> None:
    # A device moved from one gateway to another, both sending its backlog at the same time
    # through two workers: the per-gateway locks do not order them (on PostgreSQL the device's
    # row does: the second batch waits for the first to commit, then finds its readings).
    # One copy of each reading is stored, and the other batch counts them as duplicates.
    org, gws = await gateways(store, 2)
    for round_ in range(4):
        rows = seconds("moved", T0 + round_ * 1_000_000, 500)
        acks = await asyncio.gather(
            workers[0].apply_batch(org, batch_of(gws[0], 1 + round_ * 500, rows), T0),
            workers[1].apply_batch(org, batch_of(gws[1], 1 + round_ * 500, rows), T0),
        )
        assert sorted((a.stored, a.duplicates) for a in acks) == [(0, 500), (500, 0)]
    assert await scalar(store, "SELECT count(*) FROM readings") == 2000
    assert await scalar(store, "SELECT count(DISTINCT ts) FROM readings") == 2000


@both_engines
async def test_a_batch_retried_after_its_ack_was_lost_is_stored_once(
    store: SqlCloudStore, workers: list[SyncStore]
) -> None:
    org, (gw,) = await gateways(store, 1)
    b = batch_of(gw, 1, seconds("d1", T0, 1000))
    first = await workers[0].apply_batch(org, b, T0)
    assert (first.stored, first.duplicates) == (1000, 0)
    for w in workers:  # the resend, to every worker in turn, and later again
        assert await w.apply_batch(org, b, T0 + 1) == first
    assert await scalar(store, "SELECT count(*) FROM readings") == 1000
    assert await scalar(store, "SELECT count(*) FROM sync_batches") == 1


# -- PostgreSQL only: the COPY straight into the partition, and a real crash ----------------


@pytest.mark.engines("postgresql")
async def test_a_new_batch_goes_straight_into_its_partition_and_a_resend_through_the_fallback(
    store: SqlCloudStore,
) -> None:
    org = await store.ensure_org("default", T0)
    db = store.db
    assert isinstance(db, PgDatabase)

    def apply(readings: list[Reading]) -> tuple[int, bool]:
        """copy_readings in a transaction: (stored, whether it used the temp table)."""

        def go(c: Any) -> tuple[int, bool]:
            stored = copy_readings(c, readings_table(readings), org.id, "gw", T0)
            staged = c.execute("SELECT to_regclass('pg_temp.incoming_readings')").fetchall()
            return stored, staged[0][0] is not None

        return db.run_sync(db.transaction(go))

    day = T0 // DAY_MS
    fresh = [Reading("d1", "temp", T0 + i * 1000, float(i), T0) for i in range(100)]
    assert apply(fresh) == (100, False)  # COPY into readings_pYYYYMMDD, no staging
    assert await scalar(store, f"SELECT count(*) FROM {partition_name(day)}") == 100
    # half old, half new: the overlap probe sends it through the temp table, ON CONFLICT
    again = [Reading("d1", "temp", T0 + i * 1000, float(i), T0) for i in range(50, 150)]
    assert apply(again) == (50, True)
    # new, but one reading twice: the direct COPY meets the unique index, is undone (a
    # savepoint) and the fallback stores the rest, the first copy winning
    twice = [Reading("d1", "temp", T0 + i * 1000, float(i), T0) for i in (200, 201, 201)]
    assert apply(twice) == (2, True)
    # over midnight: COPY into readings itself, which routes each row to its day
    midnight = (day + 1) * DAY_MS
    over = [Reading("d2", "temp", midnight + d, 1.0, T0) for d in (-1000, 0, 1000)]
    assert apply(over) == (3, False)
    assert await scalar(store, f"SELECT count(*) FROM {partition_name(day + 1)}") == 2
    assert await scalar(store, "SELECT count(*) FROM readings") == 155
    device = await store.get_device(org.id, "d1")
    assert device is not None and device.latest == {"temp": 201.0}


@pytest.mark.engines("postgresql")
async def test_a_connection_killed_mid_batch_leaves_nothing_of_it_and_the_resend_stores_it(
    store: SqlCloudStore, workers: list[SyncStore]
) -> None:
    import psycopg

    org, (gw,) = await gateways(store, 1)
    assert isinstance(store.db, PgDatabase)
    first = batch_of(gw, 1, seconds("d1", T0, 100))
    await workers[0].apply_batch(org, first, T0)
    second = batch_of(gw, 101, seconds("d1", T0 + 100_000, 5000))
    # Another session holds d1's row of `latest`: the batch's readings go in, then its update
    # of latest waits, in the middle of its transaction. Its backend is then killed, as when
    # the worker's host dies or the connection drops.
    with psycopg.connect(store.db.url, autocommit=False) as holder:
        holder.execute("SELECT 1 FROM latest WHERE device_id = 'd1' FOR UPDATE")
        applying = asyncio.create_task(workers[1].apply_batch(org, second, T0))
        pid = await asyncio.to_thread(_backend_waiting_on_a_lock, store.db.url)
        wrote = await asyncio.to_thread(_wrote_readings, store.db.url, pid)
        assert wrote  # it did get past its COPY (the wait is on latest)
        with psycopg.connect(store.db.url, autocommit=True) as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(StoreError):
            await applying
        holder.rollback()
    assert await scalar(store, "SELECT count(*) FROM readings") == 100
    assert await scalar(store, "SELECT count(*) FROM sync_batches") == 1
    assert await scalar(store, "SELECT max(ts) FROM latest") == T0 + 99_000
    ack = await workers[2].apply_batch(org, second, T0)  # the gateway's resend
    assert (ack.stored, ack.duplicates) == (5000, 0)
    assert await scalar(store, "SELECT count(*) FROM readings") == 5100
    assert await scalar(store, "SELECT count(DISTINCT ts) FROM readings") == 5100


def _backend_waiting_on_a_lock(url: str) -> int:
    """The pid of the cloud's backend that waits on a row lock (within 10 s)."""
    import psycopg

    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'iotsphere-cloud'"
                " AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO latest%'"
            ).fetchall()
            if rows:
                return int(rows[0][0])
            time.sleep(0.02)
    raise AssertionError("no apply waited on latest")


def _wrote_readings(url: str, pid: int) -> bool:
    """Whether the backend `pid` holds a RowExclusiveLock on a readings partition (it wrote
    readings in its open transaction)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation"
            " WHERE l.pid = %s AND l.mode = 'RowExclusiveLock'"
            " AND r.relname LIKE 'readings_p%%'",
            [pid],
        ).fetchall()
    return bool(rows[0][0])
