"""Storage of the monitoring area on the cloud's DuckDB Database ("monitoring" migrations).

- alert_rules: one row per rule, org-scoped, versioned. Every create/update/delete bumps the
  org's rule version (rule_versions) and stamps the row with it; deletes stay as tombstones, so
  `rule_changes_since(org, N)` tells a gateway exactly what changed after version N.
- metrics: values from ML models and jobs, once per (org, source, metric, ts); `seq` is their
  arrival order, the monitoring loop's cursor.
- monitor_state: per org, the rule engines' snapshot and the loop's cursors; monitor_episodes:
  the open episode -> alert mapping. Both are written in the same transaction as the alerts
  and notifications a pass creates, so a restart neither loses nor repeats an alert.
- api_keys: keys for ML jobs posting metrics; only a SHA-256 digest is stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import duckdb
import pyarrow as pa

from cloud.db import Database, Migration, first
from cloud.monitoring.ingest import MetricPoint
from cloud.notify.format import NotificationEvent
from cloud.notify.outbox import enqueue_alert_on
from cloud.store import NewAlert
from cloud.store_duckdb_alerts import insert_alert, select_alert
from common.alerts import OPEN_STATES, AlertEvent, next_state
from common.model import Value
from common.rules import EngineState, Observation, Rule, Transition, parse_rule

SubjectKind = Literal["device", "source"]
KINDS: tuple[SubjectKind, ...] = ("device", "source")

MONITORING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE rule_versions (
                org_id VARCHAR PRIMARY KEY, version BIGINT NOT NULL)""",
            """CREATE TABLE alert_rules (
                org_id VARCHAR NOT NULL, id VARCHAR NOT NULL, version BIGINT NOT NULL,
                deleted BOOLEAN NOT NULL, doc VARCHAR NOT NULL, created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (org_id, id))""",
            "CREATE SEQUENCE metric_seq START 1",
            """CREATE TABLE metrics (
                seq BIGINT NOT NULL DEFAULT nextval('metric_seq'), org_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL, metric VARCHAR NOT NULL, ts BIGINT NOT NULL,
                value_num DOUBLE, value_bool BOOLEAN, received_at BIGINT NOT NULL,
                PRIMARY KEY (org_id, source, metric, ts))""",
            """CREATE TABLE monitor_state (
                org_id VARCHAR PRIMARY KEY, engines VARCHAR NOT NULL,
                metrics_cursor BIGINT NOT NULL, readings_cursor BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)""",
            # No key on (org, rule, kind, subject): an episode may end and a new one start in
            # one pass, and DuckDB refuses delete+insert of one key inside a transaction.
            """CREATE TABLE monitor_episodes (
                alert_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, rule_id VARCHAR NOT NULL,
                kind VARCHAR NOT NULL, subject VARCHAR NOT NULL)""",
            """CREATE TABLE api_keys (
                id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
                key_hash VARCHAR NOT NULL UNIQUE, created_by VARCHAR NOT NULL,
                created_at BIGINT NOT NULL, revoked_at BIGINT)""",
        ),
    ),
)

_METRICS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("metric", pa.string()),
        ("ts", pa.int64()),
        ("value_num", pa.float64()),
        ("value_bool", pa.bool_()),
    ]
)


@dataclass(frozen=True, slots=True)
class RuleChanges:
    """What changed in an org's rules after a version: current rules and tombstones."""

    version: int  # the org's rule version now (pass it next time)
    rules: tuple[Rule, ...]  # created or updated after the asked version
    deleted: tuple[tuple[str, int], ...]  # (rule id, version of the delete)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rules": [r.to_dict() for r in self.rules],
            "deleted": [{"id": rid, "version": v} for rid, v in self.deleted],
        }


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    org_id: str
    name: str
    created_by: str
    created_at: int
    revoked_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True, slots=True)
class Episode:
    alert_id: str
    rule_id: str
    kind: SubjectKind
    subject: str


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    """What one pass starts from: rules, engine snapshots, cursors, open episodes."""

    rules: tuple[Rule, ...]
    engines: dict[SubjectKind, EngineState]
    metrics_cursor: int  # last metrics.seq judged
    readings_cursor: int  # cloud_received_at of the newest reading judged (re-read: >=)
    episodes: tuple[Episode, ...]
    state_json: str  # as stored, to skip writing an unchanged snapshot


@dataclass(frozen=True, slots=True)
class Observations:
    by_kind: dict[SubjectKind, list[Observation]]
    metrics_cursor: int
    readings_cursor: int
    more: bool  # the metrics batch was full: run again at once


