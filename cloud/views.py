"""Pure helpers between store values and API answers: device status, telemetry buckets.

No I/O: `now` and thresholds are arguments, so these are unit-testable without a server.
"""

from __future__ import annotations

import re
from typing import Any

from cloud.store import Bucket, DeviceInfo, Point
from common.model import ReadingFlag

_BUCKET = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

MIN_BUCKET_MS = 1000  # finer buckets than a second would just be raw points
MAX_BUCKETS = 100_000  # one chart never needs more; bounds the answer's size


class BadQuery(ValueError):
    """A query parameter that parses but makes no sense (-> 422 with the parameter's path)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_bucket(text: str) -> int:
    """'5m' / '1h' / '30s' / '1d' / '300' (seconds) / '500ms' -> bucket width in ms."""
    m = _BUCKET.match(text)
    if not m:
        raise BadQuery("bucket", f"not a duration: {text!r} (use e.g. 300, 30s, 5m, 1h, 1d)")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    if ms < MIN_BUCKET_MS:
        raise BadQuery("bucket", "bucket must be at least 1s")
    return ms


def time_range(
    now_ms: int, from_ms: int | None, to_ms: int | None, default_span_ms: int = 86_400_000
) -> tuple[int, int]:
    """[from, to) with defaults: to = now, from = to - 24 h."""
    hi = now_ms if to_ms is None else to_ms
    lo = hi - default_span_ms if from_ms is None else from_ms
    if lo >= hi:
        raise BadQuery("from", "'from' must be before 'to'")
    return lo, hi


def device_status(last_seen: int | None, now_ms: int, threshold_s: float) -> str:
    if last_seen is None:
        return "offline"
    return "online" if now_ms - last_seen <= threshold_s * 1000 else "offline"


def device_view(info: DeviceInfo, now_ms: int, threshold_s: float) -> dict[str, Any]:
    return {
        "device_id": info.device_id,
        "gateway_id": info.gateway_id,
        "type": info.type,
        "status": device_status(info.last_seen, now_ms, threshold_s),
        "last_seen": info.last_seen,
        "latest": dict(info.latest),
    }


def point_view(p: Point) -> dict[str, Any]:
    view: dict[str, Any] = {"ts": p.ts, "value": p.value}
    if p.flags:  # named, so a reader needs no bit table: e.g. ["GATEWAY_CLOCK_SKEWED"]
        view["flags"] = [f.name for f in ReadingFlag if f and f & p.flags]
    return view


def bucket_view(b: Bucket) -> dict[str, Any]:
    return {"ts": b.ts, "min": b.min, "max": b.max, "avg": b.avg, "count": b.count}
