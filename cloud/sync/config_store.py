"""The sync store's side of the configuration pushed down to gateways (ConfigQueries, one of
the query groups SyncStore is made of): devices revoked centrally, device types, and the
scope of one gateway (its devices, the org's other devices, and the alerts the cloud moved
further than the gateway last reported, at most MAX_ALERT_ACKS per answer)."""

from __future__ import annotations

import json
from typing import Any

from cloud.storage.sql import SqlConn, SqlDatabase
from cloud.sync.records import ALERT_STATE_RANK, GatewayScope

MAX_ALERT_ACKS = 1000  # per config answer; the rest follow on the next poll


class ConfigQueries:
    db: SqlDatabase  # set by SyncStore

    # -- devices revoked centrally ------------------------------------------------------------

    async def revoke_device(self, org_id: str, device_id: str, now_ms: int) -> bool:
        """Mark a device of this org revoked (idempotent); False when the org has no such device."""

        def go(c: SqlConn) -> bool:
            found = c.execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, ?)"
                " WHERE org_id = ? AND device_id = ? RETURNING device_id",
                [now_ms, org_id, device_id],
            ).fetchall()
            return bool(found)

        return await self.db.run(self.db.transaction(go))

    async def revoked_devices(self, org_id: str, gateway_id: str) -> list[str]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT device_id FROM devices WHERE org_id = ? AND gateway_id = ?"
                " AND revoked_at IS NOT NULL ORDER BY device_id",
                [org_id, gateway_id],
            ).fetchall()
        )
        return [r[0] for r in rows]

    # -- device types ----------------------------------------------------------------------

    async def put_device_type(
        self, org_id: str, name: str, spec: dict[str, Any], now_ms: int
    ) -> None:
        await self.db.run(
            self.db.transaction(
                lambda c: c.execute(
                    "INSERT INTO device_types VALUES (?, ?, ?, ?) ON CONFLICT (org_id, name)"
                    " DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                    [org_id, name, json.dumps(spec, sort_keys=True), now_ms],
                )
            )
        )

    async def delete_device_type(self, org_id: str, name: str) -> bool:
        rows = await self.db.run(
            self.db.transaction(
                lambda c: c.execute(
                    "DELETE FROM device_types WHERE org_id = ? AND name = ? RETURNING name",
                    [org_id, name],
                ).fetchall()
            )
        )
        return bool(rows)

    async def device_types(self, org_id: str) -> list[dict[str, Any]]:
        """Every type of the org as {"name", "metrics", "allow_undeclared"}, by name."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT name, spec FROM device_types WHERE org_id = ? ORDER BY name", [org_id]
            ).fetchall()
        )
        return [{"name": r[0], **json.loads(r[1])} for r in rows]

    # -- config ---------------------------------------------------------------------------

    async def scope(self, org_id: str, gateway_id: str) -> GatewayScope:
        def go(c: SqlConn) -> GatewayScope:
            rows = c.execute(
                "SELECT device_id, gateway_id FROM devices WHERE org_id = ?", [org_id]
            ).fetchall()
            mine = frozenset(d for d, g in rows if g == gateway_id)
            others = frozenset(d for d, g in rows if g is not None and g != gateway_id)
            ranks = " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in ALERT_STATE_RANK.items())
            changes = c.execute(
                "SELECT a.id, a.state, a.acknowledged_at, a.resolved_at FROM sync_alerts s"
                " JOIN alerts a ON a.id = s.alert_id AND a.org_id = s.org_id"
                f" WHERE s.gateway_id = ? AND (CASE a.state {ranks} END)"
                f" > (CASE s.gw_state {ranks} END) ORDER BY a.updated_at, a.id LIMIT ?",
                [gateway_id, MAX_ALERT_ACKS],
            ).fetchall()
            return GatewayScope(mine, others, tuple((r[0], r[1], r[2], r[3]) for r in changes))

        return await self.db.run(go)
