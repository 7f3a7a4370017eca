"""readings on TimescaleDB (cloud.storage.pg_timescale).

Which layout a new PostgreSQL database gets is checked without the extension (the selection is
pure). The rest needs TimescaleDB installed on this machine and is skipped where it is not (CI):
a private cluster that preloads it, on which the cloud makes readings a hypertable, answers the
bucketed query from the continuous aggregate the same as the native partitions do (before and
after a refresh, after compression, with late readings), takes batches into compressed chunks
and drops whole chunks for retention. The whole PostgreSQL slice of the cloud tests runs on
this layout with IOTSPHERE_TEST_PG_PRELOAD=timescaledb (tests/support/postgres.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from cloud.storage import pg_timescale
from cloud.storage.pg_schema import CORE_PG_MIGRATIONS
from cloud.storage.pg_timescale import LAYOUT, Probe, buckets_params, core_migrations, wanted
from cloud.storage.retention import DAY_MS, maintain_readings
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import T0, reading
from tests.support.postgres import TIMESCALE, PgCluster, running_cluster, timescaledb_installed

INSTALLED = timescaledb_installed()
needs_timescaledb = pytest.mark.skipif(not INSTALLED, reason="TimescaleDB is not installed")
ALL = Probe(available=True, preloaded=True, licensed=True)

# -- the selection, pure ------------------------------------------------------------------


def test_timescaledb_is_wanted_only_when_usable_and_not_turned_off() -> None:
    assert wanted(ALL, None)
    assert wanted(ALL, "on")
    assert not wanted(Probe(available=False, preloaded=False, licensed=False), None)
    assert not wanted(Probe(available=True, preloaded=False, licensed=False), None)
    assert not wanted(Probe(available=True, preloaded=True, licensed=False), None)  # Apache build
    for off in ("off", "OFF", "0", "false", "no"):
        assert not wanted(ALL, off)


class FakeDb:
    """Answers core_migrations' questions: the core schema's version, then the server's probe
    (which needs a real server: tested below)."""

    def __init__(self, core_version: int, probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = [(core_version,)] if core_version else []
        self.probed = 0

        def fake_probe(c: object) -> Probe:
            self.probed += 1
            return probe

        monkeypatch.setattr(pg_timescale, "probe", fake_probe)

    def run_sync(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self)

    def execute(self, query: str, parameters: object = None) -> FakeDb:
        return self

    def fetchall(self) -> list[Any]:
        return self.rows


def migration_1(migrations: tuple[Any, ...]) -> tuple[str, ...]:
    statements: tuple[str, ...] = next(m.statements for m in migrations if m.version == 1)
    return statements


def test_a_new_database_gets_the_hypertable_in_core_migration_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IOTSPHERE_TIMESCALEDB", raising=False)
    got = core_migrations(FakeDb(0, ALL, monkeypatch), CORE_PG_MIGRATIONS)  # type: ignore[arg-type]
    assert migration_1(got) == migration_1(CORE_PG_MIGRATIONS) + LAYOUT
    assert [m.version for m in got] == [m.version for m in CORE_PG_MIGRATIONS]


def test_an_existing_database_keeps_its_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTSPHERE_TIMESCALEDB", raising=False)
    db = FakeDb(1, ALL, monkeypatch)
    assert core_migrations(db, CORE_PG_MIGRATIONS) == CORE_PG_MIGRATIONS  # type: ignore[arg-type]
    assert db.probed == 0  # not even asked: decided when the schema was created


def test_no_hypertable_without_preload_or_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOTSPHERE_TIMESCALEDB", raising=False)
    not_loaded = Probe(available=True, preloaded=False, licensed=False)
    got = core_migrations(FakeDb(0, not_loaded, monkeypatch), CORE_PG_MIGRATIONS)  # type: ignore[arg-type]
    assert got == CORE_PG_MIGRATIONS
    monkeypatch.setenv("IOTSPHERE_TIMESCALEDB", "off")
    assert core_migrations(FakeDb(0, ALL, monkeypatch), CORE_PG_MIGRATIONS) == CORE_PG_MIGRATIONS  # type: ignore[arg-type]


def test_bucket_edges_are_whole_five_minute_buckets_inside_the_window() -> None:
    b = pg_timescale.BUCKET_MS
    params = buckets_params("o", "d", "m", 7 * b + 1, 20 * b - 1, 3 * b, 100)
    assert params[6:8] == [8 * b, 19 * b]  # [a, b): from rounded up, to rounded down
    params = buckets_params("o", "d", "m", 7 * b + 1, 7 * b + 10, b, 100)
    assert params[6:8] == [8 * b, 8 * b]  # inside one bucket: nothing from the aggregate
    assert pg_timescale.uses_aggregate(15 * 60_000) and not pg_timescale.uses_aggregate(60_000)


# -- on a cluster that preloads TimescaleDB -----------------------------------------------


@pytest.fixture(scope="module")
def ts_cluster() -> Iterator[PgCluster]:
    if not INSTALLED:
        pytest.skip("TimescaleDB is not installed")
    with running_cluster(settings=TIMESCALE) as cluster:
        yield cluster


@pytest.fixture
def open_store(
    ts_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., SqlCloudStore]]:
    """Opens a store on a fresh database of the TimescaleDB cluster (timescale=False: with
    IOTSPHERE_TIMESCALEDB=off at its creation), or again on the last one (url=...)."""
    from cloud.storage.pg import PgDatabase

    opened: list[SqlCloudStore] = []

    def make(timescale: bool = True, url: str | None = None) -> SqlCloudStore:
        if timescale:
            monkeypatch.delenv("IOTSPHERE_TIMESCALEDB", raising=False)
        else:
            monkeypatch.setenv("IOTSPHERE_TIMESCALEDB", "off")
        store = SqlCloudStore(PgDatabase(url or ts_cluster.fresh_database(), max_connections=2))
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


def one(store: SqlCloudStore, sql: str, params: object = None) -> Any:
    return store.db.run_sync(lambda c: c.execute(sql, params).fetchall())


def call(store: SqlCloudStore, sql: str) -> None:
    """A statement that must not run in a transaction (the pool's connections autocommit)."""
    store.db.run_sync(lambda c: c.execute(sql))


@needs_timescaledb
def test_the_layout_is_chosen_once_when_the_schema_is_created(
    open_store: Callable[..., SqlCloudStore],
) -> None:
    ts = open_store()
    assert ts.timescale
    assert one(ts, "SELECT hypertable_name FROM timescaledb_information.hypertables") == [
        ("readings",)
    ]
    url = ts.db.url  # type: ignore[attr-defined]
    assert open_store(url=url).timescale  # reopened: still the hypertable

    native = open_store(timescale=False)
    assert not native.timescale
    assert one(native, "SELECT relkind FROM pg_class WHERE relname = 'readings'") == [("p",)]
    again = open_store(url=native.db.url)  # type: ignore[attr-defined]
    assert not again.timescale  # the extension is there now, but the schema exists: kept


async def insert(store: SqlCloudStore, org: str, items: Sequence[tuple[int, Any]]) -> int:
    return await store.insert_readings(
        org,
        "gw",
        [reading("d1", "t", ts, v) for ts, v in items],
        T0,
    )


def materialised(store: SqlCloudStore) -> int:
    """Rows the continuous aggregate has materialised."""
    schema, name = one(
        store,
        "SELECT materialization_hypertable_schema, materialization_hypertable_name"
        " FROM timescaledb_information.continuous_aggregates",
    )[0]
    return int(one(store, f'SELECT count(*) FROM "{schema}"."{name}"')[0][0])


def rounded(buckets: list[Any]) -> list[tuple[object, ...]]:
    return [
        (b.ts, b.min, b.max, None if b.avg is None else round(b.avg, 9), b.count) for b in buckets
    ]


@needs_timescaledb
async def test_buckets_from_the_aggregate_match_the_native_partitions(
    open_store: Callable[..., SqlCloudStore],
) -> None:
    ts, native = open_store(), open_store(timescale=False)
    start = T0 - 3 * 3_600_000
    values: list[tuple[int, object]] = [(start + i * 17_000, float(i % 23)) for i in range(600)]
    values += [(start + 400_000, True), (start + 401_000, "text"), (start + 402_000, False)]
    orgs = {}
    for s in (ts, native):
        orgs[id(s)] = (await s.ensure_org("acme", T0)).id
        assert await insert(s, orgs[id(s)], values) == len(values)

    async def same(window: tuple[int, int], bucket_ms: int) -> None:
        got = [
            rounded(await s.telemetry_buckets(orgs[id(s)], "d1", "t", *window, bucket_ms, 500))
            for s in (ts, native)
        ]
        assert got[0] == got[1] and got[0], (window, bucket_ms)

    windows = [
        (start - 1, T0),
        (start + 123_457, start + 2 * 3_600_000 + 1),
        (start + 10, start + 20_000),
    ]
    for bucket in (300_000, 900_000, 3_600_000, 60_000):
        for window in windows:
            await same(window, bucket)  # real time: nothing materialised yet
    call(ts, "CALL refresh_continuous_aggregate('readings_5m', NULL, NULL)")
    assert materialised(ts) > 0
    late = [(start + 5_000, 1000.0), (start + 301_000, -5.0)]  # into materialised buckets
    for s in (ts, native):
        assert await insert(s, orgs[id(s)], late) == 2
    call(ts, "CALL refresh_continuous_aggregate('readings_5m', NULL, NULL)")
    call(ts, "SELECT compress_chunk(c) FROM show_chunks('readings') c")
    assert (
        one(
            ts,
            "SELECT count(*) FROM chunk_compression_stats('readings')"
            " WHERE compression_status = 'Compressed'",
        )[0][0]
        > 0
    )
    for bucket in (300_000, 900_000, 3_600_000, 60_000):
        for window in windows:
            await same(window, bucket)
    # a batch into compressed chunks: new readings stored, repeats not
    assert await insert(ts, orgs[id(ts)], [*late, (start + 7_000, 3.0)]) == 1
    points = await ts.telemetry_points(orgs[id(ts)], "d1", "t", start, start + 10_000, 10)
    assert [(p.ts, p.value) for p in points] == [
        (start, 0.0),
        (start + 5_000, 1000.0),
        (start + 7_000, 3.0),
    ]


@needs_timescaledb
async def test_retention_drops_whole_chunks(open_store: Callable[..., SqlCloudStore]) -> None:
    store = open_store()
    org = (await store.ensure_org("acme", T0)).id
    now = (T0 // DAY_MS) * DAY_MS + 12 * 3_600_000
    days_ago = [10, 5, 3, 1, 0]
    assert await insert(store, org, [(now - d * DAY_MS, float(d)) for d in days_ago]) == 5
    call(store, "CALL refresh_continuous_aggregate('readings_5m', NULL, NULL)")
    done = await maintain_readings(store.db, now, 4)
    assert len(done.dropped) == 2 and not done.created
    left = one(store, "SELECT ts FROM readings ORDER BY ts")
    assert [r[0] for r in left] == [now - d * DAY_MS for d in (3, 1, 0)]
    buckets = await store.telemetry_buckets(org, "d1", "t", 0, now + DAY_MS, 300_000, 100)
    assert [b.ts for b in buckets] == [now - d * DAY_MS for d in (3, 1, 0)]  # none outlives
    again = await maintain_readings(store.db, now, 4)
    assert not again.dropped
