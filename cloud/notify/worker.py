"""The delivery loop: claim due outbox rows, send them concurrently (bounded), record outcomes.

Every failure is logged with the notification, channel, attempt and reason, then either
scheduled again (backoff with jitter) or marked failed; nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from cloud.notify.channels import Channel, ChannelType
from cloud.notify.format import Notification
from cloud.notify.outbox import (
    OutboxEvent,
    OutboxStore,
    RetryPolicy,
    after_failure,
    backoff_delay_s,
)
from cloud.notify.senders import DeliveryError, Sender
from common.clock import Clock

log = logging.getLogger("iotsphere.cloud.notify")

# get_channel(org_id, channel_id): the channel as it is now, or None once deleted. Synchronous
# (a store lookup); the worker runs it in a thread.
ChannelLookup = Callable[[str, str], Channel | None]


@dataclass(slots=True)
class NotifyStats:
    """Counters since start, for /metrics (monotonic: render as Prometheus counters)."""

    attempts: int = 0  # send attempts made
    sent: int = 0  # delivered
    retried: int = 0  # failed attempts scheduled again
    failed: int = 0  # given up (permanent error or max attempts)
    loop_errors: int = 0  # worker iterations that hit an unexpected error (e.g. database)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)

    def to_prometheus(self, prefix: str = "iotsphere_notifications") -> str:
        lines = []
        for name, value in self.snapshot().items():
            metric = f"{prefix}_{name}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        return "\n".join(lines) + "\n"


class NotificationWorker:
    """Delivers due outbox rows. One per process; on PostgreSQL several processes share the
    outbox (see outbox.py on claims and leases).

    Wiring: `senders` maps channel type -> Sender; `get_channel(org_id, channel_id)` returns the
    current channel or None (deleted: the notification fails, it is not retried). `run(stop)`
    first recovers rows a crash left in `sending`; if the task is cancelled instead of stopped,
    the sends in flight are recovered and repeated on the next start (at-least-once). On a
    shared outbox every iteration also recovers rows whose lease expired (another worker died
    mid-send). `lease_s` must exceed the time a claimed batch can take to send.
    """

    def __init__(  # noqa: PLR0913 - its collaborators are injected, each a test seam
        self,
        store: OutboxStore,
        senders: Mapping[ChannelType, Sender],
        get_channel: ChannelLookup,
        clock: Clock,
        *,
        policy: RetryPolicy | None = None,
        rand: Callable[[], float] = random.random,
        batch_size: int = 50,
        concurrency: int = 8,
        poll_interval_s: float = 1.0,
        lease_s: float = 300.0,
    ) -> None:
        if batch_size < 1 or concurrency < 1 or poll_interval_s <= 0 or lease_s <= 0:
            raise ValueError("batch_size, concurrency, poll_interval_s, lease_s must be positive")
        self._store = store
        self._senders = dict(senders)
        self._get_channel = get_channel
        self._clock = clock
        self.policy = policy or RetryPolicy()
        self._rand = rand
        self._batch_size = batch_size
        self._concurrency = asyncio.Semaphore(concurrency)
        self._poll_interval_s = poll_interval_s
        self._lease_ms = int(lease_s * 1000)
        self._wake = asyncio.Event()
        self._recovered = False
        self.stats = NotifyStats()

    def wake(self) -> None:
        """Call after enqueueing, so a new notification goes out without waiting for the poll."""
        self._wake.set()

    async def recover(self) -> int:
        """Put rows a crash left in `sending` back in line (run() does it: once per worker, or
        every iteration on a shared outbox, where only expired leases are taken)."""
        n = await asyncio.to_thread(
            self._store.recover_interrupted, self._clock.now_ms(), self.policy.max_attempts
        )
        self._recovered = True  # only once it worked: a failure is retried next iteration
        if n:
            log.warning("recovered %d notification(s) interrupted mid-send; resending", n)
        return n

    async def run_once(self) -> int:
        """Claim one batch of due notifications and attempt each; returns how many."""
        if not self._recovered or self._store.shared:
            await self.recover()
        batch = await asyncio.to_thread(
            self._store.claim_due, self._clock.now_ms(), self._batch_size, self._lease_ms
        )
        # Let every attempt finish (and record its outcome) before reporting any error, so no
        # send is left running unobserved behind a failed sibling.
        results = await asyncio.gather(*(self._attempt(n) for n in batch), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; the batch in flight is finished, not abandoned. The
        recovery of interrupted sends runs in the first iteration that reaches the database
        (a database down at start is retried like any other failure, not the end of delivery)."""
        while not stop.is_set():
            try:
                n = await self.run_once()
            except Exception:
                # A database hiccup must not end delivery for good: log it, count it, wait a
                # poll interval and try again (the rows are durable, nothing is lost).
                self.stats.loop_errors += 1
                log.exception("notification worker iteration failed; retrying after the poll")
                n = 0
            if n >= self._batch_size:
                continue  # more may be due right now
            self._wake.clear()
            waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())}
            _, pending = await asyncio.wait(
                waiters, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _attempt(self, n: Notification) -> None:
        async with self._concurrency:
            self.stats.attempts += 1
            try:
                channel = await asyncio.to_thread(self._get_channel, n.org_id, n.channel_id)
                if channel is None:
                    raise DeliveryError("channel no longer exists", retryable=False)
                sender = self._senders.get(channel.type)
                if sender is None:
                    raise DeliveryError(f"no sender configured for {channel.type}", retryable=False)
                await sender.send(channel, n)
            except DeliveryError as exc:
                await self._failed(n, exc)
                return
            except Exception as exc:
                # A bug in a sender or lookup: keep the traceback, and treat it as retryable so
                # a fixed deployment still delivers; max_attempts bounds the repetition.
                log.exception("notification %s: unexpected error while sending", n.id)
                await self._failed(n, DeliveryError(f"internal error: {exc!r}", retryable=True))
                return
            await asyncio.to_thread(self._store.mark_sent, n.id, self._clock.now_ms())
            self.stats.sent += 1
            log.info(
                "notification %s (%s) to channel %s delivered on attempt %d",
                n.id,
                n.event.value,
                n.channel_id,
                n.attempt,
            )

    async def _failed(self, n: Notification, exc: DeliveryError) -> None:
        now = self._clock.now_ms()
        decision = after_failure(
            attempts=n.attempt, max_attempts=self.policy.max_attempts, retryable=exc.retryable
        )
        context = {
            "notification_id": n.id,
            "alert_id": n.alert_id,
            "channel_id": n.channel_id,
            "attempt": n.attempt,
            "retryable": exc.retryable,
            "error": exc.detail,
        }
        if decision is OutboxEvent.RETRY:
            delay = backoff_delay_s(n.attempt, self.policy, self._rand, exc.retry_after_s)
            next_at = now + int(delay * 1000)
            await asyncio.to_thread(self._store.mark_retry, n.id, now, next_at, exc.detail)
            self.stats.retried += 1
            log.warning(
                "notification %s to channel %s failed (attempt %d/%d): %s; retry in %.1fs",
                n.id,
                n.channel_id,
                n.attempt,
                self.policy.max_attempts,
                exc.detail,
                delay,
                extra={"notify": {**context, "next_attempt_at": next_at}},
            )
        else:
            why = "permanent error" if not exc.retryable else "no attempts left"
            await asyncio.to_thread(self._store.mark_failed, n.id, now, exc.detail)
            self.stats.failed += 1
            log.error(
                "notification %s to channel %s failed for good (%s, attempt %d/%d): %s",
                n.id,
                n.channel_id,
                why,
                n.attempt,
                self.policy.max_attempts,
                exc.detail,
                extra={"notify": context},
            )
