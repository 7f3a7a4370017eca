"""What an alert keeps so it can explain itself (issue 15, item 2), as the "alert_detail"
migrations of the cloud database (their own component, beside "core"):

- alerts.gateway_id: where the rule was evaluated (NULL: in the cloud);
- alerts.rule_name, alerts.rule_doc: the rule as it was when the alert was raised (JSON, the
  CONTRACT rule shape), so a rule edited or deleted later does not rewrite why it fired;
- alerts.acknowledged_by, alerts.resolved_by: who (a user's e-mail, "rule", "gateway <id>");
- alert_events: the alert's history, one row per raise, acknowledgement and resolution, with
  who did it; the bulk actions' audit trail;
- gateway_rules: the rules each gateway evaluates itself, as it last synced them (listed
  read-only beside the cloud's rules).

PostgreSQL also gets the indexes the alert list's plans use (bench/alert_list.py,
docs/decisions/alert-list.md): the default order (newest first) per org, per org and state,
and the alert's history by alert. DuckDB gets none: its zone maps and a scan of 100,000 alerts
answer within the budget, and ART indexes cost disk and every insert."""

from __future__ import annotations

from cloud.storage.alert_query import SORT_SQL
from cloud.storage.sql import Migration, Migrations


def _steps(t: str) -> tuple[str, ...]:
    return (
        f"ALTER TABLE alerts ADD COLUMN gateway_id {t}",
        f"ALTER TABLE alerts ADD COLUMN rule_name {t}",
        f"ALTER TABLE alerts ADD COLUMN rule_doc {t}",
        f"ALTER TABLE alerts ADD COLUMN acknowledged_by {t}",
        f"ALTER TABLE alerts ADD COLUMN resolved_by {t}",
        f"""CREATE TABLE alert_events (
            org_id {t} NOT NULL, alert_id {t} NOT NULL, at_ms BIGINT NOT NULL,
            kind {t} NOT NULL, actor {t}, detail {t})""",
        f"""CREATE TABLE gateway_rules (
            org_id {t} NOT NULL, gateway_id {t} NOT NULL, rule_id {t} NOT NULL,
            doc {t} NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (gateway_id, rule_id))""",
    )


ALERT_DETAIL_MIGRATIONS: Migrations = {
    "duckdb": (Migration(1, _steps("VARCHAR")),),
    "postgresql": (
        Migration(
            1,
            (
                *_steps("TEXT"),
                "CREATE INDEX alerts_org_started ON alerts (org_id, started_at DESC, id DESC)",
                "CREATE INDEX alerts_org_state_started"
                " ON alerts (org_id, state, started_at DESC, id DESC)",
                "CREATE INDEX alert_events_alert ON alert_events (alert_id, at_ms)",
                "CREATE INDEX gateway_rules_org ON gateway_rules (org_id)",
            ),
        ),
        # "Most severe first" sorted 100,000 alerts on each request (a parallel seq scan and
        # a top-N sort, ~100 ms): this index has the sort's own expression (SORT_SQL), so
        # the first page is read off it. Alerts about a gateway's devices: by device.
        Migration(
            2,
            (
                f"CREATE INDEX alerts_org_severity ON alerts (org_id, {SORT_SQL['severity']} DESC,"
                " id DESC)",
                "CREATE INDEX alerts_org_gateway ON alerts (org_id, gateway_id)",
                "CREATE INDEX alerts_org_device ON alerts (org_id, device_id)",
            ),
        ),
    ),
}

# Alerts a gateway sent before they carried their gateway (sync_alerts has it): run by the
# sync store, after its own tables exist.
ALERT_ORIGIN_MIGRATIONS: Migrations = {
    engine: (
        Migration(
            1,
            (
                "UPDATE alerts SET gateway_id = s.gateway_id FROM sync_alerts s"
                " WHERE s.alert_id = alerts.id AND alerts.gateway_id IS NULL",
            ),
        ),
    )
    for engine in ("duckdb", "postgresql")
}
