"""The store's reports for the CLI, the status page and `gateway status`: counts, the newest
values, alerts, rejections, auth failures, drops and counters."""

from __future__ import annotations

import json
import time
from typing import Any

from common.model import Value
from edge.storage.base import filters, row_value
from edge.storage.records import AlertRow
from edge.storage.sync_reads import SyncReads


class Reports(SyncReads):
    def drops(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM drops ORDER BY occurred_at DESC LIMIT ?", [limit])

    def latest_values(self, window: int = 100_000) -> dict[str, dict[str, tuple[int, Value]]]:
        """device -> metric -> (ts, value) of its newest reading among the last `window`
        stored (by seq). Bounded on purpose: the local status page polls this, and a scan of
        a Pi's whole readings table would cost seconds; a device silent for longer than the
        window shows its last_seen (devices table) without values."""
        with self._lock:
            rows = self._con.execute(
                "SELECT device_id, metric, arg_max(ts, seq), arg_max(value_num, seq), "
                "arg_max(value_bool, seq), arg_max(value_str, seq) FROM readings "
                "WHERE seq > ? GROUP BY device_id, metric ORDER BY device_id, metric",
                [self._next_seq - 1 - window],
            ).fetchall()
        out: dict[str, dict[str, tuple[int, Value]]] = {}
        for dev, met, ts, vnum, vbool, vstr in rows:
            out.setdefault(dev, {})[met] = (int(ts), row_value(vnum, vbool, vstr))
        return out

    def count_readings(self, device_id: str | None = None) -> int:
        where, params = filters(device_id=device_id)
        with self._lock:
            return int(
                self._con.execute(f"SELECT count(*) FROM readings {where}", params).fetchall()[0][0]
            )

    def alerts(self, state: str | None = None) -> list[AlertRow]:
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        with self._lock:
            rows = self._con.execute(
                "SELECT id, rule_id, subject, metric, severity, state, value, started_at, "
                f"acknowledged_at, resolved_at FROM alerts {where} ORDER BY started_at, id",
                params,
            ).fetchall()
        return [
            AlertRow(
                id=r[0],
                rule_id=r[1],
                subject=r[2],
                metric=r[3],
                severity=r[4],
                state=r[5],
                value=json.loads(r[6]) if r[6] is not None else None,
                started_at=r[7],
                acknowledged_at=r[8],
                resolved_at=r[9],
            )
            for r in rows
        ]

    def rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT occurred_at AS at, device_id, transport, status, title, detail, errors, "
            "payload_sha256, payload_size FROM rejections ORDER BY occurred_at DESC LIMIT ?",
            [limit],
            json_cols=("errors",),
        )

    def auth_failures(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT occurred_at AS at, kind, transport, address, username, client_id, reason "
            "FROM auth_failures ORDER BY occurred_at DESC LIMIT ?",
            [limit],
        )

    def counters(self) -> dict[str, int]:
        with self._lock:
            rows = self._con.execute(
                "SELECT name, sum(value) FROM counters GROUP BY name ORDER BY name"
            ).fetchall()
        return {str(n): int(v) for n, v in rows}

    def _dicts(
        self, sql: str, params: list[Any], json_cols: tuple[str, ...] = ()
    ) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._con.execute(sql, params)
            names = [d[0] for d in cur.description or []]
            rows = cur.fetchall()
        out = [dict(zip(names, row, strict=True)) for row in rows]
        for item in out:
            for col in json_cols:
                if item.get(col) is not None:
                    item[col] = json.loads(item[col])
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            q = self._con.execute
            readings = int(q("SELECT count(*) FROM readings").fetchall()[0][0])
            devices = q(
                "SELECT status, count(*) FROM devices GROUP BY status ORDER BY status"
            ).fetchall()
            active_alerts = int(
                q("SELECT count(*) FROM alerts WHERE state != 'resolved'").fetchall()[0][0]
            )
            rejections = int(q("SELECT count(*) FROM rejections").fetchall()[0][0])
            auth = int(q("SELECT count(*) FROM auth_failures").fetchall()[0][0])
        cursor, _ = self.sync_cursor()
        backlog, oldest = self.sync_backlog(cursor)
        return {
            "readings_stored": readings,
            "last_seq": self._next_seq - 1,
            "devices": {str(s): int(n) for s, n in devices},
            "active_alerts": active_alerts,
            "rejections": rejections,
            "auth_failures": auth,
            # Readings above the acknowledged cursor (all of them until the gateway enrolls);
            # the caller knows whether it is enrolled and sets "state".
            "sync": {
                "state": "not enrolled",
                "backlog_readings": backlog,
                "oldest_unsynced_at": oldest,
                "oldest_unsynced_age_s": (
                    None if oldest is None else max(0, time.time_ns() // 1_000_000 - oldest) // 1000
                ),
                **self.sync_outcome(),
            },
        }

    def readings(
        self, *, device_id: str | None = None, metric: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        where, params = filters(device_id=device_id, metric=metric)
        with self._lock:
            rows = self._con.execute(
                "SELECT seq, device_id, metric, ts, received_at, value_num, value_bool, "
                f"value_str, flags, dev_seq FROM readings {where} ORDER BY seq DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        out = []
        for seq, dev, met, ts, rec, vnum, vbool, vstr, flags, dev_seq in rows:
            value = row_value(vnum, vbool, vstr)
            out.append(
                {
                    "seq": seq,
                    "device_id": dev,
                    "metric": met,
                    "ts": ts,
                    "received_at": rec,
                    "value": value,
                    "flags": flags,
                    "dev_seq": dev_seq,
                }
            )
        return out
