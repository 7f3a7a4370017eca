"""The cloud's background tasks, run for the lifetime of the app (FastAPI lifespan):
the monitoring loop, the notification worker and the readings' maintenance.

Started after the server is ready to accept work and stopped before the store closes. The
worker first recovers notifications a crash left mid-send, so a restart loses nothing pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from cloud.app.services import Services
from cloud.app.settings import NotifySettings
from cloud.monitoring.loop import MonitoringLoop
from cloud.notify.channels import ChannelType
from cloud.notify.outbox import RetryPolicy
from cloud.notify.senders import EmailSender, Sender, WebhookSender
from cloud.notify.worker import NotificationWorker
from cloud.storage.errors import StoreError
from cloud.storage.retention import maintain_readings

log = logging.getLogger("iotsphere.cloud")


class Background:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._webhook: WebhookSender | None = None
        self.worker: NotificationWorker | None = None
        self.monitor: MonitoringLoop | None = None

    async def start(self) -> None:
        s = self._services
        if s.notify is None or s.monitoring is None or s.monitor_metrics is None:
            log.warning("store has no monitoring/notification tables: background tasks off")
            return
        cfg = s.settings.notify
        self._webhook = WebhookSender(s.clock, timeout_s=cfg.webhook_timeout_s)
        senders: dict[ChannelType, Sender] = {
            ChannelType.WEBHOOK: self._webhook,
            ChannelType.EMAIL: EmailSender(cfg.smtp, s.clock),
        }
        self.worker = NotificationWorker(
            s.notify.outbox,
            senders,
            s.notify.get_channel_sync,
            s.clock,
            policy=RetryPolicy(cfg.max_attempts, cfg.base_delay_s, cfg.max_delay_s),
            batch_size=BATCH,
            concurrency=cfg.concurrency,
            poll_interval_s=cfg.poll_interval_s,
            lease_s=lease_s(cfg),
        )
        self.monitor = MonitoringLoop(
            s.monitoring,
            s.clock,
            s.settings.monitor,
            s.monitor_metrics,
            on_notifications=self.worker.wake,
        )
        try:
            await self.worker.recover()
        except Exception:
            # The store may be down at start; run() recovers again before its first batch.
            log.exception("notification recovery at start failed; the worker retries it")
        s.hooks.wake_monitor = self.monitor.wake
        s.hooks.notify_stats = self.worker.stats.to_prometheus
        self._tasks = [
            asyncio.create_task(self.worker.run(self._stop), name="notification-worker"),
            asyncio.create_task(self.monitor.run(self._stop), name="monitoring-loop"),
            asyncio.create_task(self._maintain(), name="readings-maintenance"),
        ]

    async def _maintain(self) -> None:
        """Partitions ahead and retention (cloud.storage.retention), now and every
        MAINTAIN_EVERY_S; a failure (the store down) is logged and tried at the next round."""
        s = self._services
        db = getattr(s.store, "db", None)
        if db is None:
            return
        while not self._stop.is_set():
            try:
                done = await maintain_readings(db, s.clock.now_ms(), s.settings.retention_days)
                if done.created or done.dropped or done.deleted:
                    log.info("readings maintenance: %s", done)
            except StoreError as exc:
                log.warning("readings maintenance failed, tried again later: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), MAINTAIN_EVERY_S)

    async def stop(self) -> None:
        self._stop.set()
        s = self._services
        s.hooks.wake_monitor = _noop
        for task in self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(task), 10)
            except TimeoutError:
                log.warning("%s did not stop in time; cancelling it", task.get_name())
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except Exception:
                log.exception("%s ended with an error", task.get_name())
        self._tasks = []
        if self._webhook is not None:
            await self._webhook.aclose()


def _noop() -> None:
    return None


BATCH = 50  # notifications claimed at once
MAINTAIN_EVERY_S = 3600.0


def lease_s(cfg: NotifySettings) -> float:
    """How long a claimed batch stays this worker's (PostgreSQL: then another worker may send
    it again): twice the worst case of sending it, in rounds of `concurrency` sends that each
    end by their timeout, and at least a minute."""
    rounds = math.ceil(BATCH / cfg.concurrency)
    return max(60.0, 2 * rounds * max(cfg.webhook_timeout_s, cfg.smtp.timeout_s))
