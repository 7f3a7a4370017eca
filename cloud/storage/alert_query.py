"""One page of an org's alerts, searched, filtered and sorted in the database (issue 15, item 4).

The alerts page used to load every alert an org ever had; at 100,000 alerts that is tens of MB.
A page asks for `limit` rows after a keyset cursor (the sort value and the id of the last row
shown), so a page deep in the list costs what the first one costs and alerts raised meanwhile
neither repeat nor skip rows. The total count runs with the same filters. The same SQL runs on
DuckDB and PostgreSQL: `strpos(lower(...))` for the substring (no LIKE escaping of the user's
`%` and `_`), and every sort expression is NOT NULL (coalesced), so the keyset comparison
needs no NULL cases.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from cloud.storage.sql import SqlConn

SortKey = Literal["started_at", "severity", "state", "subject", "metric", "gateway"]
# The SQL of each sort key (never user text in SQL); each is NOT NULL.
SORT_SQL: dict[str, str] = {
    "started_at": "started_at",
    # a rank, so that "most severe first" is a plain descending sort
    "severity": "(CASE severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2"
    " WHEN 'info' THEN 1 ELSE 0 END)",
    "state": "(CASE state WHEN 'active' THEN 3 WHEN 'acknowledged' THEN 2 ELSE 1 END)",
    "subject": "coalesce(device_id, source, '')",
    "metric": "metric",
    "gateway": "coalesce(gateway_id, '')",
}
_INT_SORTS = frozenset({"started_at", "severity", "state"})
MAX_LIMIT = 200
DEFAULT_LIMIT = 50


class BadCursor(ValueError):
    """The cursor was not made by this query (another sort, or tampered with)."""


@dataclass(frozen=True, slots=True)
class AlertQuery:
    search: str | None = None  # substring of device/source, metric, rule name or gateway id
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    gateway_id: str | None = None  # about one of its devices (so also: evaluated there)
    device_id: str | None = None
    device_type: str | None = None
    from_ms: int | None = None  # started_at >= from_ms
    to_ms: int | None = None  # started_at < to_ms
    sort: SortKey = "started_at"
    descending: bool = True
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class AlertPage:
    rows: list[tuple[Any, ...]]  # in the column order the caller asked for
    total: int
    next: str | None  # the cursor of the page after this one; None on the last page


def encode_cursor(sort: str, value: object, alert_id: str) -> str:
    raw = json.dumps([sort, value, alert_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(sort: str, cursor: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_sort, value, alert_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor("not a cursor this API gave out") from exc
    want_int = sort in _INT_SORTS
    if (
        got_sort != sort
        or not isinstance(alert_id, str)
        or (want_int and (type(value) is not int or not -(2**63) <= value < 2**63))
        or (not want_int and not isinstance(value, str))
    ):
        raise BadCursor("the cursor belongs to another sort order; start from the first page")
    return value, alert_id


def _where(org_id: str, q: AlertQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = ["org_id = ?"]
    params: list[Any] = [org_id]
    if q.search:
        needle = q.search.lower()
        clauses.append(
            "(strpos(lower(coalesce(device_id, source, '')), ?) > 0"
            " OR strpos(lower(metric), ?) > 0"
            " OR strpos(lower(coalesce(rule_name, '')), ?) > 0"
            " OR strpos(lower(coalesce(gateway_id, '')), ?) > 0)"
        )
        params += [needle] * 4
    for column, values in (("state", q.states), ("severity", q.severities)):
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    if q.gateway_id is not None:
        # About one of the gateway's devices: that includes every alert the gateway raised
        # itself (sync makes each alert's device the gateway's). Not "OR gateway_id = ?":
        # the OR cost PostgreSQL a hashed subplan over every row, 3x the semi-join
        # (bench/alert_list.py, docs/decisions/alert-list.md).
        clauses.append(
            "device_id IN (SELECT device_id FROM devices WHERE org_id = ? AND gateway_id = ?)"
        )
        params += [org_id, q.gateway_id]
    if q.device_id is not None:
        clauses.append("device_id = ?")
        params.append(q.device_id)
    if q.device_type is not None:
        clauses.append("device_id IN (SELECT device_id FROM devices WHERE org_id = ? AND type = ?)")
        params += [org_id, q.device_type]
    if q.from_ms is not None:
        clauses.append("started_at >= ?")
        params.append(q.from_ms)
    if q.to_ms is not None:
        clauses.append("started_at < ?")
        params.append(q.to_ms)
    return " AND ".join(clauses), params


def alert_page(c: SqlConn, columns: str, org_id: str, q: AlertQuery) -> AlertPage:
    """The page (rows of `columns`) and the total, on one connection (the caller's db.run)."""
    where, params = _where(org_id, q)
    key = SORT_SQL[q.sort]
    direction, cmp = ("DESC", "<") if q.descending else ("ASC", ">")
    page_where, page_params = where, list(params)
    if q.cursor is not None:
        value, after_id = decode_cursor(q.sort, q.cursor)
        page_where += f" AND ({key} {cmp} ? OR ({key} = ? AND id {cmp} ?))"
        page_params += [value, value, after_id]
    rows = c.execute(
        f"SELECT {columns}, {key} AS sort_value FROM alerts WHERE {page_where}"
        f" ORDER BY {key} {direction}, id {direction} LIMIT ?",
        [*page_params, q.limit + 1],
    ).fetchall()
    total = c.execute(f"SELECT count(*) FROM alerts WHERE {where}", params).fetchall()[0][0]
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    nxt = None
    if more and rows:
        last = rows[-1]
        nxt = encode_cursor(q.sort, last[-1], last[0])  # the id is the first column
    return AlertPage([tuple(r[:-1]) for r in rows], int(total), nxt)
