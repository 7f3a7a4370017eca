"""Storage of the monitoring area on the cloud's database (either engine): MonitoringStore. What it
holds itself is the monitoring loop's side: which orgs are monitored, and run_pass, the one
transaction in which a pass loads its snapshot, reads the observations it judges and writes its
alerts, their notifications, the engine state and the cursors, so a restart neither loses nor
repeats an alert, and (PostgreSQL, N workers) an org's passes never overlap. Rules, metrics and
API keys are query groups in their own modules (cloud.monitoring.rule_queries, metric_queries,
api_key_queries); the tables are in cloud.monitoring.schema and the values in
cloud.monitoring.records."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from cloud.monitoring.api_key_queries import ApiKeyQueries
from cloud.monitoring.metric_queries import MetricQueries
from cloud.monitoring.records import (
    Clear,
    Committed,
    Episode,
    MonitorSnapshot,
    Observations,
    PassOutcome,
    PassResult,
    Planned,
    SubjectKind,
    decode_engines,
)
from cloud.monitoring.rule_queries import RuleQueries
from cloud.monitoring.schema import MONITORING_MIGRATIONS
from cloud.notify.format import NotificationEvent
from cloud.notify.outbox import enqueue_alert_on
from cloud.storage.alert_queries import add_event, insert_alert, select_alert
from cloud.storage.interface import NewAlert
from cloud.storage.sql import SqlConn, SqlDatabase, first
from cloud.storage.value_columns import join_value
from common.alerts import OPEN_STATES, AlertEvent, next_state
from common.rules import Observation, Rule

# pg_try_advisory_xact_lock(MONITOR_LOCK, hashtext(org)): one pass of an org at a time.
MONITOR_LOCK = 0x4D4F4E  # "MON"; the two-key space, apart from single-key locks
# plan(snapshot, fetch): fetch(source metrics, device metrics) reads the observations.
PassPlan = Callable[
    [MonitorSnapshot, Callable[[frozenset[str], frozenset[str]], Observations]], Planned
]


# PostgreSQL: the readings cursor stays this far behind the newest receive time seen, so a
# batch stamped earlier but committed later (another worker's transaction, another host's
# clock) is still read. Re-reading is harmless: the engine skips readings it has judged.
READINGS_GRACE_MS = 5_000


class MonitoringStore(RuleQueries, MetricQueries, ApiKeyQueries):
    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        # DuckDB: one process, one writer at a time: a batch is visible once stamped.
        self.readings_grace_ms = READINGS_GRACE_MS if db.dialect == "postgresql" else 0
        db.migrate("monitoring", MONITORING_MIGRATIONS)

    # -- the monitoring loop --------------------------------------------------------------

    async def monitored_orgs(self) -> list[str]:
        """Orgs that have (or had) rules: only they have a monitor_state row."""
        rows = await self.db.run(
            lambda c: c.execute("SELECT org_id FROM monitor_state ORDER BY org_id").fetchall()
        )
        return [r[0] for r in rows]

    async def run_pass(self, org_id: str, plan: PassPlan, limit: int) -> PassResult:
        """One monitoring pass of an org in ONE transaction: load the snapshot, let `plan` read
        the observations after the cursors (up to `limit` metrics) and decide, then write the
        alerts, their notifications, the engine state and the cursors (_commit).

        On PostgreSQL N workers run the loop: the pass first takes the org's transaction-scoped
        advisory lock, without waiting. A worker that does not get it returns busy at once;
        the holder's pass commits (or rolls back) before the lock is free, so the next pass
        starts from its snapshot and cursors: no pass runs twice at once, none is lost."""

        def go(c: SqlConn) -> PassResult:
            if self.db.dialect == "postgresql":
                got = first(
                    c.execute(
                        f"SELECT pg_try_advisory_xact_lock({MONITOR_LOCK}, hashtext(?))",
                        [org_id],
                    ).fetchall()
                )[0]
                if not got:
                    return PassResult(busy=True)
            snap = self._load(c, org_id)
            if snap is None:
                return PassResult()
            planned = plan(snap, lambda src, dev: self._observe(c, org_id, snap, src, dev, limit))
            if planned.outcome is None:
                return PassResult(planned=planned)
            done = self._commit(c, org_id, planned.outcome, planned.now_ms, planned.rules)
            return PassResult(planned=planned, committed=done)

        return await self.db.run(self.db.transaction(go))

    def _load(self, c: SqlConn, org_id: str) -> MonitorSnapshot | None:
        row = first(
            c.execute(
                "SELECT engines, metrics_cursor, readings_cursor FROM monitor_state"
                " WHERE org_id = ?",
                [org_id],
            ).fetchall()
        )
        if row is None:
            return None
        episodes = c.execute(
            "SELECT alert_id, rule_id, kind, subject FROM monitor_episodes WHERE org_id = ?"
            " ORDER BY alert_id",
            [org_id],
        ).fetchall()
        return MonitorSnapshot(
            rules=tuple(self._rules(c, org_id)),
            engines=decode_engines(row[0]),
            metrics_cursor=int(row[1]),
            readings_cursor=int(row[2]),
            episodes=tuple(Episode(*e) for e in episodes),
            state_json=row[0],
        )

    def _observe(
        self,
        c: SqlConn,
        org_id: str,
        snapshot: MonitorSnapshot,
        source_metrics: frozenset[str],
        device_metrics: frozenset[str],
        limit: int,
    ) -> Observations:
        """Metrics after the metrics cursor (up to `limit`) and device readings received at or
        after the readings cursor, restricted to the metrics some rule watches."""
        by_kind: dict[SubjectKind, list[Observation]] = {"device": [], "source": []}
        m_cursor, r_cursor, more = snapshot.metrics_cursor, snapshot.readings_cursor, False
        rows = c.execute(
            "SELECT seq, source, metric, ts, value_num, value_bool FROM metrics"
            " WHERE org_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            [org_id, m_cursor, limit],
        ).fetchall()
        if rows:
            m_cursor, more = int(rows[-1][0]), len(rows) >= limit
        for _seq, source, metric, ts, num, flag in rows:
            value = join_value(num, flag)
            if metric in source_metrics and value is not None:
                by_kind["source"].append(Observation(source, metric, int(ts), value))
        if device_metrics:
            wanted = sorted(device_metrics)
            rows = c.execute(
                "SELECT r.device_id, r.metric, r.ts, r.value_num, r.value_bool, r.value_str,"
                " r.cloud_received_at, d.type FROM readings r LEFT JOIN devices d"
                " ON d.org_id = r.org_id AND d.device_id = r.device_id"
                " WHERE r.org_id = ? AND r.cloud_received_at >= ?"
                f" AND r.metric IN ({', '.join('?' for _ in wanted)})",
                [org_id, r_cursor, *wanted],
            ).fetchall()
            for device, metric, ts, num, flag, text, received, dtype in rows:
                r_cursor = max(r_cursor, int(received))
                value = join_value(num, flag, text)
                if value is not None:
                    by_kind["device"].append(Observation(device, metric, int(ts), value, dtype))
            r_cursor = max(snapshot.readings_cursor, r_cursor - self.readings_grace_ms)
        return Observations(by_kind, m_cursor, r_cursor, more)

    def _commit(
        self, c: SqlConn, org_id: str, outcome: PassOutcome, now_ms: int, extra: dict[str, Rule]
    ) -> Committed:
        """Inside the pass's transaction: alerts raised/resolved, their notifications, the
        engine state and cursors. `extra` maps rule id -> Rule for the raises (names and
        thresholds in the notification)."""
        raised = resolved = queued = 0
        for r in outcome.raises:
            t = r.transition
            alert_id = uuid.uuid4().hex
            insert_alert(
                c,
                org_id,
                alert_id,
                NewAlert(
                    rule_id=t.rule_id,
                    severity=t.severity,
                    metric=t.metric,
                    value=t.value,
                    started_at=t.at_ms,
                    device_id=t.subject if r.kind == "device" else None,
                    source=t.subject if r.kind == "source" else None,
                    rule=r.rule.to_dict(),  # why: the rule as it is now, kept with the alert
                ),
            )
            c.execute(
                "INSERT INTO monitor_episodes VALUES (?, ?, ?, ?, ?)",
                [alert_id, org_id, t.rule_id, r.kind, t.subject],
            )
            raised += 1
            if r.rule.channels:
                queued += len(
                    enqueue_alert_on(
                        c,
                        org_id=org_id,
                        alert=_snapshot(c, org_id, alert_id, r.rule),
                        channel_ids=r.rule.channels,
                        event=NotificationEvent.RAISED,
                        now_ms=now_ms,
                    )
                )
        for cl in outcome.clears:
            resolved_now, n = _resolve(c, org_id, cl, extra.get(cl.episode.rule_id), now_ms)
            resolved += resolved_now
            queued += n
        c.execute(
            "UPDATE monitor_state SET engines = ?, metrics_cursor = ?, readings_cursor = ?,"
            " updated_at = ? WHERE org_id = ?",
            [outcome.state_json, outcome.metrics_cursor, outcome.readings_cursor, now_ms, org_id],
        )
        return Committed(raised, resolved, queued)


def _snapshot(c: SqlConn, org_id: str, alert_id: str, rule: Rule | None) -> dict[str, Any]:
    """The alert as the notification shows it, plus what the rule said."""
    alert = select_alert(c, org_id, alert_id)
    assert alert is not None
    doc = alert.to_dict()
    if rule is not None:
        doc.update(
            rule_name=rule.name,
            operator=rule.operator,
            threshold=rule.threshold,
            for_seconds=rule.for_seconds,
        )
    return doc


def _resolve(
    c: SqlConn, org_id: str, clear: Clear, rule: Rule | None, now_ms: int
) -> tuple[int, int]:
    """End an episode: resolve its alert unless a user already did, tell the channels that
    were told about it. Returns (alerts resolved, notifications queued)."""
    ep = clear.episode
    c.execute("DELETE FROM monitor_episodes WHERE alert_id = ?", [ep.alert_id])
    alert = select_alert(c, org_id, ep.alert_id)
    if alert is None or alert.state not in OPEN_STATES:
        return 0, 0
    state = next_state(alert.state, AlertEvent.RESOLVE)
    c.execute(
        "UPDATE alerts SET state = ?, resolved_at = ?, resolved_by = 'rule', updated_at = ?"
        " WHERE org_id = ? AND id = ?",
        [state.value, clear.at_ms, now_ms, org_id, ep.alert_id],
    )
    add_event(c, org_id, ep.alert_id, clear.at_ms, state.value, "rule", clear.reason)
    told = [
        r[0]
        for r in c.execute(
            "SELECT DISTINCT channel_id FROM notifications WHERE alert_id = ? AND event = ?"
            " ORDER BY channel_id",
            [ep.alert_id, NotificationEvent.RAISED.value],
        ).fetchall()
    ]
    if not told:
        return 1, 0
    doc = _snapshot(c, org_id, ep.alert_id, rule)
    doc["resolution"] = clear.reason
    ids = enqueue_alert_on(
        c,
        org_id=org_id,
        alert=doc,
        channel_ids=told,
        event=NotificationEvent.RESOLVED,
        now_ms=now_ms,
    )
    return 1, len(ids)
