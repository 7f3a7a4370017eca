"""The rule engine's snapshot: TrackState (one (rule, subject) track) and EngineState (all of
them), plain JSON values with to_json/from_json, so an open alert episode survives a restart
instead of being raised a second time. from_dict refuses anything this version did not write
(ValueError) rather than restore a half-understood state."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from common.model import Value


@dataclass(frozen=True, slots=True)
class TrackState:
    """The snapshot of one (rule, subject) track; all plain JSON values."""

    rule_id: str
    subject: str
    metric: str  # with operator: lets a restore drop tracks whose rule changed meaning
    operator: str
    latest_ts: int | None  # newest reading ts accepted (None: nodata timer started by tick)
    seen_at: int  # caller's now_ms when that reading arrived (or when the timer started)
    pending_since: int | None  # reading ts at which the current unbroken breach began
    active: bool  # an episode has been raised and not yet cleared
    value: Value | None  # the latest value accepted


_STATE_FORMAT: Final = 1


@dataclass(frozen=True, slots=True)
class EngineState:
    """A restorable snapshot of every track (to_json/from_json for storage)."""

    tracks: tuple[TrackState, ...] = ()

    @property
    def active(self) -> tuple[TrackState, ...]:
        return tuple(t for t in self.tracks if t.active)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "tracks": [
                {
                    "rule_id": t.rule_id,
                    "subject": t.subject,
                    "metric": t.metric,
                    "operator": t.operator,
                    "latest_ts": t.latest_ts,
                    "seen_at": t.seen_at,
                    "pending_since": t.pending_since,
                    "active": t.active,
                    "value": t.value,
                }
                for t in self.tracks
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineState:
        """Raises ValueError on anything that is not a snapshot this version wrote."""
        if not isinstance(data, Mapping) or data.get("format") != _STATE_FORMAT:
            raise ValueError("not a rule engine snapshot (format 1)")
        raw_tracks = data.get("tracks")
        if not isinstance(raw_tracks, list):
            raise ValueError("rule engine snapshot: 'tracks' must be a list")
        return cls(tuple(_track_from_dict(i, t) for i, t in enumerate(raw_tracks)))

    @classmethod
    def from_json(cls, text: str | bytes) -> EngineState:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"rule engine snapshot is not JSON: {exc}") from exc
        return cls.from_dict(data)


def _track_from_dict(index: int, raw: object) -> TrackState:
    def fail(what: str) -> ValueError:
        return ValueError(f"rule engine snapshot: track {index}: {what}")

    if not isinstance(raw, Mapping):
        raise fail("not an object")
    for key in ("rule_id", "subject", "metric", "operator"):
        if not isinstance(raw.get(key), str):
            raise fail(f"{key} must be a string")
    for key in ("latest_ts", "seen_at", "pending_since"):
        value = raw.get(key)
        if (value is None and key != "seen_at") or (
            isinstance(value, int) and not isinstance(value, bool)
        ):
            continue
        raise fail(f"{key} must be an integer")
    if not isinstance(raw.get("active"), bool):
        raise fail("active must be a boolean")
    value = raw.get("value")
    if value is not None and not isinstance(value, int | float | str):
        raise fail("value must be a number, boolean, string or null")
    return TrackState(
        rule_id=raw["rule_id"],
        subject=raw["subject"],
        metric=raw["metric"],
        operator=raw["operator"],
        latest_ts=raw["latest_ts"],
        seen_at=raw["seen_at"],
        pending_since=raw["pending_since"],
        active=raw["active"],
        value=value,
    )
