"""What one commit makes durable (Batch and its rows) and what it reports (CommitResult)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common.model import FieldError, Reading


@dataclass(frozen=True, slots=True)
class Rejection:
    at: int
    device_id: str
    transport: str
    status: int
    title: str
    detail: str
    errors: Sequence[FieldError]
    payload: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class AuthFailure:
    at: int
    kind: str
    transport: str
    address: str | None
    username: str | None
    client_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: str
    rule_id: str
    subject: str
    metric: str
    severity: str
    state: str
    value: object
    started_at: int
    acknowledged_at: int | None = None
    resolved_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "state": self.state,
            "severity": self.severity,
            "metric": self.metric,
            "value": self.value,
            "device_id": self.subject,
            "started_at": self.started_at,
            "acknowledged_at": self.acknowledged_at,
            "resolved_at": self.resolved_at,
        }


@dataclass(frozen=True, slots=True)
class EpochStart:
    """A clock epoch beginning with the first reading of the commit that carries it."""

    boot_id: str
    mono_base_ms: int
    flags: int
    started_at: int


@dataclass(frozen=True, slots=True)
class BudgetResult:
    pruned: int  # synced readings past retention
    dropped: int  # unsynced readings over the cap (counted in DROPPED_COUNTER)


@dataclass
class Batch:
    """Everything one commit makes durable together."""

    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    auth_failures: list[AuthFailure] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    kv: dict[str, str] = field(default_factory=dict)
    last_seen: dict[str, int] = field(default_factory=dict)  # device id -> ms
    epoch: EpochStart | None = None

    def is_empty(self) -> bool:
        return not self.readings and self.only_readings()

    def only_readings(self) -> bool:
        """Nothing to write but readings (its rejections, audit rows, ... are empty)."""
        return not (
            self.rejections
            or self.auth_failures
            or self.alerts
            or self.counters
            or self.kv
            or self.last_seen
            or self.epoch
        )

    def carried(self) -> Batch:
        """What a failed commit must still write later. Audit rows, alerts, kv, counters,
        last_seen and a clock epoch are the gateway's own records (upserts or deltas) that
        nobody would send again; readings and rejections are left out because their senders
        were told to retry, and resend them."""
        return Batch(
            auth_failures=list(self.auth_failures),
            alerts=list(self.alerts),
            counters=dict(self.counters),
            kv=dict(self.kv),
            last_seen=dict(self.last_seen),
            epoch=self.epoch,
        )

    def absorb(self, later: Batch) -> None:
        """Add a later batch to this one; where both set a value, the later one wins."""
        self.readings.extend(later.readings)
        self.rejections.extend(later.rejections)
        self.auth_failures.extend(later.auth_failures)
        self.alerts.extend(later.alerts)  # upserts in order: the later state of an alert wins
        for name, n in later.counters.items():
            self.counters[name] = self.counters.get(name, 0) + n
        self.kv.update(later.kv)
        for device, at in later.last_seen.items():
            self.last_seen[device] = max(self.last_seen.get(device, 0), at)
        self.epoch = later.epoch or self.epoch


@dataclass(frozen=True, slots=True)
class CommitResult:
    inserted: int
    duplicates: int
    first_seq: int | None
    last_seq: int | None
