"""Administrative operations on a gateway store, shared by the CLI (gateway stopped) and the
admin API (gateway running). Pure functions of a store plus inputs; the broker side effects
(pushing credentials into a live Mosquitto) are the caller's.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

from common.problem import ProblemError
from common.rules import parse_rule
from edge.app.config import GatewayConfig
from edge.security.credentials import hash_token, new_token, valid_device_id
from edge.storage.store import GatewayStore, StoreError


class OpError(Exception):
    """A refused administrative operation, with the message the user sees."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def add_device(store: GatewayStore, device_id: str, device_type: str | None) -> dict[str, Any]:
    if not valid_device_id(device_id):
        raise OpError(
            f"invalid device id {device_id!r}: use 1-64 of letters, digits, '_', '.', '-'"
        )
    token = new_token()
    h = hash_token(token)
    try:
        store.add_device(
            device_id, device_type, h.lookup, h.pw_hash, h.pw_salt, h.pw_iterations, now_ms()
        )
    except StoreError as exc:
        raise OpError(str(exc)) from exc
    return {"device_id": device_id, "token": token, "type": device_type}


def revoke_device(store: GatewayStore, device_id: str) -> dict[str, Any]:
    try:
        store.revoke_device(device_id, now_ms())
    except StoreError as exc:
        raise OpError(str(exc)) from exc
    return {"device_id": device_id, "status": "revoked"}


def add_rule(store: GatewayStore, body: dict[str, Any]) -> dict[str, Any]:
    rule_id = body.get("id") or "r-" + secrets.token_hex(6)
    try:
        rule = parse_rule(body, id=rule_id, version=1)
    except ProblemError as exc:
        details = "; ".join(f"{e.path}: {e.message}" for e in exc.problem.errors)
        raise OpError(f"invalid rule: {details or exc.problem.detail}") from exc
    rule_dict = rule.to_dict()
    store.save_rule(rule.id, rule_dict, rule.version, now_ms())
    return rule_dict


def status(store: GatewayStore) -> dict[str, Any]:
    stats = store.stats()
    return {**stats, "counters": store.counters()}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return 0


def disk_usage(cfg: GatewayConfig) -> dict[str, Any]:
    """What the data dir costs on disk, against the budget (`gateway status`)."""
    db = _size(cfg.db_path) + _size(cfg.db_path.with_name(cfg.db_path.name + ".wal"))
    broker = _size(cfg.broker_dir)
    return {
        "data_dir": str(cfg.data_dir),
        "used_bytes": _size(cfg.data_dir),
        "database_bytes": db,
        "broker_queue_bytes": broker,
        "unsynced_cap_readings": cfg.unsynced_cap_readings or None,
        "synced_retention_h": cfg.synced_retention_h or None,
    }
