"""The core tables of the cloud database and how they came to be: CORE_MIGRATIONS, applied in
order by cloud.storage.db.Database.migrate("core", ...) when SqlCloudStore opens. Orgs, users,
refresh tokens, gateways, devices, the newest value per (device, metric), readings, dashboard
configs, alerts and device types; other areas (sync, monitoring, notifications) add their own tables
under their own migration names. Readings carry no PRIMARY KEY: an ART index on (device,
metric, ts) makes the file ~10x larger (measured, see ARCHITECTURE.md)."""

from __future__ import annotations

from cloud.storage.sql import Migration

CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE orgs (
                id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL UNIQUE,
                created_at BIGINT NOT NULL)""",
            """CREATE TABLE users (
                id VARCHAR PRIMARY KEY, email VARCHAR NOT NULL UNIQUE, org_id VARCHAR NOT NULL,
                role VARCHAR NOT NULL, password_hash VARCHAR NOT NULL,
                created_at BIGINT NOT NULL)""",
            """CREATE TABLE refresh_tokens (
                token_hash VARCHAR PRIMARY KEY, family_id VARCHAR NOT NULL,
                user_id VARCHAR NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT,
                revoked BOOLEAN NOT NULL DEFAULT false)""",
            """CREATE TABLE gateways (
                id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
                enrollment_token_hash VARCHAR, enrollment_expires_at BIGINT, enrolled_at BIGINT,
                created_at BIGINT NOT NULL, last_seen BIGINT, UNIQUE (org_id, name))""",
            """CREATE TABLE devices (
                org_id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, gateway_id VARCHAR,
                type VARCHAR, last_seen BIGINT, PRIMARY KEY (org_id, device_id))""",
            """CREATE TABLE latest (
                org_id VARCHAR NOT NULL, device_id VARCHAR NOT NULL, metric VARCHAR NOT NULL,
                ts BIGINT NOT NULL, value_num DOUBLE, value_bool BOOLEAN, value_str VARCHAR,
                PRIMARY KEY (org_id, device_id, metric))""",
            """CREATE TABLE readings (
                org_id VARCHAR NOT NULL, gateway_id VARCHAR NOT NULL, device_id VARCHAR NOT NULL,
                metric VARCHAR NOT NULL, ts BIGINT NOT NULL, value_num DOUBLE,
                value_bool BOOLEAN, value_str VARCHAR, gateway_received_at BIGINT,
                cloud_received_at BIGINT NOT NULL)""",
            """CREATE TABLE dashboard_configs (
                org_id VARCHAR PRIMARY KEY, config VARCHAR NOT NULL, updated_at BIGINT NOT NULL)""",
            """CREATE TABLE alerts (
                id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, rule_id VARCHAR,
                state VARCHAR NOT NULL, severity VARCHAR NOT NULL, metric VARCHAR NOT NULL,
                value_num DOUBLE, value_bool BOOLEAN, value_str VARCHAR, device_id VARCHAR,
                source VARCHAR, started_at BIGINT NOT NULL, acknowledged_at BIGINT,
                resolved_at BIGINT, updated_at BIGINT NOT NULL)""",
        ),
    ),
    # Clocks (issue 4): each reading keeps device time (ts), gateway receive time with the
    # gateway's boot id and monotonic offset, and cloud receive time; flags say which of them
    # not to trust (common.model.ReadingFlag).
    Migration(
        2,
        (
            "ALTER TABLE readings ADD COLUMN flags UTINYINT NOT NULL DEFAULT 0",
            "ALTER TABLE readings ADD COLUMN gateway_boot_id VARCHAR",
            "ALTER TABLE readings ADD COLUMN gateway_mono_ms BIGINT",
        ),
    ),
    # Devices revoked centrally: their gateway revokes them at its next config fetch.
    Migration(3, ("ALTER TABLE devices ADD COLUMN revoked_at BIGINT",)),
    # Device types defined centrally (metrics with type, unit, range): sent to every gateway.
    Migration(
        4,
        (
            """CREATE TABLE device_types (
                org_id VARCHAR NOT NULL, name VARCHAR NOT NULL, spec VARCHAR NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (org_id, name))""",
        ),
    ),
    # Ending a user's access (issue 11): a disabled user cannot log in, and a token version
    # that access and refresh tokens carry; bumping it (password change, disable) ends them.
    Migration(
        5,
        (
            "ALTER TABLE users ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE users ADD COLUMN disabled_at BIGINT",
            "ALTER TABLE refresh_tokens ADD COLUMN token_version INTEGER NOT NULL DEFAULT 0",
        ),
    ),
)
