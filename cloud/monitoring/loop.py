"""The monitoring loop (seed "Model Monitoring Alert Flow", Alert Triggering):

check for rule violations -> query active rules -> query latest metrics -> evaluate (the
shared common.rules engine) -> create alert event -> send notification (outbox, then wake the
NotificationWorker).

Per org and pass, in one transaction (MonitoringStore.run_pass): the engines are rebuilt from
the stored snapshot and the current rules, fed what arrived after the cursors, ticked
(for_seconds and no-data rules), and everything the pass decided (alerts, notifications,
snapshot, cursors) commits in one transaction. A crash before the commit repeats the pass from
the old cursors and snapshot, so it raises the same episodes once; a crash after it has nothing
to repeat. With N workers (PostgreSQL) each runs this loop; an org's pass holds its advisory
lock, and a worker finding it held skips the org and looks again shortly, so passes of one org
never overlap (docs/decisions/cloud-work-once.md).

Two engines per org: one judges model/job metrics (subjects are sources such as
"model:churn-v3"), the other device readings (subjects are device ids), so an alert knows
whether its subject is a device or a source even for a rule without scope."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cloud.app.metrics import Counter, Registry
from cloud.app.settings import MonitorSettings
from cloud.monitoring.records import (
    KINDS,
    Clear,
    Episode,
    MonitorSnapshot,
    Observations,
    PassOutcome,
    Planned,
    Raise,
    SubjectKind,
    encode_engines,
)
from cloud.monitoring.store import MonitoringStore
from common.clock import Clock
from common.rules import Rule, RuleEngine

log = logging.getLogger("iotsphere.cloud.monitor")
Fetch = Callable[[frozenset[str], frozenset[str]], Observations]
BUSY_RETRY_S = 0.2  # an org another worker was evaluating: look again this soon


def rules_for(kind: SubjectKind, rules: tuple[Rule, ...]) -> list[Rule]:
    """Rules that can apply to subjects of this kind (unscoped rules apply to both)."""
    if kind == "source":
        return [r for r in rules if r.device_id is None and r.device_type is None]
    return [r for r in rules if r.source is None]


@dataclass(frozen=True, slots=True)
class MonitorMetrics:
    passes: Counter
    errors: Counter
    observations: Counter
    raised: Counter
    resolved: Counter

    @classmethod
    def on(cls, registry: Registry) -> MonitorMetrics:
        return cls(
            passes=registry.counter("iotsphere_monitor_passes_total", "monitoring loop passes"),
            errors=registry.counter(
                "iotsphere_monitor_errors_total", "org evaluations that failed (retried)"
            ),
            observations=registry.counter(
                "iotsphere_monitor_observations_total",
                "metrics and readings judged by the cloud's rules, by kind",
                ("kind",),
            ),
            raised=registry.counter("iotsphere_alerts_raised_total", "alerts raised by the cloud"),
            resolved=registry.counter(
                "iotsphere_alerts_resolved_total", "alerts resolved by the cloud (episode ended)"
            ),
        )


class MonitoringLoop:
    def __init__(
        self,
        store: MonitoringStore,
        clock: Clock,
        settings: MonitorSettings,
        metrics: MonitorMetrics,
        *,
        on_notifications: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._on_notifications = on_notifications
        self._wake = asyncio.Event()
        self._busy = False  # the last pass skipped an org another worker held

    def wake(self) -> None:
        """Evaluate now (e.g. right after metrics were posted) instead of at the next period."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            more = await self.run_once()
            if more:
                continue
            waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(self._wake.wait())}
            # An org skipped as busy may have input the other worker's pass did not read.
            timeout = BUSY_RETRY_S if self._busy else self._settings.interval_s
            _, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_once(self) -> bool:
        """One pass over every monitored org; True when some org has more input waiting."""
        self._metrics.passes.inc()
        self._busy = False
        try:
            orgs = await self._store.monitored_orgs()
        except Exception:
            self._metrics.errors.inc()
            log.exception("monitoring pass: cannot list orgs; trying again next period")
            return False
        more = False
        for org_id in orgs:
            try:
                more = await self.evaluate_org(org_id) or more
            except Exception:
                # One org's failure (database hiccup, bad row) must not stop the others; its
                # cursors did not move, so the next pass judges the same input again.
                self._metrics.errors.inc()
                log.exception("monitoring pass for org %s failed; retrying next pass", org_id)
        return more

    async def evaluate_org(self, org_id: str) -> bool:
        """One pass over one org (one transaction, cloud.monitoring.store.run_pass); True when
        more input is waiting. An org another worker is evaluating is left to it: the loop
        looks again shortly (busy)."""
        result = await self._store.run_pass(org_id, self._plan, self._settings.batch)
        if result.busy:
            self._busy = True
            return False
        planned, done = result.planned, result.committed
        if planned is None:
            return False
        if done is None or planned.outcome is None:
            return planned.more
        self._metrics.raised.inc(amount=done.raised)
        self._metrics.resolved.inc(amount=done.resolved)
        for r in planned.outcome.raises:
            log.info(
                "alert raised: org=%s rule=%s %s=%s %s=%s",
                org_id,
                r.rule.id,
                r.kind,
                r.transition.subject,
                r.transition.metric,
                r.transition.value,
            )
        if done.notifications:
            self._on_notifications()
        return planned.more

    # one monitoring pass reads best in order: rules, observations, evaluate, outcome:
    def _plan(self, snap: MonitorSnapshot, fetch: Fetch) -> Planned:
        """Decide a pass (synchronous: it runs inside the pass's transaction)."""
        rules = {kind: rules_for(kind, snap.rules) for kind in KINDS}
        engines = {kind: RuleEngine(rules[kind], snap.engines[kind]) for kind in KINDS}
        watched = {kind: frozenset(r.metric for r in rules[kind] if r.enabled) for kind in KINDS}
        obs = fetch(watched["source"], watched["device"])
        now = self._clock.now_ms()
        by_id = {r.id: r for r in snap.rules}
        open_eps: dict[tuple[str, SubjectKind, str], list[Episode]] = {}
        for ep in snap.episodes:
            open_eps.setdefault((ep.rule_id, ep.kind, ep.subject), []).append(ep)

        outcome = PassOutcome(
            metrics_cursor=obs.metrics_cursor, readings_cursor=obs.readings_cursor
        )
        active: set[tuple[str, SubjectKind, str]] = set()
        for kind in KINDS:
            engine = engines[kind]
            batch = obs.by_kind[kind]
            self._metrics.observations.inc(kind, amount=len(batch))
            for t in [*engine.observe(batch, now), *engine.tick(now)]:
                key = (t.rule_id, kind, t.subject)
                if t.kind == "raised":
                    outcome.raises.append(Raise(by_id[t.rule_id], kind, t))
                else:
                    for ep in open_eps.pop(key, []):
                        outcome.clears.append(Clear(ep, t.at_ms, t.value, "cleared"))
            active.update((s.rule_id, kind, s.subject) for s in engine.state().active)
        # Episodes whose track is gone (rule deleted, disabled or changed meaning): end them.
        for key, eps in open_eps.items():
            if key not in active:
                for ep in eps:
                    outcome.clears.append(Clear(ep, now, None, "rule changed or removed"))
        outcome.state_json = encode_engines({k: engines[k].state() for k in KINDS})

        unchanged = (
            not outcome.raises
            and not outcome.clears
            and outcome.state_json == snap.state_json
            and obs.metrics_cursor == snap.metrics_cursor
            and obs.readings_cursor == snap.readings_cursor
        )
        return Planned(None if unchanged else outcome, obs.more, now, by_id)
