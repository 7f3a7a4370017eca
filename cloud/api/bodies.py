"""The request bodies that endpoints take as raw JSON (validated by our own parsers, which
report every problem with its JSON Pointer), documented by hand for /openapi.json.

Each schema says exactly what its parser accepts: a request it admits is not refused for its
shape (only for the state it meets: 404, 409), and one it forbids is refused (400/422).
schemathesis holds both directions (tests/cloud/test_cloud_schema.py). Constraints between fields
are written as `anyOf` branches, one per kind of rule or channel.

PATCH bodies are merged into the stored object, so whether the result is valid can depend on
what is stored: a patch that fits some object of its kind (its schema) but not the stored one
is a 409 conflict, one that fits none is a 422 (see `fits_some`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from cloud.monitoring.ingest import MAX_ITEMS, MAX_TS, SOURCE
from cloud.notify.channels import (
    EMAIL_PATTERN,
    MAX_EMAIL,
    MAX_NAME,
    MAX_SECRET,
    MAX_URL,
    MIN_SECRET,
    NAME_PATTERN,
    PY_SPACES,
    URL_PATTERN,
)
from common.problem import Problem, ProblemError
from common.rules import (
    EQUALITY_OPERATORS,
    MAX_FOR_SECONDS,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_STRING_VALUE,
    METRIC_NAME,
    OPERATORS,
    ORDERING_OPERATORS,
    SEVERITIES,
)
from common.validation import METRIC_TYPES

_MAX_FLOAT = sys.float_info.max
# A finite JSON number: an integer of hundreds of digits has no float and is refused too.
NUMBER: dict[str, Any] = {"type": "number", "minimum": -_MAX_FLOAT, "maximum": _MAX_FLOAT}
NON_NEGATIVE: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": _MAX_FLOAT}
METRIC: dict[str, Any] = {"type": "string", "pattern": f"^{METRIC_NAME.pattern}$"}
_ID: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
_ANY: dict[str, Any] = {"description": "ignored (set by the server)"}
_NULL: dict[str, Any] = {"type": "null"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """`openapi_extra` for an operation taking `schema` as its JSON body."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def fits_some(
    patch: Mapping[str, Any], bases: list[dict[str, Any]], parse: Callable[..., Any]
) -> bool:
    """Whether `patch`, merged into one of `bases` (a valid object of each kind), parses: then
    the patch is valid on its own and only the stored object it meets makes it fail."""
    for base in bases:
        try:
            parse({**base, **patch})
        except ProblemError:
            continue
        return True
    return False


def patch_conflict(kind: str, exc: ProblemError) -> ProblemError:
    """The 409 for a patch that fits some object of its kind but not the stored one (`exc`,
    what parsing the merged object reported); `kind` names it: "rule", "channel"."""
    return ProblemError(
        Problem(
            f"{kind}-conflict",
            "Conflict",
            409,
            f"the patch does not fit this {kind}: {exc.problem.detail}",
            errors=exc.problem.errors,
        )
    )


# -- alert rules (common.rules.parse_rule) ------------------------------------------------------

_NO_HYSTERESIS: dict[str, Any] = {"enum": [0, None]}
_RULE_FIELDS: dict[str, Any] = {
    "id": _ANY,
    "version": _ANY,
    "name": nullable(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_NAME_LENGTH,
            # something besides Python's whitespace (str.strip)
            "pattern": f"[^\\x09-\\x0d\\x1c-\\x20{PY_SPACES}]",
            "description": "default: derived from the condition",
        }
    ),
    "metric": METRIC,
    "operator": {"type": "string", "enum": list(OPERATORS)},
    "threshold": nullable(
        {
            "anyOf": [
                NUMBER,
                {"type": "boolean"},
                {"type": "string", "maxLength": MAX_STRING_VALUE},
            ]
        }
    ),
    "for_seconds": nullable({"type": "number", "minimum": 0, "maximum": MAX_FOR_SECONDS}),
    "hysteresis": nullable(NON_NEGATIVE),
    "severity": {"enum": [*SEVERITIES, None]},
    "enabled": {"type": ["boolean", "null"]},
    "channels": nullable({"type": "array", "items": _ID}),
    "device_id": nullable(_ID),
    "device_type": nullable(_ID),
    "source": nullable(_ID),
}


def _rule_kinds(*, post: bool) -> list[dict[str, Any]]:
    """The three kinds of rule: what operator, threshold, for_seconds and hysteresis may be
    together. A POST names its kind (operator and its required fields); a patch may leave
    any of them to the stored rule."""

    def kind(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"properties": properties, **({"required": required} if post else {})}

    return [
        kind(
            {"operator": {"enum": sorted(ORDERING_OPERATORS)}, "threshold": NUMBER},
            ["operator", "threshold"],
        ),
        kind(
            {
                "operator": {"enum": sorted(EQUALITY_OPERATORS)},
                "threshold": {
                    "anyOf": [
                        NUMBER,
                        {"type": "boolean"},
                        {"type": "string", "maxLength": MAX_STRING_VALUE},
                    ]
                },
                "hysteresis": _NO_HYSTERESIS,
            },
            ["operator", "threshold"],
        ),
        kind(
            {
                "operator": {"const": "nodata"},
                "threshold": _NULL,
                "for_seconds": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_FOR_SECONDS,
                },
                "hysteresis": _NO_HYSTERESIS,
            },
            ["operator", "for_seconds"],
        ),
    ]


