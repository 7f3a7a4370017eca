"""The values the monitoring store takes and returns (rule changes, API keys, metric series,
and what one monitoring pass starts from, judges and commits), plus the JSON of the
monitor_state.engines column: one rule engine snapshot per subject kind (devices and sources
are judged by separate engines). Plain frozen values, so the loop and the API never hold a
database row."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from common.model import Value
from common.rules import EngineState, Observation, Rule, Transition

SubjectKind = Literal["device", "source"]
KINDS: tuple[SubjectKind, ...] = ("device", "source")


@dataclass(frozen=True, slots=True)
class RuleChanges:
    """What changed in an org's rules after a version: current rules and tombstones."""

    version: int  # the org's rule version now (pass it next time)
    rules: tuple[Rule, ...]  # created or updated after the asked version
    deleted: tuple[tuple[str, int], ...]  # (rule id, version of the delete)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rules": [r.to_dict() for r in self.rules],
            "deleted": [{"id": rid, "version": v} for rid, v in self.deleted],
        }


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: str
    org_id: str
    name: str
    created_by: str
    created_at: int
    revoked_at: int | None
    last_used_at: int | None = None  # to the minute (api_key_queries.TOUCH_EVERY_MS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
        }


@dataclass(frozen=True, slots=True)
class Episode:
    alert_id: str
    rule_id: str
    kind: SubjectKind
    subject: str


@dataclass(frozen=True, slots=True)
class MonitorSnapshot:
    """What one pass starts from: rules, engine snapshots, cursors, open episodes."""

    rules: tuple[Rule, ...]
    engines: dict[SubjectKind, EngineState]
    metrics_cursor: int  # last metrics.seq judged
    readings_cursor: int  # cloud_received_at of the newest reading judged (re-read: >=)
    episodes: tuple[Episode, ...]
    state_json: str  # as stored, to skip writing an unchanged snapshot


@dataclass(frozen=True, slots=True)
class Observations:
    by_kind: dict[SubjectKind, list[Observation]]
    metrics_cursor: int
    readings_cursor: int
    more: bool  # the metrics batch was full: run again at once


@dataclass(frozen=True, slots=True)
class Raise:
    rule: Rule
    kind: SubjectKind
    transition: Transition


@dataclass(frozen=True, slots=True)
class Clear:
    episode: Episode
    at_ms: int
    value: Value | None
    reason: str  # "cleared" (back to normal) or why the episode ended otherwise


@dataclass(slots=True)
class PassOutcome:
    raises: list[Raise] = field(default_factory=list)
    clears: list[Clear] = field(default_factory=list)
    state_json: str = ""
    metrics_cursor: int = 0
    readings_cursor: int = 0


@dataclass(frozen=True, slots=True)
class Committed:
    raised: int
    resolved: int
    notifications: int


@dataclass(frozen=True, slots=True)
class Planned:
    """What the loop decided in a pass: `outcome` None when nothing changed (nothing to
    write); `rules` by id (names and thresholds for the notifications)."""

    outcome: PassOutcome | None
    more: bool  # more input is waiting than one pass takes
    now_ms: int
    rules: dict[str, Rule]


@dataclass(frozen=True, slots=True)
class PassResult:
    busy: bool = False  # another worker holds the org's pass: nothing was done here
    planned: Planned | None = None  # None: the org is not monitored
    committed: Committed | None = None  # None: nothing to write


@dataclass(frozen=True, slots=True)
class MetricSeries:
    source: str
    metric: str
    count: int
    last_ts: int
    last_value: Value | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "metric": self.metric,
            "count": self.count,
            "last_ts": self.last_ts,
            "last_value": self.last_value,
        }


def encode_engines(engines: dict[SubjectKind, EngineState]) -> str:
    return json.dumps({k: engines[k].to_dict() for k in KINDS}, sort_keys=True)


def decode_engines(text: str) -> dict[SubjectKind, EngineState]:
    raw = json.loads(text)
    return {k: EngineState.from_dict(raw.get(k, {"format": 1, "tracks": []})) for k in KINDS}


def empty_engines() -> dict[SubjectKind, EngineState]:
    return {k: EngineState() for k in KINDS}
