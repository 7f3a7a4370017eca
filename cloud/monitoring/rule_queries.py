"""The monitoring store's alert rules (RuleQueries, one of the query groups MonitoringStore
is made of): create, update and delete under a new org rule version each, tombstones for
deletes, and rule_changes_since, which tells a gateway exactly what changed after the version it
has. The first rule of an org also starts its monitoring cursors, so the loop judges only what
arrives once the org has rules."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from cloud.monitoring.records import RuleChanges, empty_engines, encode_engines
from cloud.storage.sql import SqlConn, SqlDatabase, first
from common.rules import Rule, parse_rule


def _rule(row: tuple[Any, ...]) -> Rule:
    """(id, version, doc) -> Rule. The doc was validated when stored."""
    return parse_rule(json.loads(row[2]), id=row[0], version=int(row[1]))


class RuleQueries:
    db: SqlDatabase  # set by MonitoringStore

    @staticmethod
    def _bump(c: SqlConn, org_id: str, now_ms: int) -> int:
        # One statement reads and bumps: concurrent rule changes of an org (other workers)
        # queue on the row's lock and each gets its own version, committed in version order.
        version = int(
            first(
                c.execute(
                    "INSERT INTO rule_versions VALUES (?, 1) ON CONFLICT (org_id)"
                    " DO UPDATE SET version = rule_versions.version + 1 RETURNING version",
                    [org_id],
                ).fetchall()
            )[0]
        )
        # The loop judges only what arrives once an org has rules: start its cursors now.
        max_seq = first(
            c.execute(
                "SELECT coalesce(max(seq), 0) FROM metrics WHERE org_id = ?", [org_id]
            ).fetchall()
        )
        c.execute(
            "INSERT INTO monitor_state VALUES (?, ?, ?, ?, ?) ON CONFLICT (org_id) DO NOTHING",
            [org_id, encode_engines(empty_engines()), int(max_seq[0]), now_ms, now_ms],
        )
        return version

    async def create_rule(self, org_id: str, rule: Rule, now_ms: int) -> Rule:
        """Store a validated rule under a new org version; returns it with that version."""

        def go(c: SqlConn) -> Rule:
            stored = replace(rule, version=self._bump(c, org_id, now_ms))
            c.execute(
                "INSERT INTO alert_rules VALUES (?, ?, ?, false, ?, ?, ?)",
                [org_id, stored.id, stored.version, json.dumps(stored.to_dict()), now_ms, now_ms],
            )
            return stored

        return await self.db.run(self.db.transaction(go))

    async def update_rule(self, org_id: str, rule: Rule, now_ms: int) -> Rule | None:
        """Replace a live rule (None when it does not exist or was deleted)."""

        def go(c: SqlConn) -> Rule | None:
            if self._live(c, org_id, rule.id) is None:
                return None
            stored = replace(rule, version=self._bump(c, org_id, now_ms))
            c.execute(
                "UPDATE alert_rules SET version = ?, doc = ?, updated_at = ?"
                " WHERE org_id = ? AND id = ?",
                [stored.version, json.dumps(stored.to_dict()), now_ms, org_id, rule.id],
            )
            return stored

        return await self.db.run(self.db.transaction(go))

    async def delete_rule(self, org_id: str, rule_id: str, now_ms: int) -> bool:
        """Tombstone the rule (kept for rule_changes_since); False when there was none."""

        def go(c: SqlConn) -> bool:
            if self._live(c, org_id, rule_id) is None:
                return False
            version = self._bump(c, org_id, now_ms)
            c.execute(
                "UPDATE alert_rules SET version = ?, deleted = true, updated_at = ?"
                " WHERE org_id = ? AND id = ?",
                [version, now_ms, org_id, rule_id],
            )
            return True

        return await self.db.run(self.db.transaction(go))

    @staticmethod
    def _live(c: SqlConn, org_id: str, rule_id: str) -> Rule | None:
        row = first(
            c.execute(
                "SELECT id, version, doc FROM alert_rules"
                " WHERE org_id = ? AND id = ? AND NOT deleted",
                [org_id, rule_id],
            ).fetchall()
        )
        return _rule(row) if row else None

    async def get_rule(self, org_id: str, rule_id: str) -> Rule | None:
        return await self.db.run(lambda c: self._live(c, org_id, rule_id))

    async def list_rules(self, org_id: str) -> list[Rule]:
        return await self.db.run(lambda c: self._rules(c, org_id))

    @staticmethod
    def _rules(c: SqlConn, org_id: str) -> list[Rule]:
        rows = c.execute(
            "SELECT id, version, doc FROM alert_rules WHERE org_id = ? AND NOT deleted"
            " ORDER BY created_at, id",
            [org_id],
        ).fetchall()
        return [_rule(r) for r in rows]

    async def rule_changes_since(self, org_id: str, version: int) -> RuleChanges:
        def go(c: SqlConn) -> RuleChanges:
            row = first(
                c.execute("SELECT version FROM rule_versions WHERE org_id = ?", [org_id]).fetchall()
            )
            rows = c.execute(
                "SELECT id, version, doc, deleted FROM alert_rules"
                " WHERE org_id = ? AND version > ? ORDER BY version",
                [org_id, version],
            ).fetchall()
            return RuleChanges(
                version=int(row[0]) if row else 0,
                rules=tuple(_rule(r) for r in rows if not r[3]),
                deleted=tuple((r[0], int(r[1])) for r in rows if r[3]),
            )

        return await self.db.run(self.db.transaction(go))

    async def rules_using_channel(self, org_id: str, channel_id: str) -> list[str]:
        rules = await self.list_rules(org_id)
        return [r.id for r in rules if channel_id in r.channels]
