"""The cloud store's alerts (AlertQueries, one of the query groups SqlCloudStore is made
of), and the statements the monitoring loop and sync run on their own connection inside their
transaction: insert_alert, select_alert and add_event, so an alert is created in the same
transaction as its notifications, its history and the engine state. An alert keeps why and
where it was raised and its history (cloud.storage.alert_schema); a page of alerts is asked of
the database (cloud.storage.alert_query)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from cloud.storage.alert_query import AlertQuery, alert_page
from cloud.storage.interface import AlertEvent, AlertInfo, GatewayRule, NewAlert
from cloud.storage.sql import SqlConn, SqlDatabase, first
from cloud.storage.value_columns import join_value, split_value
from common.alerts import AlertState

_ALERT_COLS = (
    "id, org_id, rule_id, state, severity, metric, value_num, value_bool, value_str, "
    "device_id, source, started_at, acknowledged_at, resolved_at, gateway_id, rule_name, "
    "rule_doc, acknowledged_by, resolved_by"
)
# The list leaves out the rule document (the detail view shows it): a page stays small.
_LIST_COLS = _ALERT_COLS.replace("rule_doc", "NULL")


def _alert(row: tuple[Any, ...]) -> AlertInfo:
    return AlertInfo(
        id=row[0],
        org_id=row[1],
        rule_id=row[2],
        state=AlertState(row[3]),
        severity=row[4],
        metric=row[5],
        value=join_value(row[6], row[7], row[8]),
        device_id=row[9],
        source=row[10],
        started_at=row[11],
        acknowledged_at=row[12],
        resolved_at=row[13],
        gateway_id=row[14],
        rule_name=row[15],
        rule=json.loads(row[16]) if row[16] else None,
        acknowledged_by=row[17],
        resolved_by=row[18],
    )


def rule_name_of(rule: Mapping[str, Any] | None) -> str | None:
    name = rule.get("name") if rule is not None else None
    return name if isinstance(name, str) else None


def add_event(
    c: SqlConn,
    org_id: str,
    alert_id: str,
    at: int,
    kind: str,
    actor: str | None,
    detail: str | None = None,
) -> None:
    """One step of the alert's history, in the caller's transaction."""
    c.execute(
        "INSERT INTO alert_events VALUES (?, ?, ?, ?, ?, ?)",
        [org_id, alert_id, at, kind, actor, detail],
    )


def insert_alert(c: SqlConn, org_id: str, alert_id: str, alert: NewAlert) -> None:
    """Insert a new active alert on a connection the caller holds (so the monitoring loop can
    create it in the same transaction as its notifications and engine state)."""
    num, flag, text = split_value(alert.value)
    c.execute(
        f"INSERT INTO alerts ({_ALERT_COLS}, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?, NULL, NULL, ?)",
        [
            alert_id,
            org_id,
            alert.rule_id,
            AlertState.ACTIVE.value,
            alert.severity,
            alert.metric,
            num,
            flag,
            text,
            alert.device_id,
            alert.source,
            alert.started_at,
            alert.gateway_id,
            rule_name_of(alert.rule),
            json.dumps(dict(alert.rule)) if alert.rule is not None else None,
            alert.started_at,
        ],
    )
    where = f"gateway {alert.gateway_id}" if alert.gateway_id is not None else "rule"
    add_event(c, org_id, alert_id, alert.started_at, "raised", where, _raised_detail(alert))


def _raised_detail(alert: NewAlert) -> str:
    return f"{alert.metric} = {json.dumps(alert.value)}"


def select_alert(c: SqlConn, org_id: str, alert_id: str) -> AlertInfo | None:
    row = first(
        c.execute(
            f"SELECT {_ALERT_COLS} FROM alerts WHERE org_id = ? AND id = ?", [org_id, alert_id]
        ).fetchall()
    )
    return _alert(row) if row else None


class AlertQueries:
    db: SqlDatabase  # set by SqlCloudStore

    async def create_alert(self, org_id: str, alert: NewAlert) -> AlertInfo:
        alert_id = uuid.uuid4().hex
        await self.db.run(lambda c: insert_alert(c, org_id, alert_id, alert))
        found = await self.get_alert(org_id, alert_id)
        assert found is not None
        return found

    async def list_alerts(
        self, org_id: str, states: frozenset[AlertState] | None = None
    ) -> list[AlertInfo]:
        where, params = "org_id = ?", [org_id]
        if states is not None:
            wanted = sorted(s.value for s in states)
            where += f" AND state IN ({', '.join('?' for _ in wanted)})"
            params.extend(wanted)
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {_ALERT_COLS} FROM alerts WHERE {where} ORDER BY started_at DESC, id",
                params,
            ).fetchall()
        )
        return [_alert(r) for r in rows]

    async def get_alert(self, org_id: str, alert_id: str) -> AlertInfo | None:
        row = first(
            await self.db.run(
                lambda c: c.execute(
                    f"SELECT {_ALERT_COLS} FROM alerts WHERE org_id = ? AND id = ?",
                    [org_id, alert_id],
                ).fetchall()
            )
        )
        return _alert(row) if row else None

    async def set_alert_state(
        self,
        org_id: str,
        alert_id: str,
        state: AlertState,
        now_ms: int,
        actor: str | None = None,
        expected: AlertState | None = None,
    ) -> AlertInfo | None:
        """None if there is no such alert, or (with `expected`) it is no longer in that state:
        another writer (sync, the monitoring loop, another user) moved it since it was read."""
        stamp = {
            AlertState.ACKNOWLEDGED: ", acknowledged_at = ?, acknowledged_by = ?",
            AlertState.RESOLVED: ", resolved_at = ?, resolved_by = ?",
        }.get(state, "")
        stamped = [now_ms, actor] if stamp else []

        guard = " AND state = ?" if expected is not None else ""
        guarded = [expected.value] if expected is not None else []

        def go(c: SqlConn) -> bool:
            changed = c.execute(
                f"UPDATE alerts SET state = ?, updated_at = ?{stamp}"
                f" WHERE org_id = ? AND id = ?{guard} RETURNING id",
                [state.value, now_ms, *stamped, org_id, alert_id, *guarded],
            ).fetchall()
            if changed:  # the history records only what happened
                add_event(c, org_id, alert_id, now_ms, state.value, actor)
            return bool(changed)

        if not await self.db.run(self.db.transaction(go)):
            return None
        return await self.get_alert(org_id, alert_id)

    async def alert_page(
        self, org_id: str, query: AlertQuery
    ) -> tuple[list[AlertInfo], int, str | None]:
        page = await self.db.run(lambda c: alert_page(c, _LIST_COLS, org_id, query))
        return [_alert(r) for r in page.rows], page.total, page.next

    async def alert_history(self, org_id: str, alert_id: str) -> list[AlertEvent]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT at_ms, kind, actor, detail FROM alert_events WHERE org_id = ?"
                " AND alert_id = ? ORDER BY at_ms, CASE kind WHEN 'raised' THEN 0"
                " WHEN 'acknowledged' THEN 1 ELSE 2 END",
                [org_id, alert_id],
            ).fetchall()
        )
        return [AlertEvent(int(r[0]), r[1], r[2], r[3]) for r in rows]

    async def gateway_rules(self, org_id: str) -> list[GatewayRule]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT r.gateway_id, g.name, r.doc, r.updated_at FROM gateway_rules r"
                " LEFT JOIN gateways g ON g.id = r.gateway_id AND g.org_id = r.org_id"
                # the cloud's own rules, which gateways hold too, are listed as the cloud's
                " WHERE r.org_id = ? AND NOT EXISTS (SELECT 1 FROM alert_rules a"
                " WHERE a.org_id = r.org_id AND a.id = r.rule_id)"
                " ORDER BY g.name, r.gateway_id, r.rule_id",
                [org_id],
            ).fetchall()
        )
        return [GatewayRule(r[0], r[1], json.loads(r[2]), int(r[3])) for r in rows]
