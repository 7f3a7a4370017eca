"""The monitoring area's tables ("monitoring" migrations on the cloud's Database). alert_rules:
one row per rule, org-scoped, versioned; every create/update/delete bumps the org's rule
version (rule_versions) and stamps the row with it, and deletes stay as tombstones, so a gateway
asks exactly what changed after version N. metrics: values from ML models and jobs, once per
(org, source, metric, ts), with `seq` their arrival order (the monitoring loop's cursor).
monitor_state (per org: the rule engines' snapshot and the loop's cursors) and monitor_episodes
(the open episode -> alert mapping) are written in the same transaction as the alerts and
notifications a pass creates, so a restart neither loses nor repeats an alert. api_keys: keys
for ML jobs posting metrics; only a SHA-256 digest is stored."""

from __future__ import annotations

from cloud.storage.sql import Migration

MONITORING_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE rule_versions (
                org_id VARCHAR PRIMARY KEY, version BIGINT NOT NULL)""",
            """CREATE TABLE alert_rules (
                org_id VARCHAR NOT NULL, id VARCHAR NOT NULL, version BIGINT NOT NULL,
                deleted BOOLEAN NOT NULL, doc VARCHAR NOT NULL, created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (org_id, id))""",
            "CREATE SEQUENCE metric_seq START 1",
            """CREATE TABLE metrics (
                seq BIGINT NOT NULL DEFAULT nextval('metric_seq'), org_id VARCHAR NOT NULL,
                source VARCHAR NOT NULL, metric VARCHAR NOT NULL, ts BIGINT NOT NULL,
                value_num DOUBLE, value_bool BOOLEAN, received_at BIGINT NOT NULL,
                PRIMARY KEY (org_id, source, metric, ts))""",
            """CREATE TABLE monitor_state (
                org_id VARCHAR PRIMARY KEY, engines VARCHAR NOT NULL,
                metrics_cursor BIGINT NOT NULL, readings_cursor BIGINT NOT NULL,
                updated_at BIGINT NOT NULL)""",
            # No key on (org, rule, kind, subject): an episode may end and a new one start in
            # one pass, and DuckDB refuses delete+insert of one key inside a transaction.
            """CREATE TABLE monitor_episodes (
                alert_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, rule_id VARCHAR NOT NULL,
                kind VARCHAR NOT NULL, subject VARCHAR NOT NULL)""",
            """CREATE TABLE api_keys (
                id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
                key_hash VARCHAR NOT NULL UNIQUE, created_by VARCHAR NOT NULL,
                created_at BIGINT NOT NULL, revoked_at BIGINT)""",
        ),
    ),
)
