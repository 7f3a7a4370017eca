"""What other actors learn from the store and tell it, by message (issue 12: no shared stats).

The sync actor tells the store what a batch in flight carries (`ProtectThrough`); the store
keeps it in its own stats, given by the gateway, so a restart of the store actor does not
forget it. The rules actor asks the store (`StoreState`) for its last seq and its health, and
raises or resolves the storage alert from that answer alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from common.actors import ActorRef, ChildSpec, Supervisor
from common.clock import ManualClock
from common.model import Reading
from edge.alerts.rules_actor import STORAGE_RULE, RulesActor, RulesStats
from edge.app.config import DiskBudget
from edge.storage.actor import (
    EnforceBudget,
    Ingest,
    ProtectThrough,
    StoreActor,
    StoreMsg,
    StoreState,
    StoreView,
)
from edge.storage.client import StoreClient, call
from edge.storage.health import StorageFailure, StorageHealth
from edge.storage.stats import StoreStats
from edge.storage.store import AlertRow, Batch, CommitResult, GatewayStore, StoreUnavailable
from tests.support.waiting import until

FULL = StorageFailure("No space left on device", "...", disk_full=True, invalidated=False)


class BuggyStore(GatewayStore):
    """Its next commit fails with a bug (not a storage failure) when `crash` is set: the
    store actor crashes and its supervisor restarts it."""

    crash = False

    def commit(self, batch: Batch) -> CommitResult:
        if self.crash:
            self.crash = False
            raise RuntimeError("a bug in the commit")
        return super().commit(batch)


def readings(n: int) -> list[Reading]:
    return [Reading("d1", "temperature", 1000 + i, 20.0, 1) for i in range(n)]


async def test_the_disk_cap_keeps_readings_in_flight_across_a_store_restart(
    tmp_path: Path,
) -> None:
    store = BuggyStore(tmp_path / "gateway.duckdb")
    async with capped_store(store, max_restarts=1) as (ref, stats):
        await ref.send(ProtectThrough(20))  # a batch of readings 1..20 is on its way
        store.crash = True
        crashed: list[BaseException | None] = []
        await ref.send(Ingest(readings(1), confirm=crashed.append))  # a duplicate: crashes
        await until(lambda: ref.stats.restarts == 1)
        assert isinstance(crashed[0], RuntimeError)
        await ref.send(EnforceBudget())
        await until(lambda: stats.readings_dropped == 70)
        # 1..20 are in flight and stay; the 70 oldest after them go, down to the cap of 30
        # (forgetting the protection would drop 1..70 instead).
        assert await kept_ts(ref) == KEPT_WITH_1_TO_20_PROTECTED


KEPT_WITH_1_TO_20_PROTECTED = [1000 + i for i in range(20)] + [1000 + i for i in range(90, 100)]


@asynccontextmanager
async def capped_store(
    store: GatewayStore, max_restarts: int
) -> AsyncIterator[tuple[ActorRef[StoreMsg], StoreStats]]:
    """A supervised store actor with a cap of 30 unsynced readings holding readings 1..100
    (the budget runs only when told); its stats are the gateway's, outliving the actor."""
    stats = StoreStats()
    budget = DiskBudget(synced_retention_s=None, unsynced_cap=30, every_s=3600)
    root = Supervisor("test", max_restarts=max_restarts, backoff_base_s=0.0)
    ref = await root.start_child(
        ChildSpec(
            "store",
            lambda: StoreActor(store, max_readings=10, max_delay_ms=1, stats=stats, budget=budget),
        )
    )
    try:
        done: list[BaseException | None] = []
        await ref.send(Ingest(readings(100), confirm=done.append))
        await until(lambda: done == [None])
        yield ref, stats
    finally:
        await root.stop()
        store.close()


async def kept_ts(ref: ActorRef[StoreMsg]) -> list[int]:
    return [r.ts for r in (await call(ref, lambda s: s.readings_after(0, 1000)))[1]]


