"""The store never waits on the rules actor: with both mailboxes full (a flood while every
reading changes an alert) the store and the rules actor used to wait on each other forever.
Skipped commit notices are read back from the store, so every reading is still evaluated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from common.actors import ChildSpec, Supervisor
from common.clock import SystemClock
from common.model import Reading
from edge.alerts.rules_actor import CURSOR_KEY, CommitFeed, RulesActor
from edge.storage.actor import Ingest, StoreActor
from edge.storage.client import StoreClient, call
from edge.storage.records import Batch
from edge.storage.stats import StoreStats
from edge.storage.store import GatewayStore
from tests.support.waiting import until

MESSAGES = 400  # one reading each, alternating above and below the threshold


class SlowRules(RulesActor):
    """Slower than the store (a Pi's rules engine behind a flood): its mailbox fills."""

    async def _observe(self, readings: list[Reading]) -> None:
        await asyncio.sleep(0.005)
        await super()._observe(readings)


async def test_a_flood_that_fills_both_mailboxes_neither_deadlocks_nor_skips_readings(
    tmp_path: Path,
) -> None:
    store = GatewayStore(tmp_path / "gateway.duckdb")
    rule = {"metric": "temperature", "operator": ">", "threshold": 50}
    store.save_rule("hot", {"id": "hot", **rule}, 1, 0)
    live = StoreStats()
    feed = CommitFeed()
    root = Supervisor("test", max_restarts=0)
    store_ref = await root.start_child(
        ChildSpec(
            "store",
            lambda: StoreActor(store, max_readings=2, max_delay_ms=1, on_commit=feed, stats=live),
            capacity=4,
        )
    )
    rules_ref = await root.start_child(
        ChildSpec(
            "rules",
            lambda: SlowRules(StoreClient(store_ref), SystemClock(), lambda _d: None, 0.05),
            capacity=1,
        )
    )
    feed.rules = rules_ref
    confirmed: list[BaseException | None] = []
    now = int(time.time() * 1000)
    try:
        async with asyncio.timeout(60):  # a deadlock stops every send here
            for i in range(MESSAGES):
                reading = Reading("d1", "temperature", now - 60_000 + i, 100.0 * (i % 2), now)
                await store_ref.send(Ingest([reading], confirm=confirmed.append))
            await until(lambda: len(confirmed) == MESSAGES, timeout_s=30)
            assert confirmed == [None] * MESSAGES
            last = live.last_seq
            # Evaluated up to the last reading and saved by a Tick:
            await until(lambda: store.kv_get(CURSOR_KEY) == str(last), timeout_s=30)
        # Every rising edge raised an alert, every falling edge resolved it: nothing skipped.
        alerts = await call(store_ref, lambda s: s.alerts())
        assert len(alerts) == MESSAGES // 2
        assert feed.skipped > 0  # the mailbox did fill: the catch-up path was taken
    finally:
        await root.stop()
        store.close()


def test_the_read_back_turns_only_watched_readings_into_objects(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "gateway.duckdb")
    try:
        now = int(time.time() * 1000)
        readings = [
            Reading("d1", "temperature" if i % 2 else "humidity", now + i, float(i), now)
            for i in range(10)
        ]
        store.commit(Batch(readings=readings))
        # A window of 4 sequence numbers after 2: seq 3..6, of which 4 and 6 are temperatures.
        last, chunk = store.watched_readings_after(2, 4, frozenset({"temperature"}))
        assert last == 6
        assert [r.value for r in chunk] == [3.0, 5.0]
        # The window ends at the newest reading; nothing watched reads nothing but the end.
        assert store.watched_readings_after(8, 100, frozenset({"temperature"}))[0] == 10
        assert store.watched_readings_after(0, 100, frozenset()) == (10, [])
        assert store.watched_readings_after(10, 100, frozenset({"temperature"})) == (10, [])
    finally:
        store.close()
