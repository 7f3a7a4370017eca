"""Pure helpers between store values and API answers: device status, telemetry buckets.

No I/O: `now` and thresholds are arguments, so these are unit-testable without a server.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from cloud.storage.interface import Bucket, DeviceInfo, Point
from common.model import ReadingFlag

if TYPE_CHECKING:
    from cloud.app.settings import GatewayStateSettings

# A bucket of at least one second: digits and an optional unit, nothing else. The OpenAPI
# document carries this very pattern, so what it promises and what is accepted are one thing.
BUCKET_PATTERN = r"^(?:0*[1-9][0-9]*(?:s|m|h|d)?|0*[1-9][0-9]{3,}ms)$"
_BUCKET = re.compile(r"([0-9]+)(ms|s|m|h|d)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

MIN_BUCKET_MS = 1000  # finer buckets than a second would just be raw points
# Wider than any time range (2^62 ms is 146 million years): one bucket, and no overflow of
# DuckDB's BIGINT in the bucket arithmetic.
MAX_BUCKET_MS = 2**62
MAX_BUCKETS = 100_000  # one chart never needs more; bounds the answer's size (oldest first)


class BadQuery(ValueError):
    """A query parameter that parses but makes no sense (-> 422 with the parameter's path)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_bucket(text: str) -> int:
    """'5m' / '1h' / '30s' / '1d' / '300' (seconds) / '1500ms' -> bucket width in ms."""
    m = _BUCKET.fullmatch(text)
    if not m:
        raise BadQuery("bucket", f"not a duration: {text!r} (use e.g. 300, 30s, 5m, 1h, 1d)")
    ms = int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    if ms < MIN_BUCKET_MS:
        raise BadQuery("bucket", "bucket must be at least 1s")
    return min(ms, MAX_BUCKET_MS)


def time_range(
    now_ms: int, from_ms: int | None, to_ms: int | None, default_span_ms: int = 86_400_000
) -> tuple[int, int]:
    """[from, to) with defaults: to = now, from = to - 24 h. A `from` not before `to` is an
    empty range (no points), not an error: the API's schema cannot say that one query
    parameter must be below another, so the answer must not depend on it."""
    hi = now_ms if to_ms is None else to_ms
    lo = hi - default_span_ms if from_ms is None else from_ms
    return lo, hi


def device_status(last_seen: int | None, now_ms: int, threshold_s: float) -> str:
    if last_seen is None:
        return "offline"
    return "online" if now_ms - last_seen <= threshold_s * 1000 else "offline"


def gateway_state(
    last_contact: int | None,
    last_batch: int | None,
    backlog: int | None,
    now_ms: int,
    limits: GatewayStateSettings,
) -> str:
    """`online`, `lagging` or `offline` (CloudSettings.gateway_state says why these limits).

    offline: no accepted request within `offline_after_s` (refused batches record nothing);
    lagging: silent for more than `lag_after_s`, or more than a full batch waiting, or
    readings waiting (backlog > 0 at its last batch) and no batch within `lag_after_s`.
    """
    if last_contact is None or now_ms - last_contact > limits.offline_after_s * 1000:
        return "offline"
    lag_ms = limits.lag_after_s * 1000
    if now_ms - last_contact > lag_ms:
        return "lagging"
    if backlog is not None and backlog > limits.lag_backlog_readings:
        return "lagging"
    if backlog and (last_batch is None or now_ms - last_batch > lag_ms):
        return "lagging"
    return "online"


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
