"""Store-and-forward to the cloud: reads unsynced data in sequence order, sends signed batches,
advances the durable cursor only after the cloud's matching acknowledgement.

Exactly-once rests on three rules:
  - the cursor (kv sync.readings_seq / sync.alerts_change_seq) moves only after an ack whose
    batch id and seq range match the batch sent, and is written through the store actor, so
    DuckDB keeps one owner and a crash leaves either the old cursor (resend) or the new one;
  - an unacknowledged batch is kept and resent as is (same batch id, same content) until it
    is acknowledged: a lost response makes the cloud see the same batch again, which it
    answers with the stored ack without storing anything twice;
  - after a crash the actor rebuilds its batch from the durable cursor (readings carry their
    gateway seq, so the cloud dedupes them even if the rebuilt batch is cut differently).

Alert changes ride in the same batch as readings and are read first, so an alert raised
during a long outage reaches the cloud with the first batch, not after the backlog.

Draining a backlog, two batches are on the wire: the next one is read, encoded and sent while
the cloud is still storing the one before, and names it (`follows`); the cloud applies it only
once that one is stored, so readings still arrive in order, and answers 409 if it never is.
Acks are processed in send order, so the cursor still only moves over acknowledged batches.

Failures back off exponentially with full jitter (a uniform delay in [0, min(cap, base * 2^n)],
so gateways that lost the cloud together do not come back in lockstep). A 4xx is not
retryable in the HTTP sense, but skipping the batch would lose data: it is logged, counted,
shown in `gateway status` and retried at the same backoff until someone fixes the cause.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from common.actors import Actor
from common.backoff import full_jitter_s
from common.clock import Clock
from common.sync_wire import (
    BatchAck,
    SyncBatch,
    devices_digest,
    encode_batch,
    rules_digest,
)
from edge.storage.interfaces import SyncStorage
from edge.storage.store import DROPPED_COUNTER, StoreUnavailable
from edge.sync.cloud_client import (
    BadAck,
    CloudClient,
    CloudError,
    CloudRejected,
    CloudUnavailable,
    CloudUnreachable,
)
from edge.sync.cloud_config import CloudConfigError

log = logging.getLogger("iotsphere.sync")

SKEW_RECORD_CHANGE_MS = 2_000  # a measured skew is saved when it moved more than this
CONFIG_VERSION_KEY = "sync.config_version"
DRAIN_SLICE_S = 1.0  # one tick sends back-to-back batches for at most this long
RATE_WINDOW = 50  # recent successful batches the drain-time estimate is based on


@dataclass(frozen=True, slots=True)
class SyncTick:
    pass


SyncMsg = SyncTick


backoff_delay = full_jitter_s  # uniform in [0, min(cap, base * 2^(failures-1))]


@dataclass
class SyncStats:
    """What `gateway status` shows about sync; shared with the gateway, survives restarts."""

    gateway_id: str
    cloud_url: str
    cursor_seq: int = 0
    alerts_cursor: int = 0
    backlog_readings: int | None = None
    oldest_unsynced_at: int | None = None
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    retries: int = 0  # attempts that resent a batch after a failure
    consecutive_failures: int = 0
    unreachable: int = 0
    server_errors: int = 0  # 5xx, 429
    client_errors: int = 0  # other 4xx: a problem someone must look at
    bad_acks: int = 0
    readings_acked: int = 0
    alerts_acked: int = 0
    cloud_duplicates: int = 0  # readings the cloud already had (resends)
    last_attempt_at: int | None = None
    last_success_at: int | None = None
    last_error: str | None = None
    last_error_at: int | None = None
    next_retry_in_s: float | None = None
    config_version: int = 0  # the cloud configuration version applied here
    config_errors: int = 0
    clock_skew_ms: int | None = None  # this gateway's clock minus the cloud's, last measured
    bytes_sent: int = 0  # sync batch request bodies (compressed), resends included
    _recent: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))

    def record_rate(self, readings: int, seconds: float) -> None:
        self._recent.append((readings, seconds))

    def send_rate(self) -> float | None:
        """Readings per second of sending time over the recent batches (link capacity, not
        the input rate: a caught-up gateway sends small batches but could send more)."""
        n = sum(r for r, _ in self._recent)
        t = sum(s for _, s in self._recent)
        return n / t if n and t > 0 else None

    def summary(self, now_ms: int) -> dict[str, Any]:
        rate = self.send_rate()
        backlog = self.backlog_readings
        return {
            "state": "enrolled",
            "gateway_id": self.gateway_id,
            "cloud": self.cloud_url,
            "backlog_readings": backlog,
            "oldest_unsynced_at": self.oldest_unsynced_at,
            "oldest_unsynced_age_s": (
                None
                if self.oldest_unsynced_at is None
                else max(0, now_ms - self.oldest_unsynced_at) // 1000
            ),
            "estimated_drain_s": (
                None if backlog is None or rate is None else round(backlog / rate, 1)
            ),
            "send_rate_per_s": None if rate is None else round(rate),
            "cursor_seq": self.cursor_seq,
            "alerts_cursor": self.alerts_cursor,
            "last_success_at": self.last_success_at,
            "last_attempt_at": self.last_attempt_at,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "next_retry_in_s": self.next_retry_in_s,
            "config_version": self.config_version,
            "config_errors": self.config_errors,
            "clock_skew_ms": self.clock_skew_ms,
            "bytes_sent": self.bytes_sent,
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.failures,
            "retries": self.retries,
            "unreachable": self.unreachable,
            "server_errors": self.server_errors,
            "client_errors": self.client_errors,
            "bad_acks": self.bad_acks,
            "readings_acked": self.readings_acked,
            "alerts_acked": self.alerts_acked,
            "cloud_duplicates": self.cloud_duplicates,
        }


ConfigApplier = Callable[[int, dict[str, Any]], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class SyncSettings:
    config_every_s: float = 10.0  # how often cloud configuration changes are fetched
    tick_s: float = 1.0
    batch_max_readings: int = 40_000
    batch_max_age_s: float = 2.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0


class SyncActor(Actor[SyncMsg]):
    def __init__(
        self,
        store: SyncStorage,
        client_factory: Callable[[], CloudClient],
        clock: Clock,
        settings: SyncSettings,
        stats: SyncStats,
        *,
        boot_id: str | None = None,
        rand: Callable[[], float] = random.random,
        apply_config: ConfigApplier | None = None,
    ) -> None:
        self._store = store
        self._client_factory = client_factory
        self._client: CloudClient | None = None
        self._clock = clock
        self._cfg = settings
        self.stats = stats
        self._boot_id = boot_id or str(uuid.uuid4())
        self._rand = rand
        self._cursor = (0, 0)
        self._auth_cursor = 0
        self._saved_skew: int | None = None
        self._inflight: SyncBatch | None = None  # sent, not yet acknowledged: resent as is
        self._encoded: tuple[str, tuple[bytes, str, str]] | None = None  # batch id, body
        # the last acknowledged cursor's save, and that cursor
        self._saving: tuple[asyncio.Task[None], tuple[int, int]] | None = None
        self._retry_at = 0.0  # monotonic
        self._partial_since: float | None = None  # monotonic: a part-full batch began waiting
        self._apply_config = apply_config
        self._config_version = 0
        self._config_due = 0.0  # monotonic: fetch at the first tick

    async def on_start(self) -> None:
        raw = await self._store.kv_get(CONFIG_VERSION_KEY)
        self._config_version = int(raw) if raw else 0
        self._cursor = await self._store.sync_cursor()
        self._auth_cursor = await self._store.auth_sync_cursor()
        self.stats.cursor_seq, self.stats.alerts_cursor = self._cursor
        self._client = self._client_factory()
        await self._refresh_backlog()
        self.schedule_every(self._cfg.tick_s, SyncTick())
        log.info("sync: resuming after reading seq %d, alert change %d", *self._cursor)

    async def on_stop(self) -> None:
        try:
            await self._settle_save()
        except Exception:
            log.exception("sync: the last cursor save failed; that batch will be resent")
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def receive(self, msg: SyncMsg) -> object:
        try:
            return await self._tick()
        except StoreUnavailable as exc:
            # The store cannot write or read now (a full disk, a reopened database): a storage
            # outage is the store actor's to report and probe, not a crash of this actor (its
            # restarts share the gateway's budget). The next tick carries on from memory.
            log.warning("sync: paused this tick, storage unavailable: %s", exc.failure.reason)
            return None

    async def _tick(self) -> object:
        now = self._clock.monotonic()
        if self._apply_config is not None and now >= self._config_due:
            await self._pull_config(now)
        if now < self._retry_at:
            self.stats.next_retry_in_s = round(self._retry_at - now, 1)
            return None
        self.stats.next_retry_in_s = None
        deadline = now + DRAIN_SLICE_S
        batch = self._inflight or await self._next_batch()
        sending = self._post(batch) if batch is not None else None
        while batch is not None and sending is not None:
            # Draining a backlog: read and send the next full batch while this one is on the
            # wire and in the cloud's transaction, so both sides work at the same time.
            nxt: SyncBatch | None = None
            nxt_sending: asyncio.Task[BatchAck] | None = None
            if self._full(batch) and self._clock.monotonic() < deadline:
                ahead = asyncio.create_task(self._read_ahead(batch))
                await asyncio.wait({ahead, sending}, return_when=asyncio.FIRST_COMPLETED)
                if sending.done() and sending.exception() is not None:
                    ahead.cancel()  # rebuilt, identical, from the cursor after the resend
                else:
                    nxt = await ahead
                    nxt_sending = self._post(nxt) if nxt is not None else None
            if not await self._settle(batch, sending):
                if nxt_sending is not None:
                    await _outcome_ignored(nxt_sending)  # resent after its predecessor
                break
            batch, sending = nxt, nxt_sending
        await self._settle_save()  # durable before the tick ends (and status says so)
        await self._refresh_backlog()
        return None

    async def _settle_save(self) -> None:
        """Wait for the pending cursor save; its failure crashes the actor (the supervisor
        restarts it from the durable cursor), except over a storage outage: then the cursor
        stays in memory and the next save writes a later one (a restart before it resends
        batches the cloud answers from its stored acks)."""
        pending, self._saving = self._saving, None
        if pending is not None:
            task, cursor = pending
            try:
                await task
            except StoreUnavailable as exc:
                log.warning("sync: cursor %d not saved, storage unavailable: %s",
                            cursor[0], exc.failure.reason)  # fmt: skip
                return
            # status shows the durable cursor, not one a crash could still take back
            self.stats.cursor_seq, self.stats.alerts_cursor = cursor

    async def _pull_config(self, now: float) -> None:
        """Rules, device revocations and alert acks made in the cloud, applied locally so they
        hold while offline. The next request's `since` acknowledges the applied version."""
        assert self._client is not None and self._apply_config is not None
        self._config_due = now + self._cfg.config_every_s
        try:
            doc = await self._client.fetch_config(self._config_version)
            self._config_version = await self._apply_config(self._config_version, doc)
            self.stats.config_version = self._config_version
            await self._record_skew()
        except CloudError as exc:
            log.warning("sync: configuration not fetched: %s", exc)
            self.stats.config_errors += 1
        except CloudConfigError as exc:  # refused whole: nothing of it applied
            log.error("sync: the cloud's configuration was refused: %s", exc)
            self.stats.config_errors += 1
        except Exception:  # a bad document must not stop readings from syncing
            log.exception("sync: configuration from the cloud could not be applied")
            self.stats.config_errors += 1

    async def _read_ahead(self, after: SyncBatch) -> SyncBatch | None:
        """The batch after `after`, read and encoded while `after` is on the wire (encoding
        in a worker thread: the cloud works on `after` meanwhile, in its own process)."""
        batch = await self._next_batch(after=after)
        if batch is not None:
            batch = dataclasses.replace(batch, follows=after.batch_id)
            self._encoded = (batch.batch_id, await asyncio.to_thread(encode_batch, batch))
        return batch

    async def _next_batch(self, after: SyncBatch | None = None) -> SyncBatch | None:
        """The batch after the durable cursor, or (read-ahead) after `after` once it is
        acknowledged; a read-ahead returns only a full batch (or one with alerts/events)."""
        cfg = self._cfg
        cursor, auth_cursor = self._cursor, self._auth_cursor
        if after is not None:
            cursor = (after.last_seq, max(cursor[1], after.alerts_through))
            auth_cursor = after.auth_through if after.auth_events else auth_cursor
        got = await self._store.batch_rows(cursor, auth_cursor, cfg.batch_max_readings)
        rows = got.readings
        full = len(rows) >= cfg.batch_max_readings or got.more
        partial_batch = (
            not got.alerts
            and not got.auth_events
            and not got.devices
            and got.rules is None
            and not full
        )
        if after is not None and (got.is_empty() or partial_batch):
            return None  # the next tick decides about it, with the age limit
        if got.is_empty():
            self._partial_since = None
            return None
        if partial_batch:
            # Age limit, measured on the monotonic clock (a gateway clock jump must neither
            # hold a batch back forever nor flush every one at once).
            now = self._clock.monotonic()
            if self._partial_since is None:
                self._partial_since = now
            if now - self._partial_since < cfg.batch_max_age_s:
                return None
        self._partial_since = None
        first = cursor[0] + 1
        return SyncBatch.create(
            gateway_id=self.stats.gateway_id,
            first_seq=first,
            last_seq=rows.seq[-1] if rows else first - 1,
            boot_id=self._boot_id,
            gateway_clock_ms=self._clock.now_ms(),
            readings=rows,
            alerts=got.alerts,
            counters=got.counters,
            auth_events=got.auth_events,
            auth_through=got.auth_through if got.auth_events else 0,
            dropped=got.counters.get(DROPPED_COUNTER, 0),
            epochs=got.epochs,
            devices=got.devices,
            backlog=got.backlog,
            rules=got.rules,
        )

    def _full(self, batch: SyncBatch) -> bool:
        return batch.last_seq - batch.first_seq + 1 >= self._cfg.batch_max_readings

    def _post(self, batch: SyncBatch) -> asyncio.Task[BatchAck]:
        """Put the batch on the wire (as a task: the next one may follow it before its ack)."""
        assert self._client is not None
        st = self.stats
        st.attempts += 1
        if st.consecutive_failures:
            st.retries += 1
        st.last_attempt_at = self._clock.now_ms()
        if self._inflight is None:
            self._inflight = batch  # the oldest unacknowledged one: resent as is
        encoded = self._encoded
        body = encoded[1] if encoded is not None and encoded[0] == batch.batch_id else None
        return asyncio.create_task(self._post_body(self._client, batch, body))

    async def _post_body(
        self, client: CloudClient, batch: SyncBatch, body: tuple[bytes, str, str] | None
    ) -> BatchAck:
        # The disk cap must not drop what this batch carries: the read already protected its
        # readings (StoreClient.batch_rows); this also covers the cursor, told before the batch
        # goes on the wire (the store's mailbox is FIFO).
        await self._store.protect_through(max(batch.last_seq, self._cursor[0]))
        if body is None:
            body = await asyncio.to_thread(encode_batch, batch)
        self.stats.bytes_sent += len(body[0])
        return await client.post_batch(batch, body)

    async def _settle(self, batch: SyncBatch, sending: asyncio.Task[BatchAck]) -> bool:
        """The outcome of a posted batch, in send order; True when acknowledged (the cursor
        save then runs while the next batch is already on its way)."""
        st = self.stats
        started = self._clock.monotonic()
        try:
            ack = await sending
        except CloudError as exc:
            await self._failed(batch, exc)
            return False
        cursor = (batch.last_seq, max(self._cursor[1], batch.alerts_through))
        auth = batch.auth_through if batch.auth_events else None
        devices = devices_digest(batch.devices) if batch.devices else None
        rules = rules_digest(batch.rules) if batch.rules is not None else None
        now_ms = self._clock.now_ms()
        # Saves stay in order: the store's mailbox is FIFO, and each waits for the one before.
        # A crash before the save only means a resend, which the cloud answers from its stored
        # acks, never a gap.
        await self._settle_save()
        saving = asyncio.create_task(
            self._store.save_sync_cursor(cursor, now_ms, auth, devices, rules)
        )
        self._saving = (saving, cursor)
        self._cursor = cursor
        if auth is not None:
            self._auth_cursor = auth
        self._inflight = None
        if self._encoded is not None and self._encoded[0] == batch.batch_id:
            self._encoded = None  # (a read-ahead may already hold the next batch's body)
        await self._record_skew()
        st.successes += 1
        st.consecutive_failures = 0
        st.readings_acked += len(batch.readings)
        st.alerts_acked += len(batch.alerts)
        st.cloud_duplicates += ack.duplicates
        st.last_success_at = now_ms
        st.record_rate(len(batch.readings), max(1e-6, self._clock.monotonic() - started))
        self._retry_at = 0.0
        log.debug(
            "sync: batch %s (%d..%d, %d readings, %d alerts) acknowledged",
            batch.batch_id,
            batch.first_seq,
            batch.last_seq,
            len(batch.readings),
            len(batch.alerts),
        )
        return True

    async def _failed(self, batch: SyncBatch, exc: CloudError) -> None:
        st = self.stats
        st.failures += 1
        st.consecutive_failures += 1
        self._inflight = batch
        if batch.follows is not None and isinstance(exc, CloudRejected) and exc.status == 409:
            # The cloud does not have the batch this one followed (e.g. restored from an older
            # backup): resent on its own, or it would wait for that one forever.
            self._inflight = dataclasses.replace(batch, follows=None)
            self._encoded = None
        match exc:
            case CloudUnreachable():
                st.unreachable += 1
            case CloudUnavailable():
                st.server_errors += 1
            case CloudRejected():
                st.client_errors += 1
            case BadAck():
                st.bad_acks += 1
        now_ms = self._clock.now_ms()
        st.last_error, st.last_error_at = str(exc), now_ms
        delay = backoff_delay(
            st.consecutive_failures, self._cfg.backoff_base_s, self._cfg.backoff_max_s, self._rand
        )
        if exc.retry_after_s is not None:
            # The cloud said when to come back: then, not after a backoff grown by a long outage
            # (at most the backoff's cap), plus up to 1 s of jitter so gateways do not all
            # return in the same instant.
            wait = min(exc.retry_after_s, self._cfg.backoff_max_s)
            delay = wait + self._rand() * min(1.0, wait / 10)
        self._retry_at = self._clock.monotonic() + delay
        st.next_retry_in_s = round(delay, 1)
        level = logging.ERROR if isinstance(exc, CloudRejected | BadAck) else logging.WARNING
        log.log(
            level,
            "sync: batch %s (%d..%d) not acknowledged (failure %d in a row): %s; retry in %.1f s",
            batch.batch_id,
            batch.first_seq,
            batch.last_seq,
            st.consecutive_failures,
            exc,
            delay,
        )
        message = str(exc)
        try:
            await self._store.save_sync_error(message, now_ms)
        except StoreUnavailable as store_exc:  # status still shows it (SyncStats)
            log.warning("sync: error not saved, storage unavailable: %s", store_exc.failure.reason)

    async def _record_skew(self) -> None:
        """Save the clock skew the last answer showed into the current clock epoch, so the
        readings of this epoch are judged by it even if they reach the cloud much later."""
        assert self._client is not None
        skew = self._client.last_skew_ms
        self.stats.clock_skew_ms = skew
        if skew is None or (
            self._saved_skew is not None and abs(skew - self._saved_skew) <= SKEW_RECORD_CHANGE_MS
        ):
            return
        boot = self._boot_id
        try:
            await self._store.set_epoch_skew(boot, skew)
        except StoreUnavailable as exc:  # measured again with the next answer, saved then
            log.warning("sync: clock skew not saved, storage unavailable: %s", exc.failure.reason)
            return
        self._saved_skew = skew

    async def _refresh_backlog(self) -> None:
        count, oldest = await self._store.sync_backlog(self._cursor[0])
        self.stats.backlog_readings = count
        self.stats.oldest_unsynced_at = oldest


async def _outcome_ignored(sending: asyncio.Task[BatchAck]) -> None:
    """A pipelined batch whose predecessor failed: whatever the cloud said, it is rebuilt and
    resent after that one (a stored copy is answered from the cloud's stored ack)."""
    try:
        await sending
    except CloudError as exc:
        log.debug("sync: pipelined batch not acknowledged after its predecessor failed: %s", exc)
