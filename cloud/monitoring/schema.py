"""The monitoring area's tables ("monitoring" migrations on the cloud's Database). alert_rules:
one row per rule, org-scoped, versioned; every create/update/delete bumps the org's rule
version (rule_versions) and stamps the row with it, and deletes stay as tombstones, so a gateway
asks exactly what changed after version N. metrics: values from ML models and jobs, once per
(org, source, metric, ts), with `seq` their arrival order (the monitoring loop's cursor).
monitor_state (per org: the rule engines' snapshot and the loop's cursors) and monitor_episodes
(the open episode -> alert mapping) are written in the same transaction as the alerts and
notifications a pass creates, so a restart neither loses nor repeats an alert. api_keys: keys
for ML jobs posting metrics; only a SHA-256 digest is stored; last_used_at (migration 2) is
when a request last came with the key, to the minute.

PostgreSQL has the same tables and columns (TEXT for VARCHAR, DOUBLE PRECISION for DOUBLE),
plus the indexes the loop's queries need there: metrics by (org, seq), and readings by (org,
cloud receive time) for the device-rule cursor (a partitioned index: every readings partition
gets it)."""

from __future__ import annotations

from cloud.storage.sql import Migration, Migrations


def _tables(t: str, double: str) -> dict[str, str]:
    """The tables in an engine's types: `t` for text, `double` for a float column."""
    return {
        "rule_versions": f"""CREATE TABLE rule_versions (
            org_id {t} PRIMARY KEY, version BIGINT NOT NULL)""",
        "alert_rules": f"""CREATE TABLE alert_rules (
            org_id {t} NOT NULL, id {t} NOT NULL, version BIGINT NOT NULL,
            deleted BOOLEAN NOT NULL, doc {t} NOT NULL, created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL, PRIMARY KEY (org_id, id))""",
        "metrics": f"""CREATE TABLE metrics (
            seq BIGINT NOT NULL DEFAULT nextval('metric_seq'), org_id {t} NOT NULL,
            source {t} NOT NULL, metric {t} NOT NULL, ts BIGINT NOT NULL,
            value_num {double}, value_bool BOOLEAN, received_at BIGINT NOT NULL,
            PRIMARY KEY (org_id, source, metric, ts))""",
        "monitor_state": f"""CREATE TABLE monitor_state (
            org_id {t} PRIMARY KEY, engines {t} NOT NULL,
            metrics_cursor BIGINT NOT NULL, readings_cursor BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)""",
        # No key on (org, rule, kind, subject): an episode may end and a new one start in
        # one pass, and DuckDB refuses delete+insert of one key inside a transaction.
        "monitor_episodes": f"""CREATE TABLE monitor_episodes (
            alert_id {t} PRIMARY KEY, org_id {t} NOT NULL, rule_id {t} NOT NULL,
            kind {t} NOT NULL, subject {t} NOT NULL)""",
        "api_keys": f"""CREATE TABLE api_keys (
            id {t} PRIMARY KEY, org_id {t} NOT NULL, name {t} NOT NULL,
            key_hash {t} NOT NULL UNIQUE, created_by {t} NOT NULL,
            created_at BIGINT NOT NULL, revoked_at BIGINT)""",
    }


_DUCK = _tables("VARCHAR", "DOUBLE")
_PG = _tables("TEXT", "DOUBLE PRECISION")
_SEQ = "CREATE SEQUENCE metric_seq START 1"

MONITORING_DUCKDB_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            _DUCK["rule_versions"],
            _DUCK["alert_rules"],
            _SEQ,
            _DUCK["metrics"],
            _DUCK["monitor_state"],
            _DUCK["monitor_episodes"],
            _DUCK["api_keys"],
        ),
    ),
    Migration(2, ("ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT",)),
)

MONITORING_PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            _PG["rule_versions"],
            _PG["alert_rules"],
            "CREATE INDEX alert_rules_version ON alert_rules (org_id, version)",
            _SEQ,
            _PG["metrics"],
            "CREATE INDEX metrics_org_seq ON metrics (org_id, seq)",
            _PG["monitor_state"],
            _PG["monitor_episodes"],
            "CREATE INDEX monitor_episodes_org ON monitor_episodes (org_id)",
            _PG["api_keys"],
            "CREATE INDEX readings_org_received ON readings (org_id, cloud_received_at)",
        ),
    ),
    Migration(2, ("ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT",)),
)

MONITORING_MIGRATIONS: Migrations = {
    "duckdb": MONITORING_DUCKDB_MIGRATIONS,
    "postgresql": MONITORING_PG_MIGRATIONS,
}
