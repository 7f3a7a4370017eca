"""Telemetry validation: RawReadings in, Readings out, or one PayloadError listing every problem.

Pure and on the hot path (every reading passes here): no I/O, the receive time is passed in,
the name pattern is compiled once and the per-reading loop does no avoidable work.
Whole-message semantics: if any reading is invalid nothing is accepted, so a device never has
to guess which half of a message was stored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

import orjson

from common.codecs import (
    DEFAULT_LIMITS,
    ContentFormat,
    Limits,
    PayloadError,
    Source,
    decode_parsed,
    locate,
    parse,
)
from common.model import FieldError, RawReading, Reading, ReadingFlag, Value

MetricType = Literal["number", "boolean", "string"]
METRIC_TYPES: tuple[str, ...] = get_args(MetricType)
METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: later is garbage, not a clock


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What a device type declares about one metric; min/max apply to numbers only."""

    type: MetricType
    unit: str | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.type not in METRIC_TYPES:
            raise ValueError(f"type must be one of {', '.join(METRIC_TYPES)}, not {self.type!r}")
        if self.unit is not None and not isinstance(self.unit, str):
            raise ValueError("unit must be a string")
        for bound in ("min", "max"):
            limit = getattr(self, bound)
            if limit is None:
                continue
            if self.type != "number":
                raise ValueError(f"{bound} applies only to metrics of type number")
            if not isinstance(limit, int | float) or isinstance(limit, bool):
                raise ValueError(f"{bound} must be a number")
            if not math.isfinite(limit):
                raise ValueError(f"{bound} must be finite")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")

    def label(self, metric: str) -> str:
        """'temperature (°C)': how messages name the metric."""
        return f"{metric} ({self.unit})" if self.unit else metric


@dataclass(frozen=True, slots=True)
class DeviceTypeSpec:
    name: str
    metrics: Mapping[str, MetricSpec]
    allow_undeclared: bool = True  # False: a metric the type does not declare is rejected


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """Device timestamps outside these bounds are kept but flagged, never rejected."""

    max_future_skew_ms: int = 24 * 3600 * 1000
    min_valid_ts_ms: int = 946_684_800_000  # 2000-01-01: earlier means a device without a clock

    def __post_init__(self) -> None:
        # validate() relies on this: a ts inside [min_valid_ts_ms, ...] is never negative.
        if self.min_valid_ts_ms < 0 or self.max_future_skew_ms < 0:
            raise ValueError("max_future_skew_ms and min_valid_ts_ms must not be negative")


DEFAULT_POLICY = ValidationPolicy()

_TYPE_KEYS = frozenset({"name", "metrics", "allow_undeclared"})
_METRIC_KEYS = frozenset({"type", "unit", "min", "max"})


def device_type_from_dict(d: Mapping[str, object]) -> DeviceTypeSpec:
    """A DeviceTypeSpec from parsed JSON/TOML; ValueError says which field is wrong and why."""
    if not isinstance(d, Mapping):
        raise ValueError("a device type must be a table/object")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a device type needs a non-empty string 'name'")
    where = f"device type {name!r}"
    _no_unknown_keys(d, _TYPE_KEYS, where)
    allow = d.get("allow_undeclared", True)
    if not isinstance(allow, bool):
        raise ValueError(f"{where}: allow_undeclared must be true or false")
    raw_metrics = d.get("metrics", {})
    if not isinstance(raw_metrics, Mapping):
        raise ValueError(f"{where}: metrics must be a table/object of metric name -> spec")
    metrics: dict[str, MetricSpec] = {}
    for metric, raw in raw_metrics.items():
        if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
            raise ValueError(f"{where}: invalid metric name {metric!r}: use [A-Za-z0-9_.-]{{1,64}}")
        metrics[metric] = _metric_from_dict(raw, f"{where}: metric {metric!r}")
    return DeviceTypeSpec(name, MappingProxyType(metrics), allow)


