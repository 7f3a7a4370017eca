"""A device's raw readings in a time range as CSV, streamed (issue 15: export).

Rows are read CHUNK at a time per metric, by time (keyset: the next chunk starts after the
last row's ts, one index range per chunk on either engine), and written as they come: memory
stays one chunk whatever the range, and the first bytes leave before the last row is read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

from cloud.storage.interface import CloudStore

CHUNK = 5000
HEADER = ("device_id", "metric", "ts_ms", "time_utc", "value", "flags")


def _cell(value: object) -> object:
    """A device's text value as data: a leading =, +, - or @ would be a formula to a
    spreadsheet (CSV injection), so such text gets a leading apostrophe."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def csv_rows(
    store: CloudStore,
    org_id: str,
    device_id: str,
    metrics: Sequence[str],
    from_ms: int,
    to_ms: int,
) -> AsyncIterator[bytes]:
    """CSV text, one chunk of rows per yield: metric by metric, oldest first."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")  # RFC 4180
    out.writerow(HEADER)
    for metric in metrics:
        lo = from_ms
        while lo < to_ms:
            points = await store.telemetry_points(org_id, device_id, metric, lo, to_ms, CHUNK)
            for p in points:
                row = (_cell(device_id), _cell(metric), p.ts, _iso(p.ts), _cell(p.value), p.flags)
                out.writerow(row)
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
            if len(points) < CHUNK:
                break
            lo = points[-1].ts + 1
    rest = buf.getvalue()
    if rest:
        yield rest.encode()
