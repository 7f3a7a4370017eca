"""The one actor that owns DuckDB: batches ingest into transactions, then confirms.

A reading is confirmed (and so acknowledged to its device or broker) only after the transaction
that holds it has committed. Batches close at `batch_max_readings` or after
`batch_max_delay_ms`, whichever comes first; the DuckDB work runs in a worker thread so the
event loop keeps serving sockets meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.actors import Actor, ActorRef
from common.model import Reading
from edge.clock_watch import ClockWatch
from edge.config import DiskBudget
from edge.store import AlertRow, AuthFailure, Batch, CommitResult, GatewayStore, Rejection

log = logging.getLogger("iotsphere.store")
T = TypeVar("T")

Confirm = Callable[[BaseException | None], None]


@dataclass(frozen=True, slots=True)
class Ingest:
    """Readings of accepted messages and records of rejected ones, confirmed together."""

    readings: list[Reading]
    rejections: Sequence[Rejection] = ()
    confirm: Confirm | None = None  # called with None after commit, or with the failure


@dataclass(frozen=True, slots=True)
class RecordAuth:
    failure: AuthFailure


@dataclass(frozen=True, slots=True)
class SaveAlerts:
    alerts: list[AlertRow]
    kv: dict[str, str] = field(default_factory=dict)
    confirm: Confirm | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """Run a function on the store (admin API, queries); ask() returns its result."""

    fn: Callable[[GatewayStore], Any]


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class EnforceBudget:
    pass


@dataclass(frozen=True, slots=True)
class Committed:
    """Told to the subscriber (the rules actor) after every commit with readings."""

    readings: list[Reading]
    result: CommitResult


StoreMsg = Ingest | RecordAuth | SaveAlerts | Call | Flush | EnforceBudget


class LagWindow:
    """Ingest lag of recent commits: commit time minus the reading's device timestamp.

    With device clocks in sync (simulators on the same host, NTP on site) this is the
    publish-to-durable latency; readings whose ts the gateway supplied measure receive-to-commit.
    A fixed window of recent samples keeps memory bounded.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._samples: deque[int] = deque(maxlen=size)

    def add_batch(self, readings: list[Reading]) -> None:
        now = time.time_ns() // 1_000_000
        # one sample per distinct message timestamp: a 10-value message counts once
        seen: set[tuple[str, int]] = set()
        for r in readings:
            key = (r.device_id, r.ts)
            if key not in seen:
                seen.add(key)
                self._samples.append(now - r.ts)

    def summary(self) -> dict[str, int | None]:
        if not self._samples:
            return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        ordered = sorted(self._samples)
        n = len(ordered)
        return {
            "samples": n,
            "p50_ms": ordered[n // 2],
            "p99_ms": ordered[min(n - 1, (n * 99) // 100)],
            "max_ms": ordered[-1],
        }

    def reset(self) -> None:
        self._samples.clear()


@dataclass
class LiveStats:
    """What `status` shows without queuing behind ingest: kept current by the store actor."""

    readings_stored: int = 0
    duplicates: int = 0
    rejections: int = 0
    auth_failures: int = 0
    last_seq: int = 0
    commits: int = 0
    last_commit_at: int | None = None
    active_alerts: int = 0  # kept by the rules actor
    oldest_unsynced_at: int | None = None  # receive time of the oldest reading not yet synced
    sync_inflight_through: int = 0  # readings up to this seq are in a batch sent to the cloud
    readings_dropped: int = 0  # since start: unsynced readings deleted by the disk cap
    readings_pruned: int = 0  # since start: synced readings deleted after retention


STORE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
GROUP_COMMIT_FACTOR = 8
META_INTERVAL_S = 2.0  # last_seen and counters are written at most this often


class StoreActor(Actor[StoreMsg]):
    """Owns the GatewayStore while the gateway runs.

    Per-device last_seen and the counters change with every message but matter only
    approximately: they are aggregated in memory and written with a commit at most every
    META_INTERVAL_S (and at stop), which keeps the per-commit cost flat as devices grow.
    """

    def __init__(
        self,
        store: GatewayStore,
        *,
        max_readings: int,
        max_delay_ms: int,
        on_commit: Callable[[Committed], Awaitable[None]] | None = None,
        lag: LagWindow | None = None,
        stats: LiveStats | None = None,
        executor: ThreadPoolExecutor | None = None,
        clock_watch: ClockWatch | None = None,
        budget: DiskBudget | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._max_readings = max_readings
        self._max_delay_s = max_delay_ms / 1000
        self._on_commit = on_commit
        self._batch = Batch()
        self._confirms: list[Confirm] = []
        self._timer: asyncio.TimerHandle | None = None
        self.lag = lag if lag is not None else LagWindow()  # shared: survives restarts
        self.stats = stats if stats is not None else LiveStats()
        self._last_seen: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._meta_due = time.monotonic() + META_INTERVAL_S
        self._meta_timer: asyncio.TimerHandle | None = None
        self._executor = executor or STORE_THREAD
        self._clock_watch = clock_watch
        self._budget = budget

    async def on_start(self) -> None:
        if self._clock_watch is not None:
            self._batch.epoch = self._clock_watch.check()  # every start is a new epoch
            await self._flush()
        if self._budget is not None:
            self.schedule_every(self._budget.every_s, EnforceBudget())

    async def receive(self, msg: StoreMsg) -> object:
        match msg:
            case Ingest(readings, rejections, confirm):
                self._batch.readings.extend(readings)
                if rejections:
                    self._batch.rejections.extend(rejections)
                    self._count("rejected_messages", len(rejections))
                if readings:
                    self._count("accepted_readings", len(readings))
                    last_seen = self._last_seen
                    for r in readings:
                        if r.received_at > last_seen.get(r.device_id, 0):
                            last_seen[r.device_id] = r.received_at
                if confirm is not None:
                    self._confirms.append(confirm)
                await self._maybe_flush()
            case RecordAuth(failure):
                self._batch.auth_failures.append(failure)
                self._count(f"auth_{failure.kind}", 1)
                await self._maybe_flush()
            case SaveAlerts(alerts, kv, confirm):
                self._batch.alerts.extend(alerts)
                self._batch.kv.update(kv)
                if confirm is not None:
                    self._confirms.append(confirm)
                await self._flush()  # alerts are rare and matter: no waiting
            case Call(fn):
                await self._flush()  # queries see everything received before them
                try:
                    return _Ok(await self._in_store_thread(fn, self._store))
                except Exception as exc:  # the caller's error (bad input), not this actor's
                    return _Failed(exc)
            case Flush():
                await self._flush()
            case EnforceBudget():
                await self._flush()
                await self._enforce_budget()
        return None

    async def _enforce_budget(self) -> None:
        budget = self._budget
        assert budget is not None
        now = time.time_ns() // 1_000_000
        retention = budget.synced_retention_s
        result = await self._in_store_thread(
            lambda: self._store.enforce_budget(
                synced_before_ms=None if retention is None else now - int(retention * 1000),
                unsynced_cap=budget.unsynced_cap,
                protect_through=self.stats.sync_inflight_through,
                now_ms=now,
            )
        )
        self.stats.readings_pruned += result.pruned
        self.stats.readings_dropped += result.dropped
        if result.dropped:
            log.warning(
                "disk budget: %d unsynced readings over the cap of %s dropped (oldest first)",
                result.dropped,
                budget.unsynced_cap,
            )
        if result.pruned:
            log.info("disk budget: %d synced readings past retention pruned", result.pruned)

    async def _in_store_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """DuckDB work runs on the store's one thread: the event loop keeps serving sockets,
        and a single thread keeps one malloc arena instead of one per pool worker."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def on_stop(self) -> None:
        self._meta_due = 0.0  # write last_seen and counters now
        await self._flush()
        for timer in (self._timer, self._meta_timer):
            if timer is not None:
                timer.cancel()

    def _count(self, name: str, n: int) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    async def _maybe_flush(self) -> None:
        pending = len(self._batch.readings)
        if pending >= self._max_readings and (
            # Group commit: while more ingest is already queued, take it into this transaction
            # (up to GROUP_COMMIT_FACTOR x the batch size). Under load that halves the commits
            # (each an fsync) instead of letting the mailbox, and the latency, grow.
            self.ref.mailbox_size == 0 or pending >= self._max_readings * GROUP_COMMIT_FACTOR
        ):
            await self._flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._max_delay_s, self._tell_flush)

    def _tell_flush(self) -> None:
        self._timer = None
        self.ref.tell(Flush())

    def _tell_meta(self) -> None:
        self._meta_timer = None
        self.ref.tell(Flush())

    async def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, confirms = self._batch, self._confirms
        if batch.readings:
            self._count("commits_with_readings", 1)
            if self._clock_watch is not None and batch.epoch is None:
                batch.epoch = self._clock_watch.check()
        if time.monotonic() >= self._meta_due and (self._counters or self._last_seen):
            batch.counters, self._counters = self._counters, {}
            batch.last_seen, self._last_seen = self._last_seen, {}
            self._meta_due = time.monotonic() + META_INTERVAL_S
        if (self._counters or self._last_seen) and self._meta_timer is None:
            # quiet after a burst: write the pending metadata when it falls due anyway
            delay = max(0.0, self._meta_due - time.monotonic())
            self._meta_timer = asyncio.get_running_loop().call_later(delay, self._tell_meta)
        if batch.is_empty():
            return
        self._batch, self._confirms = Batch(), []
        try:
            result = await self._in_store_thread(self._store.commit, batch)
        except Exception as exc:
            log.exception("commit of %d readings failed", len(batch.readings))
            for confirm in confirms:
                confirm(exc)
            raise  # a failed commit is a crash: the supervisor restarts this actor
        st = self.stats
        st.commits += 1
        st.last_commit_at = time.time_ns() // 1_000_000
        st.readings_stored += result.inserted
        st.duplicates += result.duplicates
        st.rejections += len(batch.rejections)
        st.auth_failures += len(batch.auth_failures)
        if result.last_seq is not None:
            st.last_seq = result.last_seq
        if st.oldest_unsynced_at is None and result.inserted:
            st.oldest_unsynced_at = min(r.received_at for r in batch.readings)
        if batch.readings:
            self.lag.add_batch(batch.readings)
        for confirm in confirms:
            confirm(None)
        if batch.readings and self._on_commit is not None:
            await self._on_commit(Committed(batch.readings, result))


@dataclass(frozen=True, slots=True)
class _Ok:
    value: Any


@dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


async def call(ref: ActorRef[StoreMsg], fn: Callable[[GatewayStore], T]) -> T:
    """Run fn on the store actor; its exceptions reach the caller without crashing the actor."""
    reply = await ref.ask(Call(fn))
    if isinstance(reply, _Failed):
        raise reply.error
    assert isinstance(reply, _Ok)
    value: T = reply.value
    return value
