"""The one actor that owns DuckDB: batches ingest into transactions, then confirms.

A reading is confirmed (and so acknowledged to its device or broker) only after the transaction
that holds it has committed. While a device waits for that confirmation the batch commits as
soon as nothing else is queued (group commit: whatever arrives during one commit goes into the
next), because a device's PUBACK now waits for the commit and a fixed delay would be latency
each device pays and throughput its in-flight window caps; otherwise batches close at
`batch_max_readings` or after `batch_max_delay_ms`. Under load, when at least `commit_siblings`
devices wait for one commit, it waits up to `commit_delay_us` for more of them (PostgreSQL's
commit_delay): fewer, larger commits, each with a fixed cost of ~2 ms CPU; a device alone is
never delayed (docs/decisions/ingest-cpu.md). The DuckDB work runs in a worker thread so
the event loop keeps serving sockets meanwhile.

A commit that fails for a storage reason (a full disk, an I/O error) is no crash: its confirms
get the StoreUnavailable (nothing of it is acknowledged), the gateway's own records in it are
kept for the next commit (Batch.carried), and storage turns "unavailable" (edge.storage.health):
ingest is refused at once, the disk budget runs (a full disk prunes every synced reading), and a
Probe every PROBE_EVERY_S tries a small commit, which ends the outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.actors import Actor, Timer
from common.clock import Clock, SystemClock
from common.model import Reading
from edge.app.config import DiskBudget
from edge.storage.health import StorageHealth, storage_failure
from edge.storage.stats import LagWindow, StoreStats
from edge.storage.store import (
    AlertRow,
    AuthFailure,
    Batch,
    CommitResult,
    GatewayStore,
    Rejection,
    StoreUnavailable,
)
from edge.sync.clock_watch import ClockWatch

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
    """Run a function on the store; ask() returns CallOk or CallFailed. Built only by
    edge.storage.client, whose StoreClient names each operation."""

    fn: Callable[[GatewayStore], Any]
    # For a read of a sync batch: the last reading seq the result holds. The disk cap then
    # keeps readings up to it from this very message on, so no budget run can fall between
    # the read and the protection (ProtectThrough, sent later, would leave that gap).
    protects: Callable[[Any], int] | None = None


@dataclass(frozen=True, slots=True)
class CallOk:
    value: Any


@dataclass(frozen=True, slots=True)
class CallFailed:
    error: Exception


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class EnforceBudget:
    pass


@dataclass(frozen=True, slots=True)
class Probe:
    """While storage is unavailable: try a small commit; one that succeeds ends the outage."""


@dataclass(frozen=True, slots=True)
class ProtectThrough:
    """From the sync actor when it sends a batch: the disk cap keeps readings up to `seq`."""

    seq: int


@dataclass(frozen=True, slots=True)
class StoreState:
    """Asked by the rules actor on its tick; answered with a StoreView, without a commit."""


@dataclass(frozen=True, slots=True)
class StoreView:
    """The store's last committed seq and whether it can write, at the time of asking."""

    last_seq: int
    health: StorageHealth


@dataclass(frozen=True, slots=True)
class Committed:
    """Told to the subscriber (the rules actor) after every commit with readings."""

    readings: list[Reading]
    result: CommitResult


_Told = Ingest | RecordAuth | SaveAlerts | Flush | EnforceBudget | Probe | ProtectThrough
StoreMsg = _Told | Call | StoreState  # the last two are asked: they answer


STORE_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb")
GROUP_COMMIT_FACTOR = 8
DEFAULT_COMMIT_SIBLINGS = 5  # devices waiting for one commit before commit_delay_us applies
META_INTERVAL_S = 2.0  # last_seen and counters are written at most this often
PROBE_EVERY_S = 1.0  # while storage is unavailable: a small write this often
# After a full disk, a probe writes only with this much free beyond the WAL: DuckDB's next
# checkpoint copies the WAL into the database file, and resuming with a few KB free would only
# fail the next batch again (a commit of 500 readings appends ~20-40 KB to the WAL).
PROBE_HEADROOM_BYTES = 1 << 20
MAX_HELD_AUTH_FAILURES = 10_000  # audit rows kept through an outage; beyond, counted as lost
PROBE_KEY = "storage.last_probe_at"  # kv: what a probe writes


