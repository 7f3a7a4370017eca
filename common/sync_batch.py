"""What one sync batch carries, as typed values: the readings column-wise, alert changes,
auth events, the device list, clock epochs, the SyncBatch around them and the cloud's BatchAck,
with the batch's identity. Idempotency lives here: batch_id is derived from (gateway_id,
first_seq, last_seq, alerts_through, auth_through) (alerts_through = the highest alert
change_seq in the batch, auth_through the auth-event cursor after it, 0 when none), so a batch
rebuilt from the same cursors after a crash has the same id and the cloud answers a resend with
the acknowledgement it stored; the alert and auth cursors are part of the id because batches
that carry only alert changes or auth events share the same (empty) reading range. Pure: no
I/O, no clock; the wire form of these values is in common.sync_wire."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from common.model import Reading, ReadingFlag, Value

# A field of a rule document as a batch carries it (the rule's CONTRACT JSON shape): scalars,
# or a list of strings (its channels).
RuleField = str | int | float | bool | None | list[str]

_BATCH_NS: Final = uuid.UUID("5b0f3c9e-2d1a-5e7b-9c4f-8a6d0e1b2c3d")


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """Readings column-wise: element i of every column belongs to reading i.

    seq is the gateway-wide sequence number (the sync cursor), dev_seq the device's own
    message sequence number (Reading.seq) or None.
    """

    seq: tuple[int, ...] = ()
    device_id: tuple[str, ...] = ()
    metric: tuple[str, ...] = ()
    ts: tuple[int, ...] = ()
    received_at: tuple[int, ...] = ()
    value: tuple[Value, ...] = ()
    flags: tuple[int, ...] = ()
    dev_seq: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.seq)
        if any(len(col) != n for col in self._columns()):
            raise ValueError("ReadingColumns: columns of different lengths")

    def _columns(self) -> tuple[tuple[Any, ...], ...]:
        return (
            self.seq,
            self.device_id,
            self.metric,
            self.ts,
            self.received_at,
            self.value,
            self.flags,
            self.dev_seq,
        )

    def __len__(self) -> int:
        return len(self.seq)

    @classmethod
    def from_readings(cls, rows: Iterable[tuple[int, Reading]]) -> ReadingColumns:
        """Columns from (gateway seq, reading) pairs, in seq order."""
        rows = list(rows)
        return cls(
            seq=tuple(s for s, _ in rows),
            device_id=tuple(r.device_id for _, r in rows),
            metric=tuple(r.metric for _, r in rows),
            ts=tuple(r.ts for _, r in rows),
            received_at=tuple(r.received_at for _, r in rows),
            value=tuple(r.value for _, r in rows),
            flags=tuple(int(r.flags) for _, r in rows),
            dev_seq=tuple(r.seq for _, r in rows),
        )

    def readings(self) -> list[tuple[int, Reading]]:
        """(gateway seq, reading) pairs, in order."""
        return [
            (s, Reading(d, m, t, v, rx, ReadingFlag(f), ds))
            for s, d, m, t, rx, v, f, ds in zip(
                self.seq,
                self.device_id,
                self.metric,
                self.ts,
                self.received_at,
                self.value,
                self.flags,
                self.dev_seq,
                strict=True,
            )
        ]


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One alert's state after a change at the gateway (store.alerts row + its change_seq)."""

    change_seq: int
    id: str
    rule_id: str
    device_id: str
    metric: str
    severity: str
    state: str
    value: Value | None
    started_at: int
    acknowledged_at: int | None = None
    resolved_at: int | None = None
    # What the rule said when the change was read (name, metric, operator, threshold,
    # for_seconds, hysteresis, scope): the cloud shows why the alert was raised. Optional on
    # the wire: a gateway older than this field sends none.
    rule: Mapping[str, RuleField] | None = None


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One authentication failure or lockout seen at the gateway (store.auth_failures row)."""

    at: int
    kind: str
    transport: str
    reason: str
    address: str | None = None
    username: str | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device provisioned at the gateway, as the cloud should list it."""

    device_id: str
    type: str | None
    status: str  # active | revoked


def rules_digest(rules: Sequence[Mapping[str, RuleField]]) -> str:
    """Identifies the gateway's rule list (order-free): sent again only when this changed."""
    docs = sorted(json.dumps(dict(r), sort_keys=True, separators=(",", ":")) for r in rules)
    return hashlib.sha256("\n".join(docs).encode()).hexdigest()[:32]


