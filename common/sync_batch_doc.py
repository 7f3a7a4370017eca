"""A sync batch as its wire document (the plain maps, lists and scalars that CBOR or JSON
then serialise), both ways: batch_to_doc writes the header, counters, alert changes, auth
events, clock epochs and device list as compact positional rows and hands the readings to
common.sync_columns; batch_from_doc reads an untrusted document back, every field checked
(DocCheck), and refuses a batch_id that does not match the batch's identity. Writer and reader
sit together so the layout of each row is visible in one place."""

from __future__ import annotations

import math
from typing import Any

from common.model import Value
from common.sync_batch import (
    AlertChange,
    AuthEvent,
    ClockEpoch,
    DeviceRecord,
    RuleField,
    SyncBatch,
    batch_id_for,
    devices_digest,
    rules_digest,
)
from common.sync_columns import columns_from_doc, columns_to_doc
from common.sync_wire_check import DocCheck
from common.sync_wire_spec import (
    EXACT_INT,
    MAX_ALERTS,
    MAX_AUTH_EVENTS,
    MAX_COUNTERS,
    MAX_DEVICES,
    MAX_EPOCHS,
    MAX_RULE_FIELDS,
    MAX_RULES,
    MAX_VALUE_STR,
    WIRE_VERSION,
)


def batch_to_doc(batch: SyncBatch) -> dict[str, Any]:
    """The wire document (before serialisation): plain maps, lists, ints, floats, strings."""
    return {
        "v": WIRE_VERSION,
        "gateway_id": batch.gateway_id,
        "batch_id": batch.batch_id,
        "first_seq": batch.first_seq,
        "last_seq": batch.last_seq,
        "boot_id": batch.boot_id,
        "gateway_clock_ms": batch.gateway_clock_ms,
        "dropped": batch.dropped,
        "auth_through": batch.auth_through,
        "epochs": [
            [e.first_seq, e.boot_id, e.mono_base_ms, e.flags, e.skew_ms] for e in batch.epochs
        ],
        "devices": [[d.device_id, d.type, d.status] for d in batch.devices],
        "backlog": batch.backlog,
        **({"follows": batch.follows} if batch.follows is not None else {}),
        "counters": dict(batch.counters),
        "alerts": [
            [
                a.change_seq,
                a.id,
                a.rule_id,
                a.device_id,
                a.metric,
                a.severity,
                a.state,
                a.value,
                a.started_at,
                a.acknowledged_at,
                a.resolved_at,
                # the rule snapshot is a 12th item only when there is one: a batch without
                # it is byte for byte what older gateways send
                *([dict(a.rule)] if a.rule is not None else []),
            ]
            for a in batch.alerts
        ],
        **({"rules": [dict(r) for r in batch.rules]} if batch.rules is not None else {}),
        "auth": [
            [e.at, e.kind, e.transport, e.reason, e.address, e.username, e.client_id]
            for e in batch.auth_events
        ],
        "r": columns_to_doc(batch.readings, batch.first_seq),
    }


