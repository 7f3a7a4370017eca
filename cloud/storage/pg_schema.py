"""The core tables on PostgreSQL ("core" migrations, the postgresql list): the same tables and
columns as DuckDB's (cloud.storage.duck_schema), which reached them in five steps; PostgreSQL
starts from that schema. Differences, each for a reason:

- readings is range-partitioned by ts (device time, ms since the epoch): one partition per UTC
  day, created when a batch first needs it (cloud.storage.pg_partitions), dropped whole for
  retention. Timestamps before 2000 or after 2100 (a device whose clock was never set) land in
  the default partition, whose range no daily partition ever takes.
- readings has a UNIQUE index on (org_id, device_id, metric, ts): a reading is stored once, and
  the same index serves the dashboard's range queries (DuckDB keeps no index there: an ART
  index made its file ~10x larger; it deduplicates by an anti-join instead).
- JSON documents stay TEXT, as on DuckDB: the application parses them, and a byte-identical
  copy between engines (`cloud copy`) needs no re-encoding.
"""

from __future__ import annotations

from cloud.storage.sql import Migration

CORE_PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE orgs (
                id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)""",
            """CREATE TABLE users (
                id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, org_id TEXT NOT NULL,
                role TEXT NOT NULL, password_hash TEXT NOT NULL, created_at BIGINT NOT NULL,
                token_version INTEGER NOT NULL DEFAULT 0, disabled_at BIGINT)""",
            "CREATE INDEX users_org ON users (org_id)",
            """CREATE TABLE refresh_tokens (
                token_hash TEXT PRIMARY KEY, family_id TEXT NOT NULL, user_id TEXT NOT NULL,
                expires_at BIGINT NOT NULL, used_at BIGINT,
                revoked BOOLEAN NOT NULL DEFAULT false,
                token_version INTEGER NOT NULL DEFAULT 0)""",
            "CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id)",
            "CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id)",
            """CREATE TABLE gateways (
                id TEXT PRIMARY KEY, org_id TEXT NOT NULL, name TEXT NOT NULL,
                enrollment_token_hash TEXT, enrollment_expires_at BIGINT, enrolled_at BIGINT,
                created_at BIGINT NOT NULL, last_seen BIGINT, UNIQUE (org_id, name))""",
            "CREATE INDEX gateways_enrollment ON gateways (enrollment_token_hash)",
            """CREATE TABLE devices (
                org_id TEXT NOT NULL, device_id TEXT NOT NULL, gateway_id TEXT, type TEXT,
                last_seen BIGINT, revoked_at BIGINT, PRIMARY KEY (org_id, device_id))""",
            """CREATE TABLE latest (
                org_id TEXT NOT NULL, device_id TEXT NOT NULL, metric TEXT NOT NULL,
                ts BIGINT NOT NULL, value_num DOUBLE PRECISION, value_bool BOOLEAN,
                value_str TEXT, PRIMARY KEY (org_id, device_id, metric))""",
            """CREATE TABLE readings (
                org_id TEXT NOT NULL, gateway_id TEXT NOT NULL, device_id TEXT NOT NULL,
                metric TEXT NOT NULL, ts BIGINT NOT NULL, value_num DOUBLE PRECISION,
                value_bool BOOLEAN, value_str TEXT, gateway_received_at BIGINT,
                cloud_received_at BIGINT NOT NULL, flags SMALLINT NOT NULL DEFAULT 0,
                gateway_boot_id TEXT, gateway_mono_ms BIGINT) PARTITION BY RANGE (ts)""",
            "CREATE TABLE readings_default PARTITION OF readings DEFAULT",
            "CREATE UNIQUE INDEX readings_series ON readings (org_id, device_id, metric, ts)",
            """CREATE TABLE dashboard_configs (
                org_id TEXT PRIMARY KEY, config TEXT NOT NULL, updated_at BIGINT NOT NULL)""",
            """CREATE TABLE alerts (
                id TEXT PRIMARY KEY, org_id TEXT NOT NULL, rule_id TEXT,
                state TEXT NOT NULL, severity TEXT NOT NULL, metric TEXT NOT NULL,
                value_num DOUBLE PRECISION, value_bool BOOLEAN, value_str TEXT, device_id TEXT,
                source TEXT, started_at BIGINT NOT NULL, acknowledged_at BIGINT,
                resolved_at BIGINT, updated_at BIGINT NOT NULL)""",
            "CREATE INDEX alerts_org_state ON alerts (org_id, state, started_at)",
            """CREATE TABLE device_types (
                org_id TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (org_id, name))""",
        ),
    ),
)