def devices_digest(devices: Sequence[DeviceRecord]) -> str:
    """Identifies a device list (order-free): the gateway sends its list when this changed."""
    h = hashlib.sha256()
    for d in sorted(devices, key=lambda d: d.device_id):
        h.update(f"{d.device_id}\x00{d.type or ''}\x00{d.status}\x01".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ClockEpoch:
    """The gateway clock from reading seq first_seq on (until the next epoch's first_seq).

    mono_base_ms = wall clock - monotonic clock during the epoch; skew_ms = the gateway's
    clock minus the cloud's as last measured in the epoch (None: not measured); flags are
    ReadingFlag GATEWAY_CLOCK_* bits that hold for every reading of the epoch.
    """

    first_seq: int
    boot_id: str
    mono_base_ms: int
    flags: int = 0
    skew_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """What one POST /api/v1/sync/batches carries.

    first_seq..last_seq is the reading cursor range the batch covers (readings inside it may
    have gaps: pruned or dropped); an alert-only batch has last_seq == first_seq - 1.
    counters are totals since the gateway's data dir was created (idempotent to resend);
    dropped is the total of readings dropped by the disk cap.
    """

    gateway_id: str
    batch_id: str
    first_seq: int
    last_seq: int
    boot_id: str
    gateway_clock_ms: int
    readings: ReadingColumns = field(default_factory=ReadingColumns)
    alerts: tuple[AlertChange, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)
    auth_events: tuple[AuthEvent, ...] = ()
    dropped: int = 0
    auth_through: int = 0  # the auth-event cursor once this batch is acknowledged
    epochs: tuple[ClockEpoch, ...] = ()
    devices: tuple[DeviceRecord, ...] = ()  # the gateway's whole device list, when it changed
    backlog: int = 0  # readings still waiting at the gateway after this batch (a gauge)
    # The gateway's whole rule list (CONTRACT rule documents), when it changed since the cloud
    # last acknowledged one: the cloud lists the gateway's own rules read-only beside its own.
    # None: not sent (unchanged, or an older gateway); () : the gateway has no rules now.
    rules: tuple[Mapping[str, RuleField], ...] | None = None
    # Pipelining: the batch_id of the batch sent just before this one and still unacknowledged
    # when this one was sent. The cloud applies this batch only once that one is stored, so
    # two batches can be on the wire without readings arriving out of order. Not part of the
    # batch's identity: a resend without it is the same batch.
    follows: str | None = None

    @property
    def alerts_through(self) -> int:
        return max((a.change_seq for a in self.alerts), default=0)

    @classmethod
    def create(  # noqa: PLR0913 - builds the batch from its keyword fields
        cls,
        *,
        gateway_id: str,
        first_seq: int,
        last_seq: int,
        boot_id: str,
        gateway_clock_ms: int,
        readings: ReadingColumns | None = None,
        alerts: Sequence[AlertChange] = (),
        counters: Mapping[str, int] | None = None,
        auth_events: Sequence[AuthEvent] = (),
        dropped: int = 0,
        auth_through: int = 0,
        epochs: Sequence[ClockEpoch] = (),
        devices: Sequence[DeviceRecord] = (),
        backlog: int = 0,
        rules: Sequence[Mapping[str, RuleField]] | None = None,
    ) -> SyncBatch:
        """A batch with its batch_id derived from its identity."""
        alerts = tuple(alerts)
        devices = tuple(devices)
        rule_list = tuple(rules) if rules is not None else None
        return cls(
            gateway_id=gateway_id,
            batch_id=batch_id_for(
                gateway_id,
                first_seq,
                last_seq,
                max((a.change_seq for a in alerts), default=0),
                auth_through,
                devices_digest(devices) if devices else "",
                rules_digest(rule_list) if rule_list is not None else "",
            ),
            first_seq=first_seq,
            last_seq=last_seq,
            boot_id=boot_id,
            gateway_clock_ms=gateway_clock_ms,
            readings=readings if readings is not None else ReadingColumns(),
            alerts=alerts,
            counters=dict(counters or {}),
            auth_events=tuple(auth_events),
            dropped=dropped,
            auth_through=auth_through,
            epochs=tuple(epochs),
            devices=devices,
            backlog=backlog,
            rules=rule_list,
        )


@dataclass(frozen=True, slots=True)
class BatchAck:
    """The cloud's answer to a batch; a resend of the same batch_id gets the same ack."""

    batch_id: str
    first_seq: int
    last_seq: int
    stored: int
    duplicates: int


def batch_id_for(
    gateway_id: str,
    first_seq: int,
    last_seq: int,
    alerts_through: int = 0,
    auth_through: int = 0,
    devices: str = "",
    rules: str = "",
) -> str:
    """The deterministic id of the batch covering these cursors (a UUIDv5 string); `devices`
    and `rules` are the digests of the device and rule lists the batch carries, if any (a
    batch without a rule list has the id it had before rule lists existed)."""
    name = f"{gateway_id}\x00{first_seq}\x00{last_seq}\x00{alerts_through}"
    if auth_through or devices or rules:
        name += f"\x00{auth_through}"
    if devices or rules:
        name += f"\x00{devices}"
    if rules:
        name += f"\x00rules:{rules}"
    return str(uuid.uuid5(_BATCH_NS, name))