class StoreActor(Actor[StoreMsg]):
    """Owns the GatewayStore while the gateway runs.

    Per-device last_seen and the counters change with every message but matter only
    approximately: they are aggregated in memory and written with a commit at most every
    META_INTERVAL_S (and at stop), which keeps the per-commit cost flat as devices grow.
    """

    def __init__(  # noqa: PLR0913 - its collaborators are injected, each a test seam
        self,
        store: GatewayStore,
        *,
        max_readings: int,
        max_delay_ms: int,
        on_commit: Callable[[Committed], Awaitable[None]] | None = None,
        lag: LagWindow | None = None,
        stats: StoreStats | None = None,
        executor: ThreadPoolExecutor | None = None,
        clock_watch: ClockWatch | None = None,
        budget: DiskBudget | None = None,
        probe_every_s: float = PROBE_EVERY_S,
        clock: Clock | None = None,
        commit_delay_us: int = 0,
        commit_siblings: int = DEFAULT_COMMIT_SIBLINGS,
    ) -> None:
        super().__init__()
        self._clock: Clock = clock or SystemClock()
        self._store = store
        self._max_readings = max_readings
        self._max_delay_s = max_delay_ms / 1000
        self._commit_delay_s = commit_delay_us / 1_000_000
        self._commit_siblings = commit_siblings
        self._waiting_devices: set[str] = set()  # devices with a confirmation in this batch
        self._delaying = False  # the commit delay's timer runs: the batch waits for it
        self._on_commit = on_commit
        self._batch = Batch()
        self._confirms: list[Confirm] = []
        self._timer: asyncio.TimerHandle | None = None
        self.lag = lag if lag is not None else LagWindow()  # shared: survives restarts
        # Written only here; given by the gateway, so it survives a restart of this actor.
        self.stats = stats if stats is not None else StoreStats()
        self._last_seen: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._meta_due = self._clock.monotonic() + META_INTERVAL_S
        self._meta_timer: asyncio.TimerHandle | None = None
        self._executor = executor or STORE_THREAD
        self._clock_watch = clock_watch
        self._budget = budget
        self._probe_every_s = probe_every_s
        self._probing: Timer | None = None

    @property
    def _health(self) -> StorageHealth:
        return self.stats.storage  # in the stats: it outlives a restart of this actor

    async def on_start(self) -> None:
        if not self._health.available:
            self._start_probing()
        if self._clock_watch is not None:
            self._batch.epoch = self._clock_watch.check()  # every start is a new epoch
            await self._flush()
        if self._budget is not None:
            self.schedule_every(self._budget.every_s, EnforceBudget())

    # one branch per store message:
    async def receive(self, msg: StoreMsg) -> object:  # noqa: PLR0912
        match msg:
            case Ingest(readings, rejections, confirm):
                if not self._health.available:
                    self._refuse(msg)
                    return None
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
                    if self._commit_delay_s:
                        self._note_waiting(readings, rejections)
                await self._maybe_flush()
            case RecordAuth(failure):
                self._batch.auth_failures.append(failure)
                self._count(f"auth_{failure.kind}", 1)
                if not self._health.available:
                    self._cap_held_auth()  # kept for the probe, within a bound
                await self._maybe_flush()
            case SaveAlerts(alerts, kv, confirm):
                self._batch.alerts.extend(alerts)
                self._batch.kv.update(kv)
                if confirm is not None and not self._health.available:
                    confirm(self._unavailable())  # not durable now; still written at recovery
                elif confirm is not None:
                    self._confirms.append(confirm)
                await self._flush()  # alerts are rare and matter: no waiting
            case Call(fn, protects):
                await self._flush()  # queries see everything received before them
                try:
                    value = await self._in_store_thread(fn, self._store)
                except Exception as exc:  # the caller's error (bad input), not this actor's
                    return CallFailed(await self._call_failed(exc))
                if protects is not None:
                    self.stats.protect_through = max(self.stats.protect_through, protects(value))
                return CallOk(value)
            case Flush():
                await self._flush()
            case EnforceBudget():
                await self._flush()
                await self._enforce_budget()
            case Probe():
                await self._probe()
            case ProtectThrough(seq):
                self.stats.protect_through = max(self.stats.protect_through, seq)
            case StoreState():
                return StoreView(self.stats.last_seq, self._health)
        return None

    async def _call_failed(self, exc: Exception) -> Exception:
        """A Call's error; a storage failure (a direct write on a full disk, a database DuckDB
        invalidated) also makes storage unavailable, with the store usable again."""
        unavailable = exc if isinstance(exc, StoreUnavailable) else None
        if unavailable is None and storage_failure(exc) is not None:
            unavailable = await self._in_store_thread(self._store.recover, exc)
        if unavailable is None:
            return exc
        await self._storage_failed(unavailable)
        return unavailable

    async def _enforce_budget(self) -> None:
        budget = self._budget
        if budget is None:
            return
        now = self._clock.now_ms()
        retention = budget.synced_retention_s
        synced_before = None if retention is None else now - int(retention * 1000)
        health = self._health
        if not health.available and health.failure is not None and health.failure.disk_full:
            # The disk is full: readings the cloud has acknowledged go now, whatever the
            # retention (they are safe there); refusing new readings is the worse loss.
            synced_before = now
        try:
            result = await self._in_store_thread(
                lambda: self._store.enforce_budget(
                    synced_before_ms=synced_before,
                    unsynced_cap=budget.unsynced_cap,
                    protect_through=self.stats.protect_through,
                    now_ms=now,
                )
            )
        except StoreUnavailable as exc:
            log.warning("disk budget not enforced: %s", exc.failure.reason)
            await self._storage_failed(exc, kick_budget=False)
            return
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
        if self._health.available:
            await self._flush()
        if not self._health.available:
            await self._probe(final=True)  # one last try for the records held since the outage
            await self._flush()  # last_seen and counters, once (if) that worked
        for timer in (self._timer, self._meta_timer, self._probing):
            if timer is not None:
                timer.cancel()

    def _count(self, name: str, n: int) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _note_waiting(self, readings: list[Reading], rejections: Sequence[Rejection]) -> None:
        devices = self._waiting_devices
        if len(devices) < self._commit_siblings:  # beyond, the count no longer matters
            devices.update(r.device_id for r in readings)
            devices.update(rj.device_id for rj in rejections)

    def _delay_commit(self) -> bool:
        """The commit delay (PostgreSQL's commit_delay / commit_siblings): when at least
        commit_siblings devices wait for this commit, more of them are about to send; waiting
        up to commit_delay_us puts them into this commit instead of the next. A device alone
        is never delayed. True while the delay's timer runs."""
        if self._delaying:
            return True
        if not self._commit_delay_s or len(self._waiting_devices) < self._commit_siblings:
            return False
        self._delaying = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._commit_delay_s, self._tell_flush)
        return True

    async def _maybe_flush(self) -> None:
        pending = len(self._batch.readings)
        if self._confirms and self.ref.mailbox_size == 0:
            # someone waits for this commit and nothing else is queued: commit now, unless
            # many devices wait (then the commit delay's timer commits)
            if pending >= self._max_readings or not self._delay_commit():
                await self._flush()
        elif pending >= self._max_readings and (
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

    # the commit, its failure paths and confirmations in order:
    async def _flush(self) -> None:  # noqa: PLR0912
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._delaying = False
        self._waiting_devices.clear()
        if not self._health.available:
            return  # what is held waits for a probe that commits
        batch, confirms = self._batch, self._confirms
        if batch.readings:
            self._count("commits_with_readings", 1)
            if self._clock_watch is not None and batch.epoch is None:
                batch.epoch = self._clock_watch.check()
        if self._clock.monotonic() >= self._meta_due and (self._counters or self._last_seen):
            batch.counters, self._counters = self._counters, {}
            batch.last_seen, self._last_seen = self._last_seen, {}
            self._meta_due = self._clock.monotonic() + META_INTERVAL_S
        if (self._counters or self._last_seen) and self._meta_timer is None:
            # quiet after a burst: write the pending metadata when it falls due anyway
            delay = max(0.0, self._meta_due - self._clock.monotonic())
            self._meta_timer = asyncio.get_running_loop().call_later(delay, self._tell_meta)
        if batch.is_empty():
            return
        self._batch, self._confirms = Batch(), []
        try:
            result = await self._in_store_thread(self._store.commit, batch)
        except StoreUnavailable as exc:
            for confirm in confirms:
                confirm(exc)  # nothing of this commit is stored: senders retry
            self._count("storage_refused_readings", len(batch.readings))
            self._hold(batch.carried())
            await self._storage_failed(exc, readings=len(batch.readings))
            return
        except Exception as exc:
            log.exception("commit of %d readings failed", len(batch.readings))
            for confirm in confirms:
                confirm(exc)
            raise  # a bug, not the disk: the supervisor restarts this actor
        st = self.stats
        st.commits += 1
        st.last_commit_at = self._clock.now_ms()
        st.readings_stored += result.inserted
        st.duplicates += result.duplicates
        st.rejections += len(batch.rejections)
        st.auth_failures += len(batch.auth_failures)
        if result.last_seq is not None:
            st.last_seq = result.last_seq
        if st.oldest_unsynced_at is None and result.inserted:
            st.oldest_unsynced_at = min(r.received_at for r in batch.readings)
        if batch.readings:
            self.lag.add_batch(batch.readings, self._clock.now_ms())
        for confirm in confirms:
            confirm(None)
        if batch.readings and self._on_commit is not None:
            await self._on_commit(Committed(batch.readings, result))

    # -- storage unavailable (edge.storage.health) ----------------------------------------

    def _unavailable(self) -> StoreUnavailable:
        failure = self._health.failure
        assert failure is not None, "unavailable storage always has a failure"
        return StoreUnavailable(failure)

    def _refuse(self, msg: Ingest) -> None:
        """Ingest while storage is unavailable: answered at once, nothing kept (the senders
        were told to retry, and resend)."""
        n = len(msg.readings)
        self.stats.storage = self._health.refused(n)
        self._count("storage_refused_readings", n)
        if msg.confirm is not None:
            msg.confirm(self._unavailable())
        elif n:
            log.error("storage unavailable: %d readings without a confirmation lost", n)

    def _hold(self, carried: Batch) -> None:
        """Keep the gateway's own records of a failed commit for the next one, in order."""
        carried.absorb(self._batch)
        self._batch = carried
        self._cap_held_auth()

    def _cap_held_auth(self) -> None:
        """Audit rows held through a long outage are bounded: the oldest go, counted."""
        held = self._batch.auth_failures
        excess = len(held) - MAX_HELD_AUTH_FAILURES
        if excess > 0:
            del held[:excess]
            self._count("auth_failures_lost", excess)
            log.error("storage unavailable: %d audit rows lost (held at most %d)",
                      excess, MAX_HELD_AUTH_FAILURES)  # fmt: skip

    def _note_failure(
        self, exc: StoreUnavailable, *, probe: bool = False, readings: int = 0
    ) -> bool:
        """Record a storage failure; True when it begins an outage."""
        began = self._health.available
        now = self._clock.now_ms()
        self.stats.storage = self._health.failed(
            exc.failure, now, probe=probe, reopened=exc.reopened, refused=readings
        )
        if began:
            self._start_probing()
        return began

    async def _storage_failed(
        self, exc: StoreUnavailable, *, readings: int = 0, kick_budget: bool = True
    ) -> None:
        """A write failed for a storage reason: an outage begins (or goes on), never a crash."""
        if not self._note_failure(exc, readings=readings):
            log.warning("storage still unavailable: %s", exc.failure.reason)
            return
        lost = (
            f"{readings} readings of the failed commit not acknowledged"
            if readings
            else ("a write failed")
        )
        log.error(
            "storage unavailable: %s (%s); %s; refusing ingest (retry later), probing every %g s",
            exc.failure.reason,
            exc.failure.detail,
            lost,
            self._probe_every_s,
        )
        if exc.failure.disk_full and kick_budget:
            await self._enforce_budget()  # may free space; at least the file stops growing

    def _start_probing(self) -> None:
        if self._probing is None or not self._probing.active:
            self._probing = self.schedule_every(self._probe_every_s, Probe())

    async def _probe(self, *, final: bool = False) -> None:
        """A small commit (with what is held); success ends the outage. After a full disk it
        is tried only with PROBE_HEADROOM_BYTES free beyond the WAL."""
        health = self._health
        if health.available:
            if self._probing is not None:
                self._probing.cancel()
            return
        now = self._clock.now_ms()
        if health.failure is not None and health.failure.disk_full and not final:
            free, wal = await self._in_store_thread(self._store.headroom)
            if free < PROBE_HEADROOM_BYTES + wal:
                self.stats.storage = health.probed(now)
                return
        batch, confirms = self._batch, self._confirms
        self._batch, self._confirms = Batch(), []
        batch.kv[PROBE_KEY] = str(now)
        try:
            await self._in_store_thread(self._store.commit, batch)
        except StoreUnavailable as exc:
            del batch.kv[PROBE_KEY]
            self._hold(batch)
            self._confirms = confirms + self._confirms
            self._note_failure(exc, probe=True)
            log.debug("storage probe failed: %s", exc.failure.reason)
            if final:
                held = (len(batch.auth_failures), len(batch.alerts))
                log.error("storage still unavailable at stop: %d audit rows, %d alert changes "
                          "not written", *held)  # fmt: skip
            return
        down_s = (now - (health.since or now)) / 1000
        self.stats.storage = health.recovered(now)
        if self._probing is not None:
            self._probing.cancel()
        log.warning(
            "storage available again after %.0f s (%s); %d commits failed, %d readings "
            "refused since start",
            down_s,
            health.failure.reason if health.failure else "?",
            health.failed_commits,
            health.refused_readings,
        )
        for confirm in confirms:
            confirm(None)
