"""What makes an alert rule valid, in one place: its operators, severities, scopes and limits
(the cloud's request schemas quote them too), InvalidRule (a 422 listing every problem with its
JSON Pointer), and check_rule_fields, which finds every problem with a complete set of rule
fields at once rather than stopping at the first. Rule construction (common.rule_definition)
and the request schemas call it; it has no other job."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal, TypeGuard

from common.model import FieldError
from common.problem import Problem, ProblemError

Operator = Literal[">", ">=", "<", "<=", "==", "!=", "nodata"]
Severity = Literal["info", "warning", "critical"]
Threshold = float | bool | str | None

ORDERING_OPERATORS: Final = frozenset({">", ">=", "<", "<="})
EQUALITY_OPERATORS: Final = frozenset({"==", "!="})
OPERATORS: Final = (">", ">=", "<", "<=", "==", "!=", "nodata")
SEVERITIES: Final = ("info", "warning", "critical")
SCOPE_FIELDS: Final = ("device_id", "device_type", "source")

METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # CONTRACT.md "Telemetry payloads"
MAX_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 200
MAX_STRING_VALUE: Final = 256  # the longest string value a device may send (CONTRACT.md)
MAX_FOR_SECONDS: Final = 1_000_000_000  # 31 years: any real duration, and finite in ms


class InvalidRule(ProblemError):
    """A rule document with one or more problems, each reported with its JSON Pointer (422)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(
            Problem(
                slug="invalid-rule",
                title="Invalid alert rule",
                status=422,
                detail="; ".join(f"{e.path or '/'}: {e.message}" for e in errors),
                errors=tuple(errors),
            )
        )


RULE_FIELDS: Final = (
    "id",
    "name",
    "metric",
    "operator",
    "threshold",
    "for_seconds",
    "hysteresis",
    "severity",
    "enabled",
    "channels",
    "version",
    *SCOPE_FIELDS,
)
AUTO_NAME: Final = object()  # parse_rule: no name given, derive one once the rest is valid

# Each check reports through this: (JSON Pointer, message).
_Bad = Callable[[str, str], None]


def check_rule_fields(v: Mapping[str, object]) -> list[FieldError]:
    """Every problem with a complete set of rule fields (missing required ones are None), in
    field order: id, version, name, metric, operator, threshold, for_seconds, hysteresis,
    severity, enabled, channels, scope."""
    errors: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    _check_identity(v, bad)
    operator = _check_metric_and_operator(v, bad)
    _check_threshold(v["threshold"], operator, bad)
    _check_timing(v, operator, bad)
    _check_delivery(v, bad)
    _check_scope(v, bad)
    return errors


def _check_identity(v: Mapping[str, object], bad: _Bad) -> None:
    rule_id = v["id"]
    if not isinstance(rule_id, str) or not 0 < len(rule_id) <= MAX_ID_LENGTH:
        bad("/id", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    version = v["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("/version", "must be an integer >= 1")
    name = v["name"]
    if name is not AUTO_NAME and (
        not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH
    ):
        bad("/name", f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters")


def _check_metric_and_operator(v: Mapping[str, object], bad: _Bad) -> object:
    """Checks metric and operator; returns the operator, or None when it is not one."""
    metric = v["metric"]
    if metric is None:
        bad("/metric", "required")
    elif not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        bad("/metric", "must match [A-Za-z0-9_.-]{1,64}")

    operator = v["operator"]
    if operator is None:
        bad("/operator", "required")
    elif not isinstance(operator, str) or operator not in OPERATORS:
        shown = repr(operator)[:40]
        bad("/operator", f"unknown operator {shown}; expected one of {', '.join(OPERATORS)}")
        operator = None  # an object or a list is not hashable: no set lookups below
    return operator


def _check_threshold(threshold: object, operator: object, bad: _Bad) -> None:
    if operator in ORDERING_OPERATORS:
        if threshold is None:
            bad("/threshold", f"required for operator {operator!r}")
        elif not is_number(threshold) or not is_finite(threshold):
            bad("/threshold", f"must be a finite number for operator {operator!r}")
    elif operator in EQUALITY_OPERATORS:
        if threshold is None:
            bad("/threshold", f"required for operator {operator!r}")
        elif is_number(threshold):
            if not is_finite(threshold):
                bad("/threshold", "must be a finite number")
        elif isinstance(threshold, str):
            if len(threshold) > MAX_STRING_VALUE:
                bad("/threshold", f"strings are at most {MAX_STRING_VALUE} characters")
        elif not isinstance(threshold, bool):
            bad("/threshold", "must be a number, a boolean or a string")
    elif operator == "nodata" and threshold is not None:
        bad("/threshold", "a nodata rule takes no threshold")


def _check_timing(v: Mapping[str, object], operator: object, bad: _Bad) -> None:
    for_seconds = v["for_seconds"]
    if not is_number(for_seconds) or not is_finite(for_seconds) or for_seconds < 0:
        bad("/for_seconds", "must be a finite number >= 0")
    elif for_seconds > MAX_FOR_SECONDS:
        # the engine counts in ms: 1e308 s made it fail on every pass (infinity)
        bad("/for_seconds", f"must be at most {MAX_FOR_SECONDS:.0e} (31 years)")
    elif operator == "nodata" and for_seconds <= 0:
        bad("/for_seconds", "a nodata rule needs for_seconds > 0")

    hysteresis = v["hysteresis"]
    if not is_number(hysteresis) or not is_finite(hysteresis) or hysteresis < 0:
        bad("/hysteresis", "must be a finite number >= 0")
    elif hysteresis > 0 and operator in OPERATORS and operator not in ORDERING_OPERATORS:
        bad("/hysteresis", "applies only to the operators >, >=, <, <=")


def _check_delivery(v: Mapping[str, object], bad: _Bad) -> None:
    if v["severity"] not in SEVERITIES:
        bad("/severity", f"must be one of {', '.join(SEVERITIES)}")
    if not isinstance(v["enabled"], bool):
        bad("/enabled", "must be true or false")

    channels = v["channels"]
    if not isinstance(channels, list | tuple):
        bad("/channels", "must be an array of channel ids")
    else:
        for i, channel in enumerate(channels):
            if not isinstance(channel, str) or not 0 < len(channel) <= MAX_ID_LENGTH:
                bad(f"/channels/{i}", "must be a non-empty channel id")


def _check_scope(v: Mapping[str, object], bad: _Bad) -> None:
    given = []
    for scope in SCOPE_FIELDS:
        value = v[scope]
        if value is None:
            continue
        given.append(scope)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
            bad(f"/{scope}", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if len(given) > 1:
        for scope in given:
            bad(f"/{scope}", "give at most one of device_id, device_type, source")


def is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_finite(x: int | float) -> bool:
    """Finite and within a float's range: a JSON integer may have 400 digits, which
    math.isfinite (and float()) cannot take."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False
