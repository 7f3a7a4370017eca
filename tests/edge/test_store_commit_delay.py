"""The store's commit delay (PostgreSQL's commit_delay / commit_siblings, issue 10).

While at least `commit_siblings` devices wait for one commit, the store waits up to
`commit_delay_us` for more of them, so a loaded gateway commits fewer, larger transactions. A
device alone is never delayed, and a batch that reaches `max_readings` commits at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from common.actors import ActorRef, ChildSpec, Supervisor
from common.model import Reading
from edge.storage.actor import Ingest, StoreActor, StoreMsg
from edge.storage.stats import StoreStats
from edge.storage.store import GatewayStore
from tests.support.waiting import until

DELAY_S = 0.5  # long next to a commit, so the test cannot mistake one for the other


def reading(device: str, ts: int) -> Reading:
    return Reading(device, "temperature", ts, 20.0, ts)


@asynccontextmanager
async def store_actor(
    tmp_path: Path, stats: StoreStats, *, delay_s: float, max_readings: int = 500
) -> AsyncIterator[ActorRef[StoreMsg]]:
    store = GatewayStore(tmp_path / "gateway.duckdb")
    delay_us = int(delay_s * 1_000_000)

    def actor() -> StoreActor:
        return StoreActor(store, max_readings=max_readings, max_delay_ms=50, stats=stats,
                          commit_delay_us=delay_us, commit_siblings=3)  # fmt: skip

    root = Supervisor("test", max_restarts=0)
    ref = await root.start_child(ChildSpec("store", actor))
    try:
        yield ref
    finally:
        await root.stop()
        store.close()


async def five_devices_then_a_sixth(ref: ActorRef[StoreMsg], done: list[object]) -> None:
    """Five devices' messages reach the store together, a sixth shortly after."""
    for i in range(5):
        ref.tell(Ingest([reading(f"d{i}", 1000)], confirm=done.append))
    await asyncio.sleep(0.05)
    ref.tell(Ingest([reading("d5", 1000)], confirm=done.append))


async def test_many_waiting_devices_share_one_delayed_commit(tmp_path: Path) -> None:
    stats = StoreStats()
    async with store_actor(tmp_path, stats, delay_s=DELAY_S) as ref:
        done: list[object] = []
        started = time.monotonic()
        await five_devices_then_a_sixth(ref, done)
        await until(lambda: len(done) == 6)
        assert done == [None] * 6
        assert stats.commits == 1  # the sixth joined the delayed commit
        assert time.monotonic() - started >= DELAY_S * 0.9


async def test_without_the_delay_each_arrival_commits(tmp_path: Path) -> None:
    stats = StoreStats()
    async with store_actor(tmp_path, stats, delay_s=0) as ref:
        done: list[object] = []
        await five_devices_then_a_sixth(ref, done)
        await until(lambda: len(done) == 6)
        assert stats.commits == 2


async def test_a_device_alone_is_acknowledged_without_the_delay(tmp_path: Path) -> None:
    stats = StoreStats()
    async with store_actor(tmp_path, stats, delay_s=10.0) as ref:
        for ts in (1000, 1001, 1002):  # one device, one message at a time, as a paced sensor
            done: list[object] = []
            started = time.monotonic()
            ref.tell(Ingest([reading("d0", ts)], confirm=done.append))
            await until(lambda: done == [None])  # noqa: B023 - awaited in this iteration
            assert time.monotonic() - started < 5.0
        assert stats.commits == 3


async def test_a_full_batch_commits_without_the_delay(tmp_path: Path) -> None:
    stats = StoreStats()
    async with store_actor(tmp_path, stats, delay_s=10.0, max_readings=10) as ref:
        done: list[object] = []
        for i in range(5):  # five devices, two readings each: max_readings
            ref.tell(Ingest([reading(f"d{i}", 1000), reading(f"d{i}", 1001)], confirm=done.append))
        await until(lambda: len(done) == 5, timeout_s=5.0)
        assert stats.commits == 1
