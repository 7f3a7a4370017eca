"""The notification area's tables ("notify" migrations): the outbox (one row per alert x
channel x event, see cloud.notify.outbox) and the org's channels, in the same database as the
alerts, so an alert and its notifications commit together (cloud/monitoring/store.py).

Both engines have the same columns. PostgreSQL started from DuckDB's second version, with TEXT
for DuckDB's VARCHAR and JSON (the application parses the payload) and an index for claiming
due rows, which DuckDB leaves out (see outbox.SCHEMA)."""

from __future__ import annotations

from cloud.notify.outbox import SCHEMA
from cloud.storage.sql import Migration, Migrations

_CHANNELS = """CREATE TABLE notification_channels (
    org_id {t} NOT NULL, id {t} NOT NULL, name {t} NOT NULL,
    type {t} NOT NULL, url {t}, to_addr {t}, secret {t},
    created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, id))"""

_ATTEMPTS = """CREATE TABLE notification_attempts (
    notification_id {t} NOT NULL, alert_id {t} NOT NULL, channel_id {t} NOT NULL,
    event {t} NOT NULL, attempt INTEGER NOT NULL, at_ms BIGINT NOT NULL, result {t} NOT NULL,
    error {t})"""
NOTIFY_DUCKDB_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, (SCHEMA, _CHANNELS.format(t="VARCHAR"))),
    # Leases: who claimed a row that is `sending`, and until when (cloud.notify.outbox).
    Migration(
        2,
        (
            "ALTER TABLE notifications ADD COLUMN claimed_by VARCHAR",
            "ALTER TABLE notifications ADD COLUMN lease_until BIGINT",
        ),
    ),
    # Every delivery attempt and its result (issue 15: an alert shows its notifications'
    # history, not only the last error and a count).
    Migration(3, (_ATTEMPTS.format(t="VARCHAR"),)),
)

NOTIFY_PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE notifications (
                id TEXT PRIMARY KEY, org_id TEXT NOT NULL, alert_id TEXT NOT NULL,
                channel_id TEXT NOT NULL, event TEXT NOT NULL, payload TEXT NOT NULL,
                status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at BIGINT NOT NULL, last_error TEXT, created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL, sent_at BIGINT, claimed_by TEXT, lease_until BIGINT,
                UNIQUE (alert_id, channel_id, event))""",
            "CREATE INDEX notifications_due ON notifications (next_attempt_at)"
            " WHERE status IN ('pending', 'retrying')",
            "CREATE INDEX notifications_sending ON notifications (lease_until)"
            " WHERE status = 'sending'",
            _CHANNELS.format(t="TEXT"),
        ),
    ),
    Migration(
        2,
        (
            _ATTEMPTS.format(t="TEXT"),
            "CREATE INDEX notification_attempts_alert ON notification_attempts (alert_id)",
        ),
    ),
)

NOTIFY_MIGRATIONS: Migrations = {
    "duckdb": NOTIFY_DUCKDB_MIGRATIONS,
    "postgresql": NOTIFY_PG_MIGRATIONS,
}
