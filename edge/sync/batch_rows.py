"""What one sync batch holds, read from the store in one trip to its thread."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.sync_wire import (
    AlertChange,
    AuthEvent,
    ClockEpoch,
    DeviceRecord,
    ReadingColumns,
    RuleField,
    devices_digest,
    rules_digest,
)
from edge.storage.store import SYNC_DEVICES_KEY, SYNC_RULES_KEY, GatewayStore

MAX_ALERTS_PER_BATCH = 1_000
MAX_AUTH_EVENTS_PER_BATCH = 1_000


@dataclass(frozen=True, slots=True)
class BatchRows:
    alerts: list[AlertChange]
    readings: ReadingColumns
    auth_through: int
    auth_events: list[AuthEvent]
    counters: dict[str, int]
    epochs: list[ClockEpoch]
    more: bool  # readings follow this batch's window: it is complete even if not full
    devices: list[DeviceRecord] = field(default_factory=list)  # when changed since acked
    backlog: int = 0  # readings after this batch's, still to send
    rules: list[dict[str, RuleField]] | None = None  # the gateway's rules, when changed

    def is_empty(self) -> bool:
        return not (
            self.alerts
            or len(self.readings)
            or self.auth_events
            or self.devices
            or self.rules is not None
        )


def read_batch_rows(
    store: GatewayStore, cursor: tuple[int, int], auth_cursor: int, max_readings: int
) -> BatchRows:
    """Alerts first, then readings, auth events, counters and clock epochs: one trip to the
    store thread."""
    alerts = store.alert_changes_after(cursor[1], MAX_ALERTS_PER_BATCH)
    rows, more = store.reading_columns_for_sync(cursor[0], max_readings)
    auth_through, events = store.auth_events_after(auth_cursor, MAX_AUTH_EVENTS_PER_BATCH)
    devices = store.device_records()
    if devices and devices_digest(devices) == store.kv_get(SYNC_DEVICES_KEY):
        devices = []  # the cloud has this list already
    rules: list[dict[str, RuleField]] | None = store.rule_docs()
    acked = store.kv_get(SYNC_RULES_KEY)
    if rules is not None and (rules_digest(rules) == acked or (not rules and acked is None)):
        rules = None  # the cloud has this list already (or never had one: nothing to empty)
    if not (alerts or rows or events or devices or rules is not None):
        return BatchRows([], ReadingColumns(), auth_cursor, [], {}, [], False)
    epochs = store.epochs_for(rows.seq[0], rows.seq[-1]) if rows else []
    after = rows.seq[-1] if rows else cursor[0]
    backlog = store.sync_backlog(after)[0] if more else 0
    return BatchRows(
        alerts, rows, auth_through, events, store.counters(), epochs, more, devices, backlog, rules
    )
