"""CloudStore on SQL: the embedded DuckDB file (the default) or PostgreSQL, the same code on
either (cloud.storage.sql). SqlCloudStore is assembled from query groups that each live in
their own module, with one job each: accounts (cloud.storage.accounts), devices and telemetry
(cloud.storage.telemetry) and alerts (cloud.storage.alert_queries), over the core tables of
cloud.storage.duck_schema or cloud.storage.pg_schema. What stays here is opening (the core
migrations), availability, gateways and the dashboard configuration."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from cloud.storage.accounts import AccountQueries
from cloud.storage.alert_queries import AlertQueries
from cloud.storage.alert_schema import ALERT_DETAIL_MIGRATIONS
from cloud.storage.db import Database
from cloud.storage.duck_schema import CORE_MIGRATIONS
from cloud.storage.interface import GatewayInfo
from cloud.storage.pg_schema import CORE_PG_MIGRATIONS
from cloud.storage.pg_timescale import core_migrations
from cloud.storage.pg_timescale import enabled as timescale_enabled
from cloud.storage.sql import Migration, SqlDatabase, first
from cloud.storage.telemetry import TelemetryQueries


class SqlCloudStore(AccountQueries, TelemetryQueries, AlertQueries):
    """The CloudStore on either engine. `db` is shared: other areas add tables via
    db.migrate()."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        pg: tuple[Migration, ...] = CORE_PG_MIGRATIONS
        if db.dialect == "postgresql":  # readings on TimescaleDB where it is (chosen once)
            pg = core_migrations(db, pg)
        db.migrate("core", {"duckdb": CORE_MIGRATIONS, "postgresql": pg})
        db.migrate("alert_detail", ALERT_DETAIL_MIGRATIONS)  # why and where alerts were raised
        self.timescale = db.dialect == "postgresql" and db.run_sync(timescale_enabled)

    # Tests' and operators' outage of the embedded engine: its connection is closed, so every
    # query really fails. (On PostgreSQL an outage is a stopped server.)
    def make_unavailable(self) -> None:
        self._embedded().make_unavailable()

    def make_available(self) -> None:
        self._embedded().make_available()

    def _embedded(self) -> Database:
        if not isinstance(self.db, Database):
            raise TypeError("only the embedded store can be made unavailable from inside")
        return self.db

    def close(self) -> None:
        self.db.close()

    async def ping(self) -> None:
        await self.db.run(lambda c: c.execute("SELECT 1").fetchall())

    # -- gateways -------------------------------------------------------------------------

    async def create_gateway(
        self, org_id: str, name: str, token_hash: str, expires_at: int, now_ms: int
    ) -> GatewayInfo:
        gw = GatewayInfo(uuid.uuid4().hex, org_id, name, now_ms, None, None)
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO gateways (id, org_id, name, enrollment_token_hash,"
                " enrollment_expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [gw.gateway_id, org_id, name, token_hash, expires_at, now_ms],
            )
        )
        return gw

    async def list_gateways(self, org_id: str) -> list[GatewayInfo]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT id, org_id, name, created_at, enrolled_at, last_seen FROM gateways"
                " WHERE org_id = ? ORDER BY name",
                [org_id],
            ).fetchall()
        )
        return [GatewayInfo(*r) for r in rows]

    # -- dashboard ------------------------------------------------------------------------

    async def get_dashboard_config(self, org_id: str) -> dict[str, Any] | None:
        row = first(
            await self.db.run(
                lambda c: c.execute(
                    "SELECT config FROM dashboard_configs WHERE org_id = ?", [org_id]
                ).fetchall()
            )
        )
        if row is None:
            return None
        config: dict[str, Any] = json.loads(row[0])
        return config

    async def put_dashboard_config(
        self, org_id: str, config: Mapping[str, Any], now_ms: int
    ) -> None:
        text = json.dumps(dict(config))
        await self.db.run(
            lambda c: c.execute(
                "INSERT INTO dashboard_configs VALUES (?, ?, ?) ON CONFLICT (org_id)"
                " DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                [org_id, text, now_ms],
            )
        )
