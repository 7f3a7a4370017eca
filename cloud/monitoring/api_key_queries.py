"""The monitoring store's API keys for ML jobs that post metrics (ApiKeyQueries, one of the
query groups MonitoringStore is made of): only a SHA-256 digest of a key is stored, a
revoked key stays listed, and api_key_by_hash finds only live keys. When a key was last used
is written at most once a minute per key (TOUCH_EVERY_MS), not on every request."""

from __future__ import annotations

import uuid

from cloud.monitoring.records import ApiKeyInfo
from cloud.storage.sql import SqlConn, SqlDatabase, first

TOUCH_EVERY_MS = 60_000
_COLUMNS = "id, org_id, name, created_by, created_at, revoked_at, last_used_at"


class ApiKeyQueries:
    db: SqlDatabase  # set by MonitoringStore

    async def create_api_key(
        self, org_id: str, name: str, key_hash: str, created_by: str, now_ms: int
    ) -> ApiKeyInfo:
        info = ApiKeyInfo(uuid.uuid4().hex, org_id, name, created_by, now_ms, None)
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO api_keys (id, org_id, name, key_hash, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [info.id, org_id, name, key_hash, created_by, now_ms],
            )
        )
        return info

    async def list_api_keys(self, org_id: str) -> list[ApiKeyInfo]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE org_id = ? ORDER BY created_at, id",
                [org_id],
            ).fetchall()
        )
        return [ApiKeyInfo(*r) for r in rows]

    async def revoke_api_key(self, org_id: str, key_id: str, now_ms: int) -> bool:
        def go(c: SqlConn) -> bool:
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
                    f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                    [key_hash],
                ).fetchall()
            )
        )
        return ApiKeyInfo(*row) if row else None

    async def touch_api_key(self, key: ApiKeyInfo, now_ms: int) -> None:
        """Record a use of `key`, unless one was recorded less than a minute ago."""
        if key.last_used_at is not None and now_ms - key.last_used_at < TOUCH_EVERY_MS:
            return
        await self.db.run(
            lambda c: c.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                [now_ms, key.id, now_ms - TOUCH_EVERY_MS + 1],
            )
        )
