"""One page of an org's devices, searched, filtered and sorted in the database (issue 15).

The overview used to load every device with its latest values (10,000 devices: ~1.9 MB and
hundreds of ms); a page asks the database for `limit` rows and aggregates `latest` for those
rows only. The same SQL runs on DuckDB and PostgreSQL: `strpos(lower(...))` for the substring
(no LIKE escaping of the user's `%` and `_`), `FILTER` for the counts, `NULLS LAST` so devices
that never reported sort after those that did, whatever the direction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from cloud.storage.interface import DeviceInfo
from cloud.storage.sql import SqlConn

SortKey = Literal["device_id", "last_seen", "type", "gateway_id"]
SORT_KEYS: tuple[str, ...] = ("device_id", "last_seen", "type", "gateway_id")
StatusFilter = Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """What the caller asked for. `online_since_ms`: a device seen at or after it is online
    (now minus the org's threshold, computed by the caller, so the store has no clock)."""

    online_since_ms: int
    search: str | None = None  # case-insensitive substring of the device id or its type
    status: StatusFilter | None = None
    gateway_id: str | None = None
    device_type: str | None = None
    sort: SortKey = "device_id"
    descending: bool = False
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True, slots=True)
class DevicePage:
    devices: list[DeviceInfo]
    total: int  # devices matching the filters
    all_devices: int  # the org's devices, unfiltered (the overview's summary)
    online: int  # of those, online now
    types: list[str]  # the org's device types, for the filter's choices


def _where(q: DeviceQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = ["org_id = ?"]
    params: list[Any] = []
    if q.search:
        clauses.append(
            "(strpos(lower(device_id), ?) > 0 OR strpos(lower(coalesce(type, '')), ?) > 0)"
        )
        params += [q.search.lower(), q.search.lower()]
    if q.status == "online":
        clauses.append("last_seen >= ?")
        params.append(q.online_since_ms)
    elif q.status == "offline":
        clauses.append("(last_seen IS NULL OR last_seen < ?)")
        params.append(q.online_since_ms)
    if q.gateway_id is not None:
        clauses.append("gateway_id = ?")
        params.append(q.gateway_id)
    if q.device_type is not None:
        clauses.append("type = ?")
        params.append(q.device_type)
    return " AND ".join(clauses), params


def _order(q: DeviceQuery, alias: str = "") -> str:
    column = q.sort if q.sort in SORT_KEYS else "device_id"  # never user text in SQL
    direction = "DESC" if q.descending else "ASC"
    tiebreak = "" if column == "device_id" else f", {alias}device_id {direction}"
    return f"{alias}{column} {direction} NULLS LAST{tiebreak}"


def device_page(c: SqlConn, latest_json: str, org_id: str, q: DeviceQuery) -> DevicePage:
    """The page and its counts, on one connection (the caller's db.run)."""
    where, params = _where(q)
    rows = c.execute(
        f"SELECT device_id, gateway_id, type, last_seen FROM devices WHERE {where}"
        f" ORDER BY {_order(q)} LIMIT ? OFFSET ?",
        [org_id, *params, q.limit, q.offset],
    ).fetchall()
    latest: dict[str, Any] = {}
    if rows:
        # the page's ids as a literal list: a CTE joined back was evaluated twice (DuckDB),
        # 49 ms against 25 ms for this pair at 10,000 devices
        marks = ", ".join("?" * len(rows))
        latest = dict(
            c.execute(
                f"SELECT device_id, {latest_json} FROM latest"
                f" WHERE org_id = ? AND device_id IN ({marks}) GROUP BY device_id",
                [org_id, *(r[0] for r in rows)],
            ).fetchall()
        )
    devices = [
        DeviceInfo(r[0], r[1], r[2], r[3], json.loads(latest[r[0]]) if latest.get(r[0]) else {})
        for r in rows
    ]
    total_row = c.execute(
        f"SELECT count(*) FROM devices WHERE {where}", [org_id, *params]
    ).fetchall()
    counts = c.execute(
        "SELECT count(*), count(*) FILTER (WHERE last_seen >= ?) FROM devices WHERE org_id = ?",
        [q.online_since_ms, org_id],
    ).fetchall()
    types = c.execute(
        "SELECT DISTINCT type FROM devices WHERE org_id = ? AND type IS NOT NULL ORDER BY type",
        [org_id],
    ).fetchall()
    return DevicePage(
        devices,
        int(total_row[0][0]),
        int(counts[0][0]),
        int(counts[0][1] or 0),
        [str(t[0]) for t in types],
    )