def batch_from_doc(doc: object) -> SyncBatch:
    """Validate a parsed wire document (see batch_to_doc) into a SyncBatch, or WireError."""
    c = DocCheck()
    top = c.map_(doc, "")
    if top.get("v") != WIRE_VERSION or type(top.get("v")) is not int:
        c.abort("/v", f"must be {WIRE_VERSION} (the wire version)")
    gateway_id = c.str_(top.get("gateway_id"), "/gateway_id")
    batch_id = c.str_(top.get("batch_id"), "/batch_id", max_len=64)
    first_seq = c.int_(top, "first_seq", "/first_seq", lo=1)
    last_seq = c.int_(top, "last_seq", "/last_seq", lo=0)
    boot_id = c.str_(top.get("boot_id"), "/boot_id", max_len=64)
    clock_ms = c.int_(top, "gateway_clock_ms", "/gateway_clock_ms")
    dropped = c.int_(top, "dropped", "/dropped", lo=0)
    backlog = c.int_(top, "backlog", "/backlog", lo=0) if "backlog" in top else 0
    follows = c.str_(top.get("follows"), "/follows", max_len=64) if "follows" in top else None
    auth_through = 0
    if "auth_through" in top:
        auth_through = c.int_(top, "auth_through", "/auth_through", lo=0)
    epochs = tuple(
        _epoch(c, e, f"/epochs/{i}")
        for i, e in enumerate(c.list_(top.get("epochs", []), "/epochs", MAX_EPOCHS))
    )
    devices = tuple(
        _device(c, d, f"/devices/{i}")
        for i, d in enumerate(c.list_(top.get("devices", []), "/devices", MAX_DEVICES))
    )
    rules = None  # absent: an older gateway, or its list did not change
    if "rules" in top:
        rules = tuple(
            _rule_doc(c, r, f"/rules/{i}", need_id=True)
            for i, r in enumerate(c.list_(top["rules"], "/rules", MAX_RULES))
        )
    if not c.errors and last_seq < first_seq - 1:
        c.fail("/last_seq", "must be >= first_seq - 1")

    counters: dict[str, int] = {}
    raw_counters = c.map_(top.get("counters"), "/counters")
    if len(raw_counters) > MAX_COUNTERS:
        c.abort("/counters", f"must have at most {MAX_COUNTERS} entries")
    for k in raw_counters:
        name = c.str_(k, f"/counters/{str(k)[:64]}")
        counters[name] = c.int_(raw_counters, k, f"/counters/{name}", lo=0)

    alerts = tuple(
        _alert(c, a, f"/alerts/{i}")
        for i, a in enumerate(c.list_(top.get("alerts"), "/alerts", MAX_ALERTS))
    )
    auth = tuple(
        _auth_event(c, e, f"/auth/{i}")
        for i, e in enumerate(c.list_(top.get("auth"), "/auth", MAX_AUTH_EVENTS))
    )
    c.raise_if_any()
    readings = columns_from_doc(c, c.map_(top.get("r"), "/r"), first_seq, last_seq)
    c.raise_if_any()
    batch = SyncBatch(
        gateway_id=gateway_id,
        batch_id=batch_id,
        first_seq=first_seq,
        last_seq=last_seq,
        boot_id=boot_id,
        gateway_clock_ms=clock_ms,
        readings=readings,
        alerts=alerts,
        counters=counters,
        auth_events=auth,
        dropped=dropped,
        auth_through=auth_through,
        epochs=epochs,
        devices=devices,
        backlog=backlog,
        follows=follows,
        rules=rules,
    )
    expected = batch_id_for(
        gateway_id,
        first_seq,
        last_seq,
        batch.alerts_through,
        auth_through,
        devices_digest(devices) if devices else "",
        rules_digest(rules) if rules is not None else "",
    )
    if batch_id != expected:
        c.abort("/batch_id", "does not match (gateway_id, first_seq, last_seq, alerts)")
    return batch


# The layout of each positional row, as batch_to_doc writes it (the reader's error names it).
_ALERT_ROW = (
    "change_seq",
    "id",
    "rule_id",
    "device_id",
    "metric",
    "severity",
    "state",
    "value",
    "started_at",
    "acknowledged_at",
    "resolved_at",
)
_DEVICE_ROW = ("device_id", "type", "status")
_EPOCH_ROW = ("first_seq", "boot_id", "mono_base_ms", "flags", "skew_ms")
_AUTH_ROW = ("at", "kind", "transport", "reason", "address", "username", "client_id")


def _value(c: DocCheck, v: object, path: str) -> Value | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        if len(v) > MAX_VALUE_STR:
            c.fail(path, f"must be a string of <= {MAX_VALUE_STR}")
        return v
    if type(v) is int and abs(v) <= EXACT_INT:
        return float(v)
    if type(v) is float and math.isfinite(v):
        return v
    c.fail(path, "must be a finite number, boolean, string or null")
    return None


