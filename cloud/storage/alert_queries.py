"""The cloud store's alerts (AlertQueries, one of the query groups SqlCloudStore is made
of), and the two statements the monitoring loop runs on its own connection inside its pass
transaction: insert_alert and select_alert, so an alert is created in the same transaction as
its notifications and the engine state."""

from __future__ import annotations

import uuid
from typing import Any

from cloud.storage.interface import AlertInfo, NewAlert
from cloud.storage.sql import SqlConn, SqlDatabase, first
from cloud.storage.value_columns import join_value, split_value
from common.alerts import AlertState

_ALERT_COLS = (
    "id, org_id, rule_id, state, severity, metric, value_num, value_bool, value_str, "
    "device_id, source, started_at, acknowledged_at, resolved_at"
)


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
    )


def insert_alert(c: SqlConn, org_id: str, alert_id: str, alert: NewAlert) -> None:
    """Insert a new active alert on a connection the caller holds (so the monitoring loop can
    create it in the same transaction as its notifications and engine state)."""
    num, flag, text = split_value(alert.value)
    c.execute(
        f"INSERT INTO alerts ({_ALERT_COLS}, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
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
            alert.started_at,
        ],
    )


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
        self, org_id: str, alert_id: str, state: AlertState, now_ms: int
    ) -> AlertInfo | None:
        column = {
            AlertState.ACKNOWLEDGED: "acknowledged_at",
            AlertState.RESOLVED: "resolved_at",
        }.get(state)
        stamp, stamped = (f", {column} = ?", [now_ms]) if column else ("", [])
        await self.db.run(
            lambda c: c.execute(
                f"UPDATE alerts SET state = ?, updated_at = ?{stamp} WHERE org_id = ? AND id = ?",
                [state.value, now_ms, *stamped, org_id, alert_id],
            )
        )
        return await self.get_alert(org_id, alert_id)