async def test_reading_a_sync_batch_protects_it_from_the_next_budget_run(
    tmp_path: Path,
) -> None:
    """No window between the sync actor's read and its ProtectThrough: the read protects."""
    async with capped_store(GatewayStore(tmp_path / "gateway.duckdb"), 0) as (ref, stats):
        rows = await StoreClient(ref).batch_rows((0, 0), 0, 20)  # the next batch: 1..20
        assert list(rows.readings.seq) == list(range(1, 21))
        await ref.send(EnforceBudget())  # before any ProtectThrough could arrive
        await until(lambda: stats.readings_dropped == 70)
        assert await kept_ts(ref) == KEPT_WITH_1_TO_20_PROTECTED


class FullStore(GatewayStore):
    full = False

    def commit(self, batch: Batch) -> CommitResult:
        if self.full:
            raise StoreUnavailable(FULL)
        return super().commit(batch)

    def headroom(self) -> tuple[int, int]:
        return (0, 0) if self.full else (1 << 30, 0)


async def test_store_state_answers_the_last_seq_and_the_health(tmp_path: Path) -> None:
    store = FullStore(tmp_path / "gateway.duckdb")
    root = Supervisor("test", max_restarts=0)
    ref = await root.start_child(
        ChildSpec(
            "store",
            lambda: StoreActor(
                store, max_readings=10, max_delay_ms=1, probe_every_s=0.01, clock=ManualClock()
            ),
        )
    )
    try:
        done: list[BaseException | None] = []
        await ref.send(Ingest(readings(5), confirm=done.append))
        await until(lambda: done == [None])
        view = await ref.ask(StoreState())
        assert isinstance(view, StoreView) and view.last_seq == 5 and view.health.available
        store.full = True
        await ref.send(Ingest(readings(6), confirm=done.append))
        await until(lambda: len(done) == 2)
        view = await ref.ask(StoreState())
        assert isinstance(view, StoreView) and view.last_seq == 5
        assert not view.health.available and view.health.failure is not None
        store.full = False
        await until(lambda: _available(ref))
    finally:
        await root.stop()
        store.close()


async def _available(ref: object) -> bool:
    from common.actors import ActorRef

    assert isinstance(ref, ActorRef)
    view = await ref.ask(StoreState())
    return isinstance(view, StoreView) and view.health.available


class AnsweringStore:
    """A RulesStorage whose StoreState answer the test sets; records what is saved."""

    def __init__(self) -> None:
        self.view = StoreView(0, StorageHealth())
        self.saved: list[AlertRow] = []

    async def state(self) -> StoreView:
        return self.view

    async def save_alerts(self, alerts: list[AlertRow], kv: dict[str, str]) -> None:
        self.saved.extend(alerts)

    async def kv_get(self, key: str) -> str | None:
        return None

    async def last_seq(self) -> int:
        return 0

    async def watched_readings_after(
        self, seq: int, limit: int, metrics: frozenset[str]
    ) -> tuple[int, list[Reading]]:
        return seq, []

    async def rules(self) -> list[dict[str, Any]]:
        return []

    async def alerts(self, state: str | None = None) -> list[AlertRow]:
        return []


async def test_the_rules_actor_raises_and_resolves_the_storage_alert_from_the_stores_answer() -> (
    None
):
    store = AnsweringStore()
    stats = RulesStats()
    root = Supervisor("test", max_restarts=0)
    await root.start_child(
        ChildSpec("rules", lambda: RulesActor(store, ManualClock(), lambda _d: None, 0.01, stats))
    )
    try:
        failure = StorageFailure(
            "No space left on device", "...", disk_full=True, invalidated=False
        )
        store.view = StoreView(0, StorageHealth().failed(failure, 5_000))
        await until(lambda: stats.active_alerts == 1)
        raised = [a for a in store.saved if a.rule_id == STORAGE_RULE]
        assert [(a.state, a.started_at, a.value) for a in raised] == [
            ("active", 5_000, {"reason": "No space left on device", "disk_full": True})
        ]
        store.view = StoreView(0, store.view.health.recovered(9_000))
        await until(lambda: stats.active_alerts == 0)
        states = [(a.state, a.resolved_at) for a in store.saved if a.rule_id == STORAGE_RULE]
        assert states == [("active", None), ("resolved", 9_000)]
    finally:
        await root.stop()
