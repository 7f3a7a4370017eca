"""Storage of notification channels and the outbox on the cloud's database (either engine).

The outbox and channels tables are the "notify" component's migrations (cloud.notify.schema),
so they live in the same database and transactions as the alerts: an alert and its
notifications commit together (see cloud/monitoring/store.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloud.notify.channels import Channel, ChannelType
from cloud.notify.outbox import OutboxStore, attempts_for_alert_on, status_for_alerts_on
from cloud.notify.schema import NOTIFY_MIGRATIONS
from cloud.storage.interface import AlertInfo
from cloud.storage.sql import SqlConn, SqlDatabase, first

_COLS = "id, name, type, url, to_addr, secret"


def _channel(row: tuple[Any, ...] | None) -> Channel | None:
    if row is None:
        return None
    return Channel(
        id=row[0], name=row[1], type=ChannelType(row[2]), url=row[3], to=row[4], secret=row[5]
    )


class NotifyStore:
    """Channels (org-scoped CRUD) and the outbox, on the shared Database."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.migrate("notify", NOTIFY_MIGRATIONS)
        self.outbox = OutboxStore(db)

    # -- channels -------------------------------------------------------------------------

    async def list_channels(self, org_id: str) -> list[Channel]:
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT {_COLS} FROM notification_channels WHERE org_id = ?"
                " ORDER BY created_at, id",
                [org_id],
            ).fetchall()
        )
        return [ch for ch in map(_channel, rows) if ch is not None]

    async def get_channel(self, org_id: str, channel_id: str) -> Channel | None:
        return await self.db.run(lambda c: self._get(c, org_id, channel_id))

    def get_channel_sync(self, org_id: str, channel_id: str) -> Channel | None:
        """The worker's lookup (it runs it in a thread)."""
        return self.db.run_sync(lambda c: self._get(c, org_id, channel_id))

    @staticmethod
    def _get(c: SqlConn, org_id: str, channel_id: str) -> Channel | None:
        return _channel(
            first(
                c.execute(
                    f"SELECT {_COLS} FROM notification_channels WHERE org_id = ? AND id = ?",
                    [org_id, channel_id],
                ).fetchall()
            )
        )

    async def save_channel(self, org_id: str, channel: Channel, now_ms: int) -> None:
        """Insert or replace (PATCH sends the whole merged channel)."""
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO notification_channels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (org_id, id) DO UPDATE SET name = excluded.name,"
                " type = excluded.type, url = excluded.url, to_addr = excluded.to_addr,"
                " secret = excluded.secret, updated_at = excluded.updated_at",
                [
                    org_id,
                    channel.id,
                    channel.name,
                    channel.type.value,
                    channel.url,
                    channel.to,
                    channel.secret,
                    now_ms,
                    now_ms,
                ],
            )
        )

    async def delete_channel(self, org_id: str, channel_id: str) -> bool:
        def go(c: SqlConn) -> bool:
            found = self._get(c, org_id, channel_id) is not None
            c.execute(
                "DELETE FROM notification_channels WHERE org_id = ? AND id = ?",
                [org_id, channel_id],
            )
            return found

        return await self.db.run(self.db.transaction(go))

    async def missing_channels(self, org_id: str, channel_ids: Sequence[str]) -> list[str]:
        """The ids among `channel_ids` that are not channels of the org (in the given order)."""
        if not channel_ids:
            return []
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT id FROM notification_channels WHERE org_id = ? AND id IN"
                f" ({', '.join('?' for _ in channel_ids)})",
                [org_id, *channel_ids],
            ).fetchall()
        )
        known = {r[0] for r in rows}
        return [cid for cid in channel_ids if cid not in known]

    # -- delivery status ------------------------------------------------------------------

    async def delivery_attempts(self, alert_id: str) -> list[dict[str, Any]]:
        """Every delivery attempt of the alert's notifications (channel, event, attempt, at,
        result, error), oldest first."""
        return await self.db.run(lambda c: attempts_for_alert_on(c, alert_id))

    async def status_for_alerts(self, alert_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Each alert's `notifications` member (through the store's error translation)."""
        ids = list(alert_ids)
        return await self.db.run(lambda c: status_for_alerts_on(c, ids))


async def alert_documents(
    notify: NotifyStore | None, alerts: Sequence[AlertInfo]
) -> list[dict[str, Any]]:
    """Alerts in the CONTRACT shape with `notifications: [{channel_id, status, attempts}]`
    filled from the outbox (one query for the whole list)."""
    docs = [a.to_dict() for a in alerts]
    if notify is None or not docs:
        return docs
    status = await notify.status_for_alerts([a.id for a in alerts])
    for doc in docs:
        doc["notifications"] = status.get(doc["id"], [])
    return docs
