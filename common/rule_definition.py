"""An alert rule as the system holds it: Rule, a frozen value in exactly the CONTRACT.md shape
that validates itself on construction, and parse_rule, which turns a client's rule document
into one (defaults for null optional fields, a derived name when none is given, unknown fields
refused) or raises InvalidRule listing every problem. Gateway and cloud share both, so a rule
means the same thing on either side."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from common.model import FieldError
from common.rule_validation import (
    AUTO_NAME,
    MAX_NAME_LENGTH,
    RULE_FIELDS,
    SCOPE_FIELDS,
    InvalidRule,
    Operator,
    Severity,
    Threshold,
    check_rule_fields,
    is_number,
)

# The fields a client may send in a rule document: every field of a rule. "id" and "version"
# are assigned by the server and are accepted (a client often sends back what it got) but ignored.
_KNOWN_FIELDS: Final = frozenset(RULE_FIELDS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule, in exactly the CONTRACT.md shape. Validated on construction."""

    id: str
    name: str
    metric: str
    operator: Operator
    threshold: Threshold  # None only for "nodata"
    for_seconds: float = 0.0
    hysteresis: float = 0.0
    severity: Severity = "warning"
    enabled: bool = True
    channels: tuple[str, ...] = ()
    version: int = 1
    # Scope: at most one; none means every subject (device or source) reporting the metric.
    device_id: str | None = None
    device_type: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.channels, list):  # a JSON list given directly: keep the value hashable
            object.__setattr__(self, "channels", tuple(self.channels))
        errors = check_rule_fields({f: getattr(self, f) for f in RULE_FIELDS})
        if errors:
            raise InvalidRule(errors)

    def to_dict(self) -> dict[str, Any]:
        """The CONTRACT.md JSON shape; only the scope field in use is included."""
        doc: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "metric": self.metric,
            "operator": self.operator,
            "threshold": self.threshold,
            "for_seconds": self.for_seconds,
            "hysteresis": self.hysteresis,
            "severity": self.severity,
            "enabled": self.enabled,
            "channels": list(self.channels),
            "version": self.version,
        }
        for name in SCOPE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    def applies_to(self, subject: str, device_type: str | None) -> bool:
        if self.device_id is not None:
            return subject == self.device_id
        if self.source is not None:
            return subject == self.source
        if self.device_type is not None:
            return device_type == self.device_type
        return True

    @property
    def fixed_subject(self) -> str | None:
        """The one subject a device_id- or source-scoped rule watches, else None."""
        return self.device_id if self.device_id is not None else self.source


_DEFAULTS: Final[Mapping[str, object]] = {
    "for_seconds": 0.0,
    "hysteresis": 0.0,
    "severity": "warning",
    "enabled": True,
    "channels": (),
}


def parse_rule(data: Mapping[str, Any], *, id: str, version: int) -> Rule:
    """Validate a client's rule document; InvalidRule (422) lists every problem found."""
    if not isinstance(data, Mapping):
        raise InvalidRule([FieldError("", "a rule must be a JSON object")])
    errors: list[FieldError] = [
        FieldError(_pointer(str(key)), "unknown field") for key in data if key not in _KNOWN_FIELDS
    ]
    values: dict[str, object] = {f: data.get(f) for f in RULE_FIELDS}
    # null means "the default" for optional fields, which makes PATCH-by-merge simple.
    for field_name, default in _DEFAULTS.items():
        if values[field_name] is None:
            values[field_name] = default
    if values["name"] is None:
        values["name"] = AUTO_NAME
    values["id"] = id
    values["version"] = version
    errors.extend(check_rule_fields(values))
    if errors:
        raise InvalidRule(errors)

    operator = cast(Operator, values["operator"])
    threshold = cast(Threshold, values["threshold"])
    if is_number(threshold):
        threshold = float(threshold)
    for_seconds = float(cast(float, values["for_seconds"]))
    metric = cast(str, values["metric"])
    name = values["name"]
    if name is AUTO_NAME:
        name = _default_name(metric, operator, threshold, for_seconds)
    return Rule(
        id=id,
        name=cast(str, name),
        metric=metric,
        operator=operator,
        threshold=threshold,
        for_seconds=for_seconds,
        hysteresis=float(cast(float, values["hysteresis"])),
        severity=cast(Severity, values["severity"]),
        enabled=cast(bool, values["enabled"]),
        channels=tuple(cast(Sequence[str], values["channels"])),
        version=version,
        device_id=cast("str | None", values["device_id"]),
        device_type=cast("str | None", values["device_type"]),
        source=cast("str | None", values["source"]),
    )


def _default_name(metric: str, operator: str, threshold: Threshold, for_seconds: float) -> str:
    if operator == "nodata":
        return f"no {metric} for {for_seconds:g}s"
    shown = json.dumps(threshold) if not is_number(threshold) else f"{threshold:g}"
    return f"{metric} {operator} {shown}"[:MAX_NAME_LENGTH]


def _pointer(key: str) -> str:
    """A JSON Pointer (RFC 6901) to a top-level member."""
    return "/" + key.replace("~", "~0").replace("/", "~1")