# At most one scope: any two of them null or absent.
_ONE_SCOPE: list[dict[str, Any]] = [
    {"properties": {"device_type": _NULL, "source": _NULL}},
    {"properties": {"device_id": _NULL, "source": _NULL}},
    {"properties": {"device_id": _NULL, "device_type": _NULL}},
]


def rule_body_schema(*, post: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": _RULE_FIELDS,
        "additionalProperties": False,
        "allOf": [{"anyOf": _rule_kinds(post=post)}, {"anyOf": _ONE_SCOPE}],
        "description": "null means the default for optional fields; at most one of device_id,"
        " device_type, source; the channels must be the organization's (else 409)",
    }
    if post:
        schema["required"] = ["metric", "operator"]
    return schema


# valid rules of each kind, for fits_some(): a patch of one kind of rule meets its own kind
RULE_BASES: list[dict[str, Any]] = [
    {"metric": "m", "operator": ">", "threshold": 0, "for_seconds": 1},
    {"metric": "m", "operator": "==", "threshold": 0, "for_seconds": 1},
    {"metric": "m", "operator": "nodata", "threshold": None, "for_seconds": 1},
]


# -- metrics from models and jobs (cloud.monitoring.ingest.parse_metrics) -------------------------

METRICS_BODY_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_ITEMS,
    "items": {
        "type": "object",
        "required": ["source", "metric", "value"],
        "additionalProperties": False,
        "properties": {
            "source": {"type": "string", "pattern": f"^{SOURCE.pattern}$"},
            "metric": METRIC,
            "value": {"anyOf": [NUMBER, {"type": "boolean"}]},
            "ts": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TS - 1,
                "description": "ms since the epoch (default: now)",
            },
        },
    },
}


# -- notification channels (cloud.notify.channels.parse_channel) -------------------------------

_CHANNEL_FIELDS: dict[str, Any] = {
    "id": _ANY,
    "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME, "pattern": NAME_PATTERN},
    "type": {"type": "string", "enum": ["webhook", "email"]},
    "url": nullable(
        {
            "type": "string",
            "maxLength": MAX_URL,
            "pattern": URL_PATTERN,
            "description": "webhook: http(s) URL",
        }
    ),
    "to": nullable(
        {
            "type": "string",
            "maxLength": MAX_EMAIL,
            "pattern": EMAIL_PATTERN,
            "description": "email: recipient address",
        }
    ),
    "secret": nullable(
        {
            "type": "string",
            "minLength": MIN_SECRET,
            "maxLength": MAX_SECRET,
            "description": "webhook: HMAC key (write-only)",
        }
    ),
}


def channel_body_schema(*, post: bool) -> dict[str, Any]:
    def kind(name: str, properties: dict[str, Any], address: str) -> dict[str, Any]:
        required = {"required": ["type", address]} if post else {}
        return {"properties": {"type": {"const": name}, **properties}, **required}

    schema: dict[str, Any] = {
        "type": "object",
        "properties": _CHANNEL_FIELDS,
        "additionalProperties": False,
        "anyOf": [
            kind("webhook", {"url": _CHANNEL_FIELDS["url"]["anyOf"][0], "to": _NULL}, "url"),
            kind("email", {"to": _CHANNEL_FIELDS["to"]["anyOf"][0], "url": _NULL, "secret": _NULL},
                 "to"),
        ],
    }  # fmt: skip
    if post:
        schema["required"] = ["name", "type"]
    return schema


CHANNEL_BASES: list[dict[str, Any]] = [
    {"name": "n", "type": "webhook", "url": "http://example.com/"},
    {"name": "n", "type": "email", "to": "ops@example.com"},
]


# -- device types (common.validation.device_type_from_dict) -------------------------------------

_UNIT: dict[str, Any] = {"type": ["string", "null"]}
DEVICE_TYPE_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"description": "ignored: the name is the path's"},
        "allow_undeclared": {"type": "boolean", "description": "default true"},
        "metrics": {
            "type": "object",
            "propertyNames": METRIC,
            "additionalProperties": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["type"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"const": "number"},
                            "unit": _UNIT,
                            "min": nullable(NUMBER),
                            "max": nullable(NUMBER),
                        },
                    },
                    {
                        "type": "object",
                        "required": ["type"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": [t for t in METRIC_TYPES if t != "number"]},
                            "unit": _UNIT,
                            "min": _NULL,
                            "max": _NULL,
                        },
                    },
                ],
            },
            "description": "metric name -> {type, unit, min, max}; min may not be above max"
            " (a range the schema cannot state: 400)",
        },
    },
}
