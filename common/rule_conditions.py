"""A rule compiled for the engine: CompiledRule holds three predicates, accepts (the values
the rule judges at all), breaches (the condition holds) and clears (an open episode ends, past
the threshold by the hysteresis), built once per rule by compile_rule so the engine's hot loop
makes no decisions about operators. same_meaning says whether an edited rule still watches the
same thing, so its open episodes may stay open."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from common.model import Value
from common.rule_definition import Rule
from common.rule_validation import EQUALITY_OPERATORS, Threshold

# Predicates take Any: the engine calls them only on values `accepts` let through.
_Predicate = Callable[[Any], bool]


def _always(_value: Any) -> bool:
    return True


def _is_comparable_number(value: Any) -> bool:
    # Ordering operators ignore bools and strings; NaN compares false both ways, so ignore it too
    # rather than let it hold an episode open.
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _same(a: Value, b: Threshold) -> bool:
    """Equality without Python's True == 1: a boolean only equals a boolean, a string a string."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    for_ms: int
    nodata: bool
    accepts: _Predicate
    breaches: _Predicate
    clears: _Predicate  # only asked while an episode is active


def compile_rule(rule: Rule) -> CompiledRule:
    op, thr, hys = rule.operator, rule.threshold, rule.hysteresis
    for_ms = round(rule.for_seconds * 1000)
    if op == "nodata":
        return CompiledRule(rule, for_ms, True, _always, _always, _always)
    if op in EQUALITY_OPERATORS:
        equal: _Predicate = lambda v: _same(v, thr)  # noqa: E731
        differ: _Predicate = lambda v: not _same(v, thr)  # noqa: E731
        if op == "==":
            return CompiledRule(rule, for_ms, False, _always, equal, differ)
        return CompiledRule(rule, for_ms, False, _always, differ, equal)
    t = float(cast(float, thr))
    predicates: dict[str, tuple[_Predicate, _Predicate]] = {
        ">": (lambda v: v > t, lambda v: v <= t - hys),
        ">=": (lambda v: v >= t, lambda v: v < t - hys),
        "<": (lambda v: v < t, lambda v: v >= t + hys),
        "<=": (lambda v: v <= t, lambda v: v > t + hys),
    }
    breaches, clears = predicates[op]
    return CompiledRule(rule, for_ms, False, _is_comparable_number, breaches, clears)


def same_meaning(old: Rule, new: Rule) -> bool:
    """Whether an open episode of `old` is still an episode of `new` (it may end on the next
    reading if the threshold moved, but it is about the same thing for the same subjects)."""
    return (
        old.metric == new.metric
        and (old.operator == "nodata") == (new.operator == "nodata")
        and (old.device_id, old.device_type, old.source)
        == (new.device_id, new.device_type, new.source)
    )
