"""The gateway database's tables, and the names of its kv entries and counters."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq         BIGINT NOT NULL,   -- gateway-wide monotonic sequence, the sync cursor
    device_id   VARCHAR NOT NULL,
    metric      VARCHAR NOT NULL,
    ts          BIGINT NOT NULL,   -- ms, device time (or receive time when the device sent none)
    received_at BIGINT NOT NULL,   -- ms, gateway clock
    value_num   DOUBLE,
    value_bool  BOOLEAN,
    value_str   VARCHAR,
    flags       UTINYINT NOT NULL,
    dev_seq     BIGINT
);
CREATE TABLE IF NOT EXISTS devices (
    device_id     VARCHAR PRIMARY KEY,
    type          VARCHAR,
    token_lookup  VARCHAR NOT NULL,   -- sha256 of the token, to find a device by token
    pw_hash       VARCHAR NOT NULL,   -- PBKDF2-SHA512, the format Mosquitto's dynsec stores
    pw_salt       VARCHAR NOT NULL,
    pw_iterations INTEGER NOT NULL,
    status        VARCHAR NOT NULL,   -- active | revoked
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_seen     BIGINT
);
CREATE TABLE IF NOT EXISTS rejections (
    occurred_at    BIGINT NOT NULL,
    device_id      VARCHAR NOT NULL,
    transport      VARCHAR NOT NULL,
    status         INTEGER NOT NULL,
    title          VARCHAR NOT NULL,
    detail         VARCHAR,
    errors         VARCHAR,           -- JSON array of {path, message}
    payload_sha256 VARCHAR NOT NULL,
    payload_size   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_failures (
    occurred_at BIGINT NOT NULL,
    kind      VARCHAR NOT NULL,       -- auth_failure | lockout
    transport VARCHAR NOT NULL,
    address   VARCHAR,
    username  VARCHAR,
    client_id VARCHAR,
    reason    VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    id         VARCHAR PRIMARY KEY,
    body       VARCHAR NOT NULL,      -- the rule as CONTRACT JSON
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id              VARCHAR PRIMARY KEY,
    rule_id         VARCHAR NOT NULL,
    subject         VARCHAR NOT NULL,
    metric          VARCHAR NOT NULL,
    severity        VARCHAR NOT NULL,
    state           VARCHAR NOT NULL,
    value           VARCHAR,          -- JSON
    started_at      BIGINT NOT NULL,
    acknowledged_at BIGINT,
    resolved_at     BIGINT,
    change_seq      BIGINT NOT NULL   -- bumped on every change, for sync
);
CREATE TABLE IF NOT EXISTS kv (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
-- The gateway clock per stretch of readings (see common.sync_wire.ClockEpoch).
CREATE TABLE IF NOT EXISTS clock_epochs (
    id           BIGINT NOT NULL,     -- increasing: wall times may go backwards
    first_seq    BIGINT NOT NULL,     -- the first reading seq received under this epoch
    boot_id      VARCHAR NOT NULL,
    mono_base_ms BIGINT NOT NULL,     -- wall clock minus monotonic clock during the epoch
    flags        UTINYINT NOT NULL,   -- ReadingFlag.GATEWAY_CLOCK_* bits
    skew_ms      BIGINT,              -- gateway minus cloud clock, last measured in the epoch
    started_at   BIGINT NOT NULL
);
-- Readings deleted by the unsynced-data cap before the cloud had them: one row per pass.
CREATE TABLE IF NOT EXISTS drops (
    occurred_at BIGINT NOT NULL,
    from_seq    BIGINT NOT NULL,
    to_seq      BIGINT NOT NULL,
    readings    BIGINT NOT NULL
);
-- Append-only deltas, summed on read and compacted at open: an upsert on a keyed table costs
-- ~85 ms per commit in DuckDB, an append next to nothing.
CREATE TABLE IF NOT EXISTS counters (name VARCHAR NOT NULL, value BIGINT NOT NULL);
"""

# Batches that may repeat stored readings go through this table and an anti-join.
INCOMING_READINGS = "incoming_readings"
INCOMING_READINGS_SCHEMA = (
    f"CREATE TEMP TABLE IF NOT EXISTS {INCOMING_READINGS} AS SELECT * FROM readings LIMIT 0"
)

# The sync cursor and outcome, in kv: written only after the cloud acknowledged (cursor) or
# after an attempt (outcome), so `gateway status` can report them with the gateway stopped.
SYNC_READINGS_KEY = "sync.readings_seq"
SYNC_ALERTS_KEY = "sync.alerts_change_seq"
SYNC_LAST_SUCCESS_KEY = "sync.last_success_at"
SYNC_LAST_ERROR_KEY = "sync.last_error"  # JSON {"at": ms, "message": str}
SYNC_AUTH_KEY = "sync.auth_seq"
SYNC_DEVICES_KEY = "sync.devices_digest"  # the device list the cloud has acknowledged
SYNC_RULES_KEY = "sync.rules_digest"  # the rule list the cloud has acknowledged
DROPPED_COUNTER = "readings_dropped"  # unsynced readings deleted by the disk cap
PRUNED_COUNTER = "readings_pruned"  # synced readings deleted after the retention period
