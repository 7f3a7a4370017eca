"""The tables of gateway enrollment and sync ("sync" migrations on the cloud's Database).
gateway_keys: one row per enrolled gateway (its Ed25519 public key, raw, base64; when it
enrolled, whether it is revoked, when it was last seen, the clock skew it showed and its
backlog); the core `gateways` table keeps what `cloud gateway add` wrote, with enrolled_at and
last_seen mirrored there so GET /api/gateways shows them. sync_batches: every applied batch's
acknowledgement, keyed by (gateway, batch id), so a resend is answered from here and a lost
acknowledgement never stores anything twice. sync_alerts: alerts that came from a gateway, with
the state the gateway last reported. gateway_auth_events, gateway_counters: what the gateway
reported about itself.

PostgreSQL (SYNC_PG_MIGRATIONS) takes the same steps in its own type names (TEXT for VARCHAR;
BIGINT, BOOLEAN as they are). The sync_batches primary key is what makes a batch stored once
when two workers get it at once (with the per-gateway advisory lock cloud.sync.store takes)."""

from __future__ import annotations

from cloud.storage.sql import Migration

SYNC_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE gateway_keys (
                gateway_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL,
                public_key VARCHAR NOT NULL, enrolled_at BIGINT NOT NULL,
                revoked_at BIGINT, last_seen BIGINT, skew_ms BIGINT,
                clock_skewed BOOLEAN NOT NULL DEFAULT false, config_version BIGINT)""",
            """CREATE TABLE sync_batches (
                gateway_id VARCHAR NOT NULL, batch_id VARCHAR NOT NULL,
                first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, stored BIGINT NOT NULL,
                duplicates BIGINT NOT NULL, acked_at BIGINT NOT NULL,
                PRIMARY KEY (gateway_id, batch_id))""",
            """CREATE TABLE sync_alerts (
                alert_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL,
                gateway_id VARCHAR NOT NULL, gw_state VARCHAR NOT NULL)""",
            """CREATE TABLE gateway_auth_events (
                org_id VARCHAR NOT NULL, gateway_id VARCHAR NOT NULL, occurred_at BIGINT NOT NULL,
                kind VARCHAR NOT NULL, transport VARCHAR NOT NULL, reason VARCHAR NOT NULL,
                address VARCHAR, username VARCHAR, client_id VARCHAR,
                received_at BIGINT NOT NULL)""",
            """CREATE TABLE gateway_counters (
                gateway_id VARCHAR NOT NULL, name VARCHAR NOT NULL, value BIGINT NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (gateway_id, name))""",
        ),
    ),
    # What the gateway still has to send, as its newest batch said (a gauge, not a total).
    Migration(2, ("ALTER TABLE gateway_keys ADD COLUMN backlog BIGINT",)),
)


def _on_postgresql(m: Migration) -> Migration:
    return Migration(m.version, tuple(s.replace("VARCHAR", "TEXT") for s in m.statements))


# The same steps in PostgreSQL's type names, then what only PostgreSQL needs: the config poll
# finds a gateway's alerts by gateway (DuckDB scans; an ART index would cost more than it saves).
SYNC_PG_MIGRATIONS: tuple[Migration, ...] = (
    *(_on_postgresql(m) for m in SYNC_MIGRATIONS),
    Migration(3, ("CREATE INDEX sync_alerts_gateway ON sync_alerts (gateway_id)",)),
)