def _metric_from_dict(raw: object, where: str) -> MetricSpec:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table/object with at least 'type'")
    _no_unknown_keys(raw, _METRIC_KEYS, where)
    if "type" not in raw:
        raise ValueError(f"{where}: 'type' is required ({', '.join(METRIC_TYPES)})")
    try:
        return MetricSpec(raw["type"], raw.get("unit"), raw.get("min"), raw.get("max"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _no_unknown_keys(d: Mapping[Any, object], known: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in d if key not in known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")


class _Invalid(Exception):
    """One problem with one field of one reading (internal: collected into a PayloadError)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # "metric", "value" or "ts": a Source attribute
        self.message = message


def validate(
    device_id: str,
    raws: Sequence[RawReading],
    *,
    received_at_ms: int,
    spec: DeviceTypeSpec | None,
    policy: ValidationPolicy = DEFAULT_POLICY,
    limits: Limits = DEFAULT_LIMITS,
    sources: Callable[[], Sequence[Source]] | None = None,
) -> list[Reading]:
    """Check a whole message; raises PayloadError(400) listing every invalid reading.

    `sources` is called only when there are errors, to point them into the payload
    (codecs.locate); without it paths are "/{reading index}/{metric|value|ts}".
    """
    metrics = spec.metrics if spec is not None else _NO_METRICS
    strict = spec is not None and not spec.allow_undeclared
    earliest = policy.min_valid_ts_ms
    latest = received_at_ms + policy.max_future_skew_ms
    max_string = limits.max_string
    known_names, isfinite = _KNOWN_NAMES, math.isfinite
    out: list[Reading] = []
    errors: list[tuple[int, _Invalid]] = []
    seen: dict[tuple[str, int], Value] = {}
    # The common case is inlined (15k readings/s); helpers take the rest. The loop stops at a
    # reading's first problem, and _problems then finds all of that reading's problems.
    for i, raw in enumerate(raws):
        try:
            metric = raw.metric
            if type(metric) is not str or metric not in known_names:
                _check_name(metric)
            value = raw.value
            if type(value) is not float or not isfinite(value):
                value = _value(value, max_string)
            declared = metrics.get(metric)
            if declared is not None:
                _check_declared(metric, value, declared)
            elif strict:
                raise _undeclared(metric, spec)
            ts = raw.ts
            if ts is None:
                ts, flags = received_at_ms, _FROM_GATEWAY
            elif type(ts) is int and earliest <= ts <= latest:
                flags = _NO_FLAGS
            else:
                flags = _ts_flags(ts, earliest, latest)
            previous = seen.setdefault((metric, ts), value)
            if previous is not value and (type(previous) is not type(value) or previous != value):
                raise _Invalid("value", f"conflicting values for {metric} at ts {ts}")
        except _Invalid as first:
            problems = _problems(raw, spec, max_string) or [first]
            errors.extend((i, problem) for problem in problems)
            continue
        out.append(Reading(device_id, metric, ts, value, received_at_ms, flags, raw.seq))
    if errors:
        _raise(errors, len(raws), sources)
    return out


_NO_METRICS: Mapping[str, MetricSpec] = MappingProxyType({})
_FROM_GATEWAY = ReadingFlag.TS_FROM_GATEWAY  # enum attribute lookups are slow in a hot loop
_NO_FLAGS = ReadingFlag.NONE
_BEFORE_2000 = ReadingFlag.TS_BEFORE_2000
_IN_FUTURE = ReadingFlag.TS_IN_FUTURE
# Names that already matched METRIC_NAME: a set lookup is ~10x cheaper than the regex. Devices
# reuse a handful of names; the bound keeps random names from growing it without limit.
_KNOWN_NAMES: set[str] = set()
_KNOWN_NAMES_MAX = 4096


def _check_name(metric: object) -> None:
    if type(metric) is not str or METRIC_NAME.fullmatch(metric) is None:
        raise _Invalid("metric", _bad_name(metric))
    if len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.add(metric)


def _problems(raw: RawReading, spec: DeviceTypeSpec | None, max_string: int) -> list[_Invalid]:
    """Every problem of one reading (the slow path, run only for readings that failed)."""
    found: list[_Invalid] = []
    metric = raw.metric
    named = type(metric) is str and METRIC_NAME.fullmatch(metric) is not None
    if not named:
        found.append(_Invalid("metric", _bad_name(metric)))
    declared = spec.metrics.get(metric) if named and spec is not None else None
    if named and spec is not None and declared is None and not spec.allow_undeclared:
        found.append(_undeclared(metric, spec))
    try:
        value = _value(raw.value, max_string)
        if declared is not None:
            _check_declared(metric, value, declared)
    except _Invalid as exc:
        found.append(exc)
    if raw.ts is not None:
        try:
            _ts_flags(raw.ts, 0, MAX_TS_MS)
        except _Invalid as exc:
            found.append(exc)
    return found


def _undeclared(metric: str, spec: DeviceTypeSpec | None) -> _Invalid:
    type_name = spec.name if spec is not None else ""
    return _Invalid("metric", f"metric {metric!r} is not declared for device type {type_name!r}")


def _value(value: object, max_string: int) -> Value:
    """Numbers become float, bools and strings stay; anything else is an error."""
    if type(value) is float:
        if math.isfinite(value):
            return value
        raise _Invalid("value", "value must be a finite number")
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise _Invalid("value", "number out of range") from None
    if type(value) is bool or type(value) is str:
        return value if type(value) is bool else _string(value, max_string)
    raise _Invalid("value", f"unsupported value type ({type(value).__name__})")


def _string(value: str, max_string: int) -> str:
    if len(value) > max_string:
        raise _Invalid("value", f"string of {len(value)} characters; the limit is {max_string}")
    if not value.isascii():
        try:  # lone surrogates (JSON "\ud800") parse but cannot be stored as UTF-8
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid("value", "string is not valid Unicode") from None
    return value


_KIND = {float: "number", bool: "boolean", str: "string"}


def _check_declared(metric: str, value: Value, spec: MetricSpec) -> None:
    kind = _KIND[type(value)]
    if kind != spec.type:
        raise _Invalid("value", f"expected a {spec.type} for {spec.label(metric)}, got a {kind}")
    if spec.min is not None and value < spec.min:  # type: ignore[operator]  # a number here
        raise _Invalid("value", _out_of_range(value, "below min", spec.min, metric, spec))
    if spec.max is not None and value > spec.max:  # type: ignore[operator]  # a number here
        raise _Invalid("value", _out_of_range(value, "above max", spec.max, metric, spec))


def _out_of_range(value: Value, what: str, bound: float, metric: str, spec: MetricSpec) -> str:
    return f"value {_number(value)} {what} {_number(bound)} for {spec.label(metric)}"


def _number(x: object) -> str:
    """120.0 -> '120', 21.5 -> '21.5': numbers as a person would write them."""
    number = float(x)  # type: ignore[arg-type]  # only called with numbers
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return repr(number)


def _ts_flags(ts: object, earliest: int, latest: int) -> ReadingFlag:
    if type(ts) is not int:
        raise _Invalid("ts", "ts must be an integer (ms since the epoch)")
    if ts < 0:
        raise _Invalid("ts", "ts must not be negative")
    if ts > MAX_TS_MS:
        raise _Invalid("ts", f"ts {ts} is after the year 9999")
    if ts < earliest:
        return _BEFORE_2000
    if ts > latest:
        return _IN_FUTURE
    return _NO_FLAGS


def _bad_name(metric: object) -> str:
    if type(metric) is not str:
        return f"metric name must be a string, not {type(metric).__name__}"
    shown = metric if len(metric) <= 70 else metric[:67] + "..."
    return f"invalid metric name {shown!r}: use 1-64 characters from A-Z a-z 0-9 _ . -"


def _raise(
    errors: list[tuple[int, _Invalid]],
    count: int,
    sources: Callable[[], Sequence[Source]] | None,
) -> None:
    located = sources() if sources is not None else None
    if located is not None and len(located) != count:
        located = None  # not this message's sources: fall back rather than point wrongly
    # dict.fromkeys drops repeats: a bad "ts" shared by ten values is one error, not ten.
    unique = dict.fromkeys(
        FieldError(
            getattr(located[i], exc.field) if located is not None else f"/{i}/{exc.field}",
            exc.message,
        )
        for i, exc in errors
    )
    raise PayloadError.invalid(list(unique), len(unique))


def decode_and_validate(
    device_id: str,
    body: bytes,
    fmt: ContentFormat,
    *,
    received_at_ms: int,
    spec: DeviceTypeSpec | None,
    policy: ValidationPolicy = DEFAULT_POLICY,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Reading]:
    """Bytes -> Readings in one call: the receive time also anchors SenML relative times."""
    if fmt is ContentFormat.JSON and len(body) <= limits.max_bytes:
        plain = plain_json(device_id, body, received_at_ms, spec, policy, limits)
        if plain is not None:
            return plain
    doc = parse(body, fmt, limits)
    if type(doc) is dict and (fmt is ContentFormat.JSON or fmt is ContentFormat.CBOR):
        readings = _plain_message(device_id, doc, received_at_ms, spec, policy, limits)
        if readings is not None:
            return readings
    raws = decode_parsed(doc, fmt, limits, now_ms=received_at_ms)
    return validate(
        device_id,
        raws,
        received_at_ms=received_at_ms,
        spec=spec,
        policy=policy,
        limits=limits,
        sources=lambda: locate(body, fmt, limits, now_ms=received_at_ms),
    )


_INT_AS_FLOAT = 2**53  # ints up to this convert to float exactly (and never overflow)


def plain_json(
    device_id: str,
    body: bytes,
    received_at_ms: int,
    spec: DeviceTypeSpec | None,
    policy: ValidationPolicy,
    limits: Limits,
) -> list[Reading] | None:
    """The plain message's readings parsed by orjson (0.5 us where the strict parser, which
    refuses duplicate keys, takes 3.5 us: a sixth of the gateway's work per message), or None
    for the strict path to decide.

    orjson keeps a duplicate key's last value. In a plain message every string is a key (its
    values are numbers), so a document naming a key twice has more quotes than twice its
    keys and is handed to the strict parser, which refuses it as before."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # the strict parser says what is wrong, or accepts it
        return None
    if type(doc) is not dict:
        return None
    readings = _plain_message(device_id, doc, received_at_ms, spec, policy, limits)
    if readings is None:
        return None
    keys = len(doc) + (len(doc["values"]) if "values" in doc else 0)
    return readings if body.count(b'"') == 2 * keys else None


# the hot path inlined: each check hands the message back:
def _plain_message(  # noqa: PLR0911, PLR0912
    device_id: str,
    doc: dict[Any, Any],
    received_at_ms: int,
    spec: DeviceTypeSpec | None,
    policy: ValidationPolicy,
    limits: Limits,
) -> list[Reading] | None:
    """The Readings of the message most devices send, `{"ts": ms, "values": {name: number}}`
    or flat `{name: number}`, straight from the parsed document: the same readings decode()
    and validate() would make, without a RawReading each. None for anything else (other keys,
    a ts that gets a flag, strings, booleans, a name not validated before, a declared metric
    out of range): the general path then decides, with its error messages."""
    if "values" in doc:
        values = doc["values"]
        ts = doc.get("ts")
        if (
            type(values) is not dict
            or type(ts) is not int
            or len(doc) != 2
            or not policy.min_valid_ts_ms <= ts <= received_at_ms + policy.max_future_skew_ms
        ):
            return None
        flags = _NO_FLAGS
    elif "ts" in doc or "seq" in doc:  # reserved: an error in a flat object
        return None
    else:
        values, ts, flags = doc, received_at_ms, _FROM_GATEWAY
    if not values or len(values) > limits.max_readings:
        return None
    metrics = spec.metrics if spec is not None else _NO_METRICS
    strict = spec is not None and not spec.allow_undeclared
    known = _KNOWN_NAMES
    out: list[Reading] = []
    for name, raw in values.items():
        if name not in known:
            return None
        t = type(raw)
        if t is int and -_INT_AS_FLOAT <= raw <= _INT_AS_FLOAT:
            value = float(raw)
        elif t is float and math.isfinite(raw):
            value = raw
        else:
            return None
        if metrics:
            declared = metrics.get(name)
            if declared is None:
                if strict:
                    return None
            elif (
                declared.type != "number"
                or (declared.min is not None and value < declared.min)
                or (declared.max is not None and value > declared.max)
            ):
                return None
        out.append(Reading(device_id, name, ts, value, received_at_ms, flags, None))
    return out
