"""The configuration document the cloud sends a gateway (GET /api/sync/config), decoded into
typed values before anything of it is applied: a document with a wrong field is refused whole,
with a message naming the field, and changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.problem import ProblemError
from common.rules import Rule, parse_rule


class CloudConfigError(ValueError):
    """The document is not what the contract says; nothing of it was applied."""


@dataclass(frozen=True, slots=True)
class CloudConfig:
    version: int
    rules: tuple[Rule, ...] = ()  # added or changed in the cloud since the last version
    deleted_rules: tuple[str, ...] = ()
    device_types: tuple[dict[str, Any], ...] | None = None  # None: the document has none
    revoked_devices: tuple[str, ...] = ()
    alert_acks: tuple[str, ...] = ()  # alerts acknowledged in the cloud


def parse_cloud_config(doc: object, since: int) -> CloudConfig:
    """The typed document; `since` is the version asked for (the new version by default)."""
    if not isinstance(doc, Mapping):
        raise CloudConfigError("the configuration document is not an object")
    version = doc.get("version", since)
    if type(version) is not int or version < 0:
        raise CloudConfigError(f"version must be a non-negative integer, not {version!r:.40}")
    rules: list[Rule] = []
    deleted: list[str] = []
    for i, body in enumerate(_list(doc, "rules")):
        where = f"rules[{i}]"
        if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
            raise CloudConfigError(f"{where} must be an object with a string id")
        if body.get("deleted"):
            deleted.append(body["id"])
            continue
        rule_version = body.get("version")
        if type(rule_version) is not int:
            raise CloudConfigError(f"{where}.version must be an integer")
        fields = {k: v for k, v in body.items() if k not in ("id", "version", "deleted")}
        try:
            rules.append(parse_rule(fields, id=body["id"], version=rule_version))
        except ProblemError as exc:
            raise CloudConfigError(f"{where}: {exc.problem.detail}") from None
    types = None
    if "device_types" in doc:
        types = tuple(_objects(doc, "device_types"))
    return CloudConfig(
        version=version,
        rules=tuple(rules),
        deleted_rules=tuple(deleted),
        device_types=types,
        revoked_devices=tuple(_strings(doc, "revoked_devices")),
        alert_acks=tuple(_strings(doc, "alert_acks")),
    )


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise CloudConfigError(f"{key} must be a list")
    return value


def _strings(doc: Mapping[str, Any], key: str) -> list[str]:
    values = _list(doc, key)
    if not all(isinstance(v, str) for v in values):
        raise CloudConfigError(f"{key} must be a list of strings")
    return values


def _objects(doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    values = _list(doc, key)
    if not all(isinstance(v, dict) for v in values):
        raise CloudConfigError(f"{key} must be a list of objects")
    return values
