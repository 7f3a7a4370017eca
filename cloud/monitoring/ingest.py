"""Validation of `POST /api/monitoring/metrics` bodies (pure): JSON in, MetricPoints or every
field error with its JSON Pointer out. A request with any bad item stores nothing."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

from common.model import FieldError
from common.problem import Problem, ProblemError
from common.rules import METRIC_NAME

# "kind:name", e.g. model:churn-v3 or job:nightly-etl. The kind prefix keeps sources apart
# from device ids in alerts and lets a rule say what it watches.
SOURCE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}:[A-Za-z0-9_.:@/+-]{1,96}")
MAX_ITEMS: Final = 1000  # same as a device message (CONTRACT.md "Limits")
MAX_TS: Final = 2**53  # beyond what a JSON number carries exactly

MetricValue = float | bool


@dataclass(frozen=True, slots=True)
class MetricPoint:
    source: str
    metric: str
    value: MetricValue
    ts: int  # ms since the epoch (the job's time; defaults to the cloud's receive time)


class InvalidMetrics(ProblemError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(
            Problem(
                slug="invalid-metrics",
                title="Invalid metrics",
                status=400,
                detail=f"{len(errors)} problem(s); nothing was stored",
                errors=tuple(errors[:100]),
            )
        )


def _finite(x: int | float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        return False


# one check per field of a metric point, each with its own error:
def parse_metrics(body: Any, now_ms: int) -> list[MetricPoint]:  # noqa: PLR0912
    """Every item or nothing: raises InvalidMetrics listing the problems."""
    if not isinstance(body, list):
        raise InvalidMetrics([FieldError("", "must be a JSON array of metric items")])
    if not body:
        raise InvalidMetrics([FieldError("", "must contain at least one item")])
    if len(body) > MAX_ITEMS:
        raise InvalidMetrics([FieldError("", f"at most {MAX_ITEMS} items per request")])
    errors: list[FieldError] = []
    points: list[MetricPoint] = []
    for i, item in enumerate(body):
        at = f"/{i}"
        if not isinstance(item, dict):
            errors.append(FieldError(at, "must be an object with source, metric, value, ts"))
            continue
        before = len(errors)
        unknown = sorted(str(k) for k in item if k not in ("source", "metric", "value", "ts"))
        errors.extend(FieldError(f"{at}/{k}", "unknown field") for k in unknown)
        source, metric, value = item.get("source"), item.get("metric"), item.get("value")
        ts = item.get("ts", now_ms)
        if isinstance(ts, float) and ts.is_integer() and abs(ts) < MAX_TS:
            ts = int(ts)  # 1.7e12 is an integer to JSON (Schema) too
        if not isinstance(source, str) or not SOURCE.fullmatch(source):
            errors.append(FieldError(f"{at}/source", 'must look like "model:churn-v3"'))
        if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
            errors.append(FieldError(f"{at}/metric", "must match [A-Za-z0-9_.-]{1,64}"))
        if isinstance(value, bool):
            pass
        elif isinstance(value, int | float):
            if not _finite(value):
                errors.append(FieldError(f"{at}/value", "must be a finite number"))
        else:
            errors.append(FieldError(f"{at}/value", "must be a number or a boolean"))
        if isinstance(ts, bool) or not isinstance(ts, int) or not 0 < ts < MAX_TS:
            errors.append(FieldError(f"{at}/ts", "must be an integer, ms since the epoch"))
        if len(errors) == before:
            assert isinstance(source, str) and isinstance(metric, str) and isinstance(ts, int)
            assert isinstance(value, int | float)
            shown: MetricValue = value if isinstance(value, bool) else float(value)
            points.append(MetricPoint(source, metric, shown, ts))
    if errors:
        raise InvalidMetrics(errors)
    return points
