"""Alert rules and the pure engine that evaluates them, as one import for the gateway and the
cloud: every name is re-exported from the modules beside this one, each with one job: what
makes a rule valid (common.rule_validation), the Rule value and parse_rule
(common.rule_definition), a rule compiled to predicates (common.rule_conditions), the engine
and its episode semantics (common.rule_engine) and the engine's restorable snapshot
(common.rule_state)."""

from __future__ import annotations

from common.rule_definition import Rule, parse_rule
from common.rule_engine import Observation, RuleEngine, Transition, TransitionKind
from common.rule_state import EngineState, TrackState
from common.rule_validation import (
    EQUALITY_OPERATORS,
    MAX_FOR_SECONDS,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_STRING_VALUE,
    METRIC_NAME,
    OPERATORS,
    ORDERING_OPERATORS,
    SCOPE_FIELDS,
    SEVERITIES,
    InvalidRule,
    Operator,
    Severity,
    Threshold,
)

__all__ = [
    "EQUALITY_OPERATORS",
    "MAX_FOR_SECONDS",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_STRING_VALUE",
    "METRIC_NAME",
    "OPERATORS",
    "ORDERING_OPERATORS",
    "SCOPE_FIELDS",
    "SEVERITIES",
    "EngineState",
    "InvalidRule",
    "Observation",
    "Operator",
    "Rule",
    "RuleEngine",
    "Severity",
    "Threshold",
    "TrackState",
    "Transition",
    "TransitionKind",
    "parse_rule",
]