@dataclass(frozen=True, slots=True)
class Raise:
    rule: Rule
    kind: SubjectKind
    transition: Transition


@dataclass(frozen=True, slots=True)
class Clear:
    episode: Episode
    at_ms: int
    value: Value | None
    reason: str  # "cleared" (back to normal) or why the episode ended otherwise


@dataclass(slots=True)
class PassOutcome:
    raises: list[Raise] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    state_json: str = ""
    metrics_cursor: int = 0
    readings_cursor: int = 0


@dataclass(frozen=True, slots=True)
class Committed:
    raised: int
    resolved: int
    notifications: int


@dataclass(frozen=True, slots=True)
class MetricSeries:
    source: str
    metric: str
    count: int
    last_ts: int
    last_value: Value | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "metric": self.metric,
            "count": self.count,
            "last_ts": self.last_ts,
            "last_value": self.last_value,
        }


def _split(value: MetricPoint) -> tuple[float | None, bool | None]:
    if isinstance(value.value, bool):
        return None, value.value
    return float(value.value), None


def _join(num: float | None, flag: bool | None, text: str | None = None) -> Value | None:
    if flag is not None:
        return bool(flag)
    if num is not None:
        return float(num)
    return text


def _rule(row: tuple[Any, ...]) -> Rule:
    """(id, version, doc) -> Rule. The doc was validated when stored."""
    return parse_rule(json.loads(row[2]), id=row[0], version=int(row[1]))


def encode_engines(engines: dict[SubjectKind, EngineState]) -> str:
    return json.dumps({k: engines[k].to_dict() for k in KINDS}, sort_keys=True)


def _decode_engines(text: str) -> dict[SubjectKind, EngineState]:
    raw = json.loads(text)
    return {k: EngineState.from_dict(raw.get(k, {"format": 1, "tracks": []})) for k in KINDS}


class DuckMonitoringStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("monitoring", MONITORING_MIGRATIONS)

    # -- rules ----------------------------------------------------------------------------

    @staticmethod
    def _bump(c: duckdb.DuckDBPyConnection, org_id: str, now_ms: int) -> int:
        row = first(
            c.execute("SELECT version FROM rule_versions WHERE org_id = ?", [org_id]).fetchall()
        )
        version = (int(row[0]) if row else 0) + 1
        c.execute(
            "INSERT INTO rule_versions VALUES (?, ?) ON CONFLICT (org_id)"
            " DO UPDATE SET version = excluded.version",
            [org_id, version],
        )
        # The loop judges only what arrives once an org has rules: start its cursors now.
        max_seq = first(c.execute("SELECT coalesce(max(seq), 0) FROM metrics").fetchall())
        c.execute(
            "INSERT INTO monitor_state VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id) DO NOTHING",
            [org_id, encode_engines(_empty_engines()), int(max_seq[0]), now_ms, now_ms],
        )
        return version

    async def create_rule(self, org_id: str, rule: Rule, now_ms: int) -> Rule:
        """Store a validated rule under a new org version; returns it with that version."""

        def go(c: duckdb.DuckDBPyConnection) -> Rule:
            stored = replace(rule, version=self._bump(c, org_id, now_ms))
            c.execute(
                "INSERT INTO alert_rules VALUES (?, ?, ?, false, ?, ?, ?)",
                [org_id, stored.id, stored.version, json.dumps(stored.to_dict()), now_ms, now_ms],
            )
            return stored

        return await self.db.run(self.db.transaction(go))

    async def update_rule(self, org_id: str, rule: Rule, now_ms: int) -> Rule | None:
        """Replace a live rule (None when it does not exist or was deleted)."""

        def go(c: duckdb.DuckDBPyConnection) -> Rule | None:
            if self._live(c, org_id, rule.id) is None:
                return None
            stored = replace(rule, version=self._bump(c, org_id, now_ms))
            c.execute(
                "UPDATE alert_rules SET version = ?, doc = ?, updated_at = ?"
                " WHERE org_id = ? AND id = ?",
                [stored.version, json.dumps(stored.to_dict()), now_ms, org_id, rule.id],
            )
            return stored

        return await self.db.run(self.db.transaction(go))

    async def delete_rule(self, org_id: str, rule_id: str, now_ms: int) -> bool:
        """Tombstone the rule (kept for rule_changes_since); False when there was none."""

        def go(c: duckdb.DuckDBPyConnection) -> bool:
            if self._live(c, org_id, rule_id) is None:
                return False
            version = self._bump(c, org_id, now_ms)
            c.execute(
                "UPDATE alert_rules SET version = ?, deleted = true, updated_at = ?"
                " WHERE org_id = ? AND id = ?",
                [version, now_ms, org_id, rule_id],
            )
            return True

        return await self.db.run(self.db.transaction(go))

    @staticmethod
    def _live(c: duckdb.DuckDBPyConnection, org_id: str, rule_id: str) -> Rule | None:
        row = first(
            c.execute(
                "SELECT id, version, doc FROM alert_rules"
                " WHERE org_id = ? AND id = ? AND NOT deleted",
                [org_id, rule_id],
            ).fetchall()
        )
        return _rule(row) if row else None

    async def get_rule(self, org_id: str, rule_id: str) -> Rule | None:
        return await self.db.run(lambda c: self._live(c, org_id, rule_id))

    async def list_rules(self, org_id: str) -> list[Rule]:
        return await self.db.run(lambda c: self._rules(c, org_id))

    @staticmethod
    def _rules(c: duckdb.DuckDBPyConnection, org_id: str) -> list[Rule]:
        rows = c.execute(
            "SELECT id, version, doc FROM alert_rules WHERE org_id = ? AND NOT deleted"
            " ORDER BY created_at, id",
            [org_id],
        ).fetchall()
        return [_rule(r) for r in rows]

    async def rule_changes_since(self, org_id: str, version: int) -> RuleChanges:
        def go(c: duckdb.DuckDBPyConnection) -> RuleChanges:
            row = first(
                c.execute("SELECT version FROM rule_versions WHERE org_id = ?", [org_id]).fetchall()
            )
            rows = c.execute(
                "SELECT id, version, doc, deleted FROM alert_rules"
                " WHERE org_id = ? AND version > ? ORDER BY version",
                [org_id, version],
            ).fetchall()
            return RuleChanges(
                version=int(row[0]) if row else 0,
                rules=tuple(_rule(r) for r in rows if not r[3]),
                deleted=tuple((r[0], int(r[1])) for r in rows if r[3]),
            )

        return await self.db.run(self.db.transaction(go))

    async def rules_using_channel(self, org_id: str, channel_id: str) -> list[str]:
        rules = await self.list_rules(org_id)
        return [r.id for r in rules if channel_id in r.channels]

    # -- metrics --------------------------------------------------------------------------

    async def insert_metrics(self, org_id: str, points: Sequence[MetricPoint], now_ms: int) -> int:
        """Store each (source, metric, ts) once; returns how many were new."""
        cols: dict[str, list[Any]] = {n: [] for n in _METRICS_SCHEMA.names}
        for p in points:
            num, flag = _split(p)
            cols["source"].append(p.source)
            cols["metric"].append(p.metric)
            cols["ts"].append(p.ts)
            cols["value_num"].append(num)
            cols["value_bool"].append(flag)
        batch = pa.table(cols, schema=_METRICS_SCHEMA)

        def go(c: duckdb.DuckDBPyConnection) -> int:
            c.register("incoming_metrics", batch)
            try:
                before = first(c.execute("SELECT count(*) FROM metrics").fetchall())[0]
                # first copy wins inside the request, the stored copy across requests
                c.execute(
                    "INSERT INTO metrics (org_id, source, metric, ts, value_num, value_bool,"
                    " received_at) SELECT ?, source, metric, ts, value_num, value_bool, ? FROM"
                    " (SELECT DISTINCT ON (source, metric, ts) * FROM incoming_metrics)"
                    " ORDER BY ts ON CONFLICT DO NOTHING",
                    [org_id, now_ms],
                )
                after = first(c.execute("SELECT count(*) FROM metrics").fetchall())[0]
                return int(after) - int(before)
            finally:
                c.unregister("incoming_metrics")

        return await self.db.run(self.db.transaction(go))

    async def metric_points(
        self, org_id: str, source: str, metric: str, from_ms: int, to_ms: int, limit: int
    ) -> list[tuple[int, Value]]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT ts, value_num, value_bool FROM metrics WHERE org_id = ? AND source = ?"
                " AND metric = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
                [org_id, source, metric, from_ms, to_ms, limit],
            ).fetchall()
        )
        out: list[tuple[int, Value]] = []
        for ts, num, flag in rows:
            value = _join(num, flag)
            if value is not None:
                out.append((int(ts), value))
        return out

    async def metric_series(self, org_id: str) -> list[MetricSeries]:
        """Every (source, metric) the org has values for, with its newest value: what the
        dashboard's models page lists."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT source, metric, count(*), max(ts),"
                " arg_max(value_num, ts), arg_max(value_bool, ts) FROM metrics"
                " WHERE org_id = ? GROUP BY source, metric ORDER BY source, metric",
                [org_id],
            ).fetchall()
        )
        return [
            MetricSeries(str(s), str(m), int(n), int(ts), _join(num, flag))
            for s, m, n, ts, num, flag in rows
        ]

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(
        self, org_id: str, name: str, key_hash: str, created_by: str, now_ms: int
    ) -> ApiKeyInfo:
        info = ApiKeyInfo(uuid.uuid4().hex, org_id, name, created_by, now_ms, None)
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                [info.id, org_id, name, key_hash, created_by, now_ms],
            )
        )
        return info

    async def list_api_keys(self, org_id: str) -> list[ApiKeyInfo]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT id, org_id, name, created_by, created_at, revoked_at FROM api_keys"
                " WHERE org_id = ? ORDER BY created_at, id",
                [org_id],
            ).fetchall()
        )
        return [ApiKeyInfo(*r) for r in rows]

    async def revoke_api_key(self, org_id: str, key_id: str, now_ms: int) -> bool:
        def go(c: duckdb.DuckDBPyConnection) -> bool:
            row = first(
                c.execute(
                    "SELECT revoked_at FROM api_keys WHERE org_id = ? AND id = ?",
                    [org_id, key_id],
                ).fetchall()
            )
            if row is None:
                return False
            if row[0] is None:
                c.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", [now_ms, key_id])
            return True

        return await self.db.run(self.db.transaction(go))

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyInfo | None:
        """The live (not revoked) key with this digest."""
        row = first(
            await self.db.run(
                lambda c: c.execute(
                    "SELECT id, org_id, name, created_by, created_at, revoked_at FROM api_keys"
                    " WHERE key_hash = ? AND revoked_at IS NULL",
                    [key_hash],
                ).fetchall()
            )
        )
        return ApiKeyInfo(*row) if row else None

    # -- the monitoring loop --------------------------------------------------------------

    async def monitored_orgs(self) -> list[str]:
        """Orgs that have (or had) rules: only they have a monitor_state row."""
        rows = await self.db.run(
            lambda c: c.execute("SELECT org_id FROM monitor_state ORDER BY org_id").fetchall()
        )
        return [r[0] for r in rows]

    async def load_snapshot(self, org_id: str) -> MonitorSnapshot | None:
        def go(c: duckdb.DuckDBPyConnection) -> MonitorSnapshot | None:
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
                engines=_decode_engines(row[0]),
                metrics_cursor=int(row[1]),
                readings_cursor=int(row[2]),
                episodes=tuple(Episode(*e) for e in episodes),
                state_json=row[0],
            )

        return await self.db.run(go)

    async def observations(
        self,
        org_id: str,
        snapshot: MonitorSnapshot,
        source_metrics: frozenset[str],
        device_metrics: frozenset[str],
        limit: int,
    ) -> Observations:
        """Metrics after the metrics cursor (up to `limit`) and device readings received at or
        after the readings cursor, restricted to the metrics some rule watches."""

        def go(c: duckdb.DuckDBPyConnection) -> Observations:
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
                value = _join(num, flag)
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
                    value = _join(num, flag, text)
                    if value is not None:
                        by_kind["device"].append(Observation(device, metric, int(ts), value, dtype))
            return Observations(by_kind, m_cursor, r_cursor, more)

        return await self.db.run(go)

    async def commit_pass(
        self, org_id: str, outcome: PassOutcome, now_ms: int, extra: dict[str, Rule]
    ) -> Committed:
        """One transaction: alerts raised/resolved, their notifications, the engine state and
        cursors. `extra` maps rule id -> Rule for the raises (names and thresholds in the
        notification)."""

        def go(c: duckdb.DuckDBPyConnection) -> Committed:
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
                [
                    outcome.state_json,
                    outcome.metrics_cursor,
                    outcome.readings_cursor,
                    now_ms,
                    org_id,
                ],
            )
            return Committed(raised, resolved, queued)

        return await self.db.run(self.db.transaction(go))


def _empty_engines() -> dict[SubjectKind, EngineState]:
    return {k: EngineState() for k in KINDS}


def _snapshot(
    c: duckdb.DuckDBPyConnection, org_id: str, alert_id: str, rule: Rule | None
) -> dict[str, Any]:
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
    c: duckdb.DuckDBPyConnection, org_id: str, clear: Clear, rule: Rule | None, now_ms: int
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
        "UPDATE alerts SET state = ?, resolved_at = ?, updated_at = ? WHERE org_id = ? AND id = ?",
        [state.value, clear.at_ms, now_ms, org_id, ep.alert_id],
    )
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
