"""The dashboard's device list as JSON text, written by the database in one statement.

Why: GET /api/dashboard lists every device of the org with its latest values (1,000 devices x
10 metrics: ~270 kB). Built in Python, each request fetched 1,000 rows, parsed 1,000 small
JSON objects (`latest`), made 1,000 dicts and serialised them again: ~14 ms of one process's
CPU per request beside ~10 ms in the database (docs/decisions/cloud-postgres-readings.md,
"The dashboard's device list"). Here the statement concatenates the array itself, so the API
process only splices the text into the answer. Same SQL on both engines (`||`, `string_agg`,
`to_json`); CAST(to_json(x) AS TEXT) escapes strings and writes numbers as each engine always
did for `latest`.

The text is what `[device_view(d, now, threshold) for d in list_devices(org)]` serialises to
(cloud/api/views.py), key for key and in the same order (tests/cloud/test_device_json.py).
"""

from __future__ import annotations

import math

from cloud.storage.sql import SqlConn


def _text(expr: str) -> str:
    """A column as JSON text; SQL NULL as `null`."""
    return f"coalesce(CAST(to_json({expr}) AS TEXT), 'null')"


# One device: {"device_id":..,"gateway_id":..,"type":..,"status":..,"last_seen":..,"latest":{..}}
_DEVICE = (
    "'{\"device_id\":' || " + _text("d.device_id")
    + " || ',\"gateway_id\":' || " + _text("d.gateway_id")
    + " || ',\"type\":' || " + _text("d.type")
    + " || ',\"status\":' || CASE WHEN d.last_seen >= ? THEN '\"online\"' ELSE '\"offline\"' END"
    + " || ',\"last_seen\":' || " + _text("d.last_seen")
    + " || ',\"latest\":' || coalesce(l.latest, '{}') || '}'"
)  # fmt: skip

# Each device's latest values as one JSON object: {"metric": value, ...}.
_LATEST = (
    "SELECT device_id, '{' || string_agg(CAST(to_json(metric) AS TEXT) || ':' || coalesce("
    "CAST(to_json(value_num) AS TEXT), CAST(to_json(value_bool) AS TEXT),"
    " CAST(to_json(value_str) AS TEXT), 'null'), ',') || '}' AS latest"
    " FROM latest WHERE org_id = ? GROUP BY device_id"
)

DEVICE_LIST_SQL = (
    f"SELECT coalesce('[' || string_agg({_DEVICE}, ',' ORDER BY d.device_id) || ']', '[]')"
    f" FROM devices d LEFT JOIN ({_LATEST}) l ON l.device_id = d.device_id"
    " WHERE d.org_id = ?"
)


def online_since(now_ms: int, threshold_s: float) -> int:
    """The oldest last_seen that is still online: views.device_status says online when
    now - last_seen <= threshold, i.e. last_seen >= now - threshold (whole milliseconds)."""
    return math.ceil(now_ms - threshold_s * 1000)


def device_list_json(c: SqlConn, org_id: str, now_ms: int, threshold_s: float) -> str:
    """Every device of the org, ordered by id, as the dashboard's JSON array."""
    row = c.execute(DEVICE_LIST_SQL, [online_since(now_ms, threshold_s), org_id, org_id]).fetchone()
    return str(row[0]) if row is not None and row[0] is not None else "[]"