def _alert(c: DocCheck, a: object, path: str) -> AlertChange:
    # 11 items from any gateway; a 12th, the rule snapshot, from gateways that send it
    row = c.row(a, path, _ALERT_ROW, optional=1)
    rule = None
    if len(row) > len(_ALERT_ROW) and row[len(_ALERT_ROW)] is not None:
        rule = _rule_doc(c, row[len(_ALERT_ROW)], f"{path}/{len(_ALERT_ROW)}", need_id=False)
    seq = c.opt_int(row[0], f"{path}/0")
    started = c.opt_int(row[8], f"{path}/8")
    if seq is None or seq < 1:
        c.fail(f"{path}/0", "change_seq must be a positive integer")
    if started is None:
        c.fail(f"{path}/8", "started_at must be an integer")
    return AlertChange(
        change_seq=seq or 0,
        id=c.str_(row[1], f"{path}/1"),
        rule_id=c.str_(row[2], f"{path}/2"),
        device_id=c.str_(row[3], f"{path}/3"),
        metric=c.str_(row[4], f"{path}/4"),
        severity=c.str_(row[5], f"{path}/5"),
        state=c.str_(row[6], f"{path}/6"),
        value=_value(c, row[7], f"{path}/7"),
        started_at=started or 0,
        acknowledged_at=c.opt_int(row[9], f"{path}/9"),
        resolved_at=c.opt_int(row[10], f"{path}/10"),
        rule=rule,
    )


def _rule_doc(c: DocCheck, r: object, path: str, *, need_id: bool) -> dict[str, RuleField]:
    """A rule document (or an alert's rule snapshot): a map of at most MAX_RULE_FIELDS short
    keys to scalars or lists of strings. Only its shape is checked: the cloud shows it, it
    does not evaluate it, and a rule this cloud's parser would not take must not stop sync."""
    doc = c.map_(r, path)
    if len(doc) > MAX_RULE_FIELDS:
        c.abort(path, f"must have at most {MAX_RULE_FIELDS} fields")
    out: dict[str, RuleField] = {}
    for k, v in doc.items():
        key = c.str_(k, f"{path}/{str(k)[:64]}", max_len=64)
        where = f"{path}/{key}"
        if v is None or isinstance(v, bool) or type(v) is int:
            out[key] = v if type(v) is not int else c.opt_int(v, where)
        elif type(v) is float:
            out[key] = _value(c, v, where)
        elif isinstance(v, str):
            out[key] = c.str_(v, where, empty=True)
        elif type(v) is list and len(v) <= MAX_RULE_FIELDS and all(type(x) is str for x in v):
            out[key] = [c.str_(x, f"{where}/{i}") for i, x in enumerate(v)]
        else:
            c.fail(where, "must be a number, boolean, string, null or a list of strings")
    if need_id:
        c.str_(out.get("id"), f"{path}/id")
    return out


def _device(c: DocCheck, d: object, path: str) -> DeviceRecord:
    row = c.row(d, path, _DEVICE_ROW)
    status = c.str_(row[2], f"{path}/2")
    if status not in ("active", "revoked"):
        c.fail(f"{path}/2", "must be active or revoked")
    return DeviceRecord(c.str_(row[0], f"{path}/0"), c.opt_str(row[1], f"{path}/1"), status)


def _epoch(c: DocCheck, e: object, path: str) -> ClockEpoch:
    row = c.row(e, path, _EPOCH_ROW)
    first_seq = c.opt_int(row[0], f"{path}/0")
    base = c.opt_int(row[2], f"{path}/2")
    flags = c.opt_int(row[3], f"{path}/3")
    if first_seq is None or first_seq < 1:
        c.fail(f"{path}/0", "first_seq must be a positive integer")
    if base is None:
        c.fail(f"{path}/2", "mono_base_ms must be an integer")
    if flags is None or not 0 <= flags <= 255:
        c.fail(f"{path}/3", "flags must be an integer in [0, 255]")
    return ClockEpoch(
        first_seq=first_seq or 1,
        boot_id=c.str_(row[1], f"{path}/1", max_len=64),
        mono_base_ms=base or 0,
        flags=flags or 0,
        skew_ms=c.opt_int(row[4], f"{path}/4"),
    )


def _auth_event(c: DocCheck, e: object, path: str) -> AuthEvent:
    row = c.row(e, path, _AUTH_ROW)
    at = c.opt_int(row[0], f"{path}/0")
    if at is None:
        c.fail(f"{path}/0", "at must be an integer")
    return AuthEvent(
        at=at or 0,
        kind=c.str_(row[1], f"{path}/1"),
        transport=c.str_(row[2], f"{path}/2"),
        reason=c.str_(row[3], f"{path}/3", empty=True),
        address=c.opt_str(row[4], f"{path}/4"),
        username=c.opt_str(row[5], f"{path}/5"),
        client_id=c.opt_str(row[6], f"{path}/6"),
    )
