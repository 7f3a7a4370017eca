"""Alert rules and the pure engine that evaluates them: observations in, transitions out.

No I/O and no clock of its own: callers pass `now_ms`, so the gateway (on every committed batch)
and the cloud (on synced batches and model metrics) run the same code, and tests move time by
hand. The engine keeps one small track per (rule, subject); its snapshot (`EngineState`) is plain
JSON so an alert episode survives a restart instead of being raised a second time.

Episode semantics, per (rule, subject):
- raised once, when the condition has held continuously for `for_seconds`: judged by reading
  timestamps in `observe`, and in `tick` by the time the breach had lasted at the last reading
  plus the time elapsed on the caller's clock since that reading arrived (so a device whose clock
  is off cannot make `tick` fire early or never);
- a non-breaching reading before `for_seconds` elapsed resets the pending timer;
- cleared when the value is back past the threshold by `hysteresis`. For `>`: cleared when
  value <= threshold - hysteresis; `>=`: value < threshold - hysteresis; `<`: value >= threshold
  + hysteresis; `<=`: value > threshold + hysteresis. With hysteresis 0 an episode therefore
  clears exactly when the condition stops holding; `==` / `!=` always clear that way;
- readings not newer than the latest one already seen for the track are ignored, so a late or
  duplicated reading cannot flip an episode;
- `nodata` rules measure silence on the caller's clock (arrival time, not device time, so a device
  with a wrong clock that is sending is not reported as silent): `tick` raises once
  now - last arrival >= for_seconds, and the next new reading clears the episode.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard, cast

from common.model import FieldError, Reading, Value
from common.problem import Problem, ProblemError

Operator = Literal[">", ">=", "<", "<=", "==", "!=", "nodata"]
Severity = Literal["info", "warning", "critical"]
TransitionKind = Literal["raised", "cleared"]
Threshold = float | bool | str | None

ORDERING_OPERATORS: Final = frozenset({">", ">=", "<", "<="})
EQUALITY_OPERATORS: Final = frozenset({"==", "!="})
OPERATORS: Final = (">", ">=", "<", "<=", "==", "!=", "nodata")
SEVERITIES: Final = ("info", "warning", "critical")
SCOPE_FIELDS: Final = ("device_id", "device_type", "source")

METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # CONTRACT.md "Telemetry payloads"
MAX_ID_LENGTH: Final = 128
MAX_NAME_LENGTH: Final = 200
MAX_STRING_VALUE: Final = 256  # the longest string value a device may send (CONTRACT.md)
MAX_FOR_SECONDS: Final = 1_000_000_000  # 31 years: any real duration, and finite in ms

# Fields a client may send in a rule document; "id" and "version" are assigned by the server and
# are accepted (a client often sends back what it got) but ignored.
_CLIENT_FIELDS: Final = frozenset(
    {
        "name",
        "metric",
        "operator",
        "threshold",
        "for_seconds",
        "hysteresis",
        "severity",
        "enabled",
        "channels",
        *SCOPE_FIELDS,
    }
)
_SERVER_FIELDS: Final = frozenset({"id", "version"})


class InvalidRule(ProblemError):
    """A rule document with one or more problems, each reported with its JSON Pointer (422)."""

    def __init__(self, errors: Sequence[FieldError]) -> None:
        super().__init__(
            Problem(
                slug="invalid-rule",
                title="Invalid alert rule",
                status=422,
                detail="; ".join(f"{e.path or '/'}: {e.message}" for e in errors),
                errors=tuple(errors),
            )
        )


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
        errors = _check({f: getattr(self, f) for f in _RULE_FIELDS})
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


_RULE_FIELDS: Final = (
    "id",
    "name",
    "metric",
    "operator",
    "threshold",
    "for_seconds",
    "hysteresis",
    "severity",
    "enabled",
    "channels",
    "version",
    *SCOPE_FIELDS,
)
_DEFAULTS: Final[Mapping[str, object]] = {
    "for_seconds": 0.0,
    "hysteresis": 0.0,
    "severity": "warning",
    "enabled": True,
    "channels": (),
}
_AUTO_NAME: Final = object()  # parse_rule: no name given, derive one once the rest is valid


def parse_rule(data: Mapping[str, Any], *, id: str, version: int) -> Rule:
    """Validate a client's rule document; InvalidRule (422) lists every problem found."""
    if not isinstance(data, Mapping):
        raise InvalidRule([FieldError("", "a rule must be a JSON object")])
    errors: list[FieldError] = [
        FieldError(_pointer(str(key)), "unknown field")
        for key in data
        if key not in _CLIENT_FIELDS and key not in _SERVER_FIELDS
    ]
    values: dict[str, object] = {f: data.get(f) for f in _RULE_FIELDS}
    # null means "the default" for optional fields, which makes PATCH-by-merge simple.
    for field_name, default in _DEFAULTS.items():
        if values[field_name] is None:
            values[field_name] = default
    if values["name"] is None:
        values["name"] = _AUTO_NAME
    values["id"] = id
    values["version"] = version
    errors.extend(_check(values))
    if errors:
        raise InvalidRule(errors)

    operator = cast(Operator, values["operator"])
    threshold = cast(Threshold, values["threshold"])
    if _is_number(threshold):
        threshold = float(threshold)
    for_seconds = float(cast(float, values["for_seconds"]))
    metric = cast(str, values["metric"])
    name = values["name"]
    if name is _AUTO_NAME:
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
    shown = json.dumps(threshold) if not _is_number(threshold) else f"{threshold:g}"
    return f"{metric} {operator} {shown}"[:MAX_NAME_LENGTH]


def _check(v: Mapping[str, object]) -> list[FieldError]:
    """Every problem with a complete set of rule fields (missing required ones are None)."""
    errors: list[FieldError] = []

    def bad(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    rule_id = v["id"]
    if not isinstance(rule_id, str) or not 0 < len(rule_id) <= MAX_ID_LENGTH:
        bad("/id", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    version = v["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        bad("/version", "must be an integer >= 1")
    name = v["name"]
    if name is not _AUTO_NAME and (
        not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH
    ):
        bad("/name", f"must be a non-empty string of at most {MAX_NAME_LENGTH} characters")

    metric = v["metric"]
    if metric is None:
        bad("/metric", "required")
    elif not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        bad("/metric", "must match [A-Za-z0-9_.-]{1,64}")

    operator = v["operator"]
    if operator is None:
        bad("/operator", "required")
    elif not isinstance(operator, str) or operator not in OPERATORS:
        shown = repr(operator)[:40]
        bad("/operator", f"unknown operator {shown}; expected one of {', '.join(OPERATORS)}")
        operator = None  # an object or a list is not hashable: no set lookups below

    threshold = v["threshold"]
    if operator in ORDERING_OPERATORS:
        if threshold is None:
            bad("/threshold", f"required for operator {operator!r}")
        elif not _is_number(threshold) or not _finite(threshold):
            bad("/threshold", f"must be a finite number for operator {operator!r}")
    elif operator in EQUALITY_OPERATORS:
        if threshold is None:
            bad("/threshold", f"required for operator {operator!r}")
        elif _is_number(threshold):
            if not _finite(threshold):
                bad("/threshold", "must be a finite number")
        elif isinstance(threshold, str):
            if len(threshold) > MAX_STRING_VALUE:
                bad("/threshold", f"strings are at most {MAX_STRING_VALUE} characters")
        elif not isinstance(threshold, bool):
            bad("/threshold", "must be a number, a boolean or a string")
    elif operator == "nodata" and threshold is not None:
        bad("/threshold", "a nodata rule takes no threshold")

    for_seconds = v["for_seconds"]
    if not _is_number(for_seconds) or not _finite(for_seconds) or for_seconds < 0:
        bad("/for_seconds", "must be a finite number >= 0")
    elif for_seconds > MAX_FOR_SECONDS:
        # the engine counts in ms: 1e308 s made it fail on every pass (infinity)
        bad("/for_seconds", f"must be at most {MAX_FOR_SECONDS:.0e} (31 years)")
    elif operator == "nodata" and for_seconds <= 0:
        bad("/for_seconds", "a nodata rule needs for_seconds > 0")

    hysteresis = v["hysteresis"]
    if not _is_number(hysteresis) or not _finite(hysteresis) or hysteresis < 0:
        bad("/hysteresis", "must be a finite number >= 0")
    elif hysteresis > 0 and operator in OPERATORS and operator not in ORDERING_OPERATORS:
        bad("/hysteresis", "applies only to the operators >, >=, <, <=")

    if v["severity"] not in SEVERITIES:
        bad("/severity", f"must be one of {', '.join(SEVERITIES)}")
    if not isinstance(v["enabled"], bool):
        bad("/enabled", "must be true or false")

    channels = v["channels"]
    if not isinstance(channels, list | tuple):
        bad("/channels", "must be an array of channel ids")
    else:
        for i, channel in enumerate(channels):
            if not isinstance(channel, str) or not 0 < len(channel) <= MAX_ID_LENGTH:
                bad(f"/channels/{i}", "must be a non-empty channel id")

    given = []
    for scope in SCOPE_FIELDS:
        value = v[scope]
        if value is None:
            continue
        given.append(scope)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
            bad(f"/{scope}", f"must be a non-empty string of at most {MAX_ID_LENGTH} characters")
    if len(given) > 1:
        for scope in given:
            bad(f"/{scope}", "give at most one of device_id, device_type, source")
    return errors


def _pointer(key: str) -> str:
    """A JSON Pointer (RFC 6901) to a top-level member."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def _is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _finite(x: int | float) -> bool:
    """Finite and within a float's range: a JSON integer may have 400 digits, which
    math.isfinite (and float()) cannot take."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


# --- the engine --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """One value the engine judges: subject is a device id or a source like "model:churn-v3"."""

    subject: str
    metric: str
    ts_ms: int
    value: Value
    device_type: str | None = None

    @classmethod
    def from_reading(cls, reading: Reading, device_type: str | None = None) -> Observation:
        return cls(reading.device_id, reading.metric, reading.ts, reading.value, device_type)


@dataclass(frozen=True, slots=True)
class Transition:
    """An episode starting ("raised") or ending ("cleared") for one (rule, subject)."""

    kind: TransitionKind
    rule_id: str
    subject: str
    metric: str
    value: Value | None  # the reading that decided it; None when a nodata episode is raised
    at_ms: int  # reading ts for observe(); now_ms for tick() and for nodata clears
    severity: Severity


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


@dataclass(slots=True)
class _Track:
    """Mutable working copy of a TrackState, owned by one engine."""

    seen_at: int
    latest_ts: int | None = None
    pending_since: int | None = None
    active: bool = False
    value: Value | None = None


# Predicates take Any: the engine calls them only on values `accepts` let through.
_Predicate = Callable[[Any], bool]


def _always(_value: Any) -> bool:
    return True


def _is_comparable_number(value: Any) -> bool:
    # Ordering operators ignore bools and strings; NaN compares false both ways, so ignore it too
    # rather than let it hold an episode open.
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


def _same(a: Value, b: Threshold) -> bool:
    """Equality without Python's True == 1: a boolean only equals a boolean, a string a string."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


@dataclass(frozen=True, slots=True)
class _Compiled:
    rule: Rule
    for_ms: int
    nodata: bool
    accepts: _Predicate
    breaches: _Predicate
    clears: _Predicate  # only asked while an episode is active


def _compile(rule: Rule) -> _Compiled:
    op, thr, hys = rule.operator, rule.threshold, rule.hysteresis
    for_ms = round(rule.for_seconds * 1000)
    if op == "nodata":
        return _Compiled(rule, for_ms, True, _always, _always, _always)
    if op in EQUALITY_OPERATORS:
        equal: _Predicate = lambda v: _same(v, thr)  # noqa: E731
        differ: _Predicate = lambda v: not _same(v, thr)  # noqa: E731
        if op == "==":
            return _Compiled(rule, for_ms, False, _always, equal, differ)
        return _Compiled(rule, for_ms, False, _always, differ, equal)
    t = float(cast(float, thr))
    predicates: dict[str, tuple[_Predicate, _Predicate]] = {
        ">": (lambda v: v > t, lambda v: v <= t - hys),
        ">=": (lambda v: v >= t, lambda v: v < t - hys),
        "<": (lambda v: v < t, lambda v: v >= t + hys),
        "<=": (lambda v: v <= t, lambda v: v > t + hys),
    }
    breaches, clears = predicates[op]
    return _Compiled(rule, for_ms, False, _is_comparable_number, breaches, clears)


def _same_meaning(old: Rule, new: Rule) -> bool:
    """Whether an open episode of `old` is still an episode of `new` (it may end on the next
    reading if the threshold moved, but it is about the same thing for the same subjects)."""
    return (
        old.metric == new.metric
        and (old.operator == "nodata") == (new.operator == "nodata")
        and (old.device_id, old.device_type, old.source)
        == (new.device_id, new.device_type, new.source)
    )


class RuleEngine:
    """Evaluates enabled rules over observations; emits each episode's raise and clear once.

    Not thread-safe: one owner (an actor) calls it.
    """

    def __init__(self, rules: Iterable[Rule], state: EngineState | None = None) -> None:
        self._rules: tuple[Rule, ...] = ()
        self._compiled: dict[str, _Compiled] = {}
        self._by_metric: dict[str, list[_Compiled]] = {}
        self._timed: list[_Compiled] = []  # rules tick() must look at
        self._tracks: dict[str, dict[str, _Track]] = {}  # rule id -> subject -> track
        self._install(rules)
        if state is not None:
            self._restore(state)

    @property
    def metrics(self) -> frozenset[str]:
        """Metrics some enabled rule watches: readings of other metrics need not be observed."""
        return frozenset(self._by_metric)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules as last given, disabled ones included."""
        return self._rules

    def observe(self, observations: Sequence[Observation], now_ms: int) -> list[Transition]:
        """Judge a batch of readings (any order; judged oldest first) that arrived at now_ms."""
        out: list[Transition] = []
        by_metric = self._by_metric
        relevant = [o for o in observations if o.metric in by_metric]
        if not relevant:
            return out
        relevant.sort(key=_ts_of)  # stable, and linear for the usual already-sorted batch
        tracks = self._tracks
        for obs in relevant:
            for c in by_metric[obs.metric]:
                rule = c.rule
                if not c.accepts(obs.value) or not rule.applies_to(obs.subject, obs.device_type):
                    continue
                by_subject = tracks[rule.id]
                track = by_subject.get(obs.subject)
                if track is None:
                    track = by_subject[obs.subject] = _Track(seen_at=now_ms)
                elif track.latest_ts is not None and obs.ts_ms <= track.latest_ts:
                    continue  # late or repeated reading: history must not flip the episode
                track.latest_ts = obs.ts_ms
                track.seen_at = now_ms
                track.value = obs.value
                if c.nodata:
                    if track.active:
                        track.active = False
                        out.append(_transition("cleared", c, obs.subject, obs.value, now_ms))
                elif track.active:
                    if c.clears(obs.value):
                        track.active = False
                        out.append(_transition("cleared", c, obs.subject, obs.value, obs.ts_ms))
                elif c.breaches(obs.value):
                    if track.pending_since is None:
                        track.pending_since = obs.ts_ms
                    if obs.ts_ms - track.pending_since >= c.for_ms:
                        track.active = True
                        track.pending_since = None
                        out.append(_transition("raised", c, obs.subject, obs.value, obs.ts_ms))
                else:
                    track.pending_since = None
        return out

    def tick(self, now_ms: int) -> list[Transition]:
        """Raise episodes that became due by the passage of time (for_seconds, nodata)."""
        out: list[Transition] = []
        for c in self._timed:
            by_subject = self._tracks[c.rule.id]
            if c.nodata:
                fixed = c.rule.fixed_subject
                if fixed is not None and fixed not in by_subject:
                    # Never reported: start the silence timer now rather than never.
                    by_subject[fixed] = _Track(seen_at=now_ms)
                for subject, track in by_subject.items():
                    if not track.active and now_ms - track.seen_at >= c.for_ms:
                        track.active = True
                        out.append(_transition("raised", c, subject, None, now_ms))
                continue
            for subject, track in by_subject.items():
                if track.active or track.pending_since is None or track.latest_ts is None:
                    continue
                held = track.latest_ts - track.pending_since + max(0, now_ms - track.seen_at)
                if held >= c.for_ms:
                    track.active = True
                    track.pending_since = None
                    out.append(_transition("raised", c, subject, track.value, now_ms))
        return out

    def set_rules(self, rules: Iterable[Rule], now_ms: int | None = None) -> list[Transition]:
        """Replace the rule set, keeping the tracks of rules that still mean the same thing.

        Returns a "cleared" transition for each open episode that ends because its rule was
        removed, disabled, or changed metric, kind (nodata or not) or scope, so the caller can
        resolve the stored alert (at now_ms, or the track's last arrival time if not given).
        An edited threshold, hysteresis, severity, ... keeps open episodes open: the next
        reading decides under the new condition. Pending timers restart in that case.
        """
        old_compiled, old_tracks = self._compiled, self._tracks
        self._install(rules)
        out: list[Transition] = []
        for rule_id, old in old_compiled.items():
            tracks = old_tracks[rule_id]
            new = self._compiled.get(rule_id)
            if new is not None and _same_meaning(old.rule, new.rule):
                if new.rule != old.rule:
                    for track in tracks.values():
                        track.pending_since = None
                self._tracks[rule_id] = tracks
                continue
            for subject, track in tracks.items():
                if track.active:
                    at = now_ms if now_ms is not None else track.seen_at
                    value = None if old.nodata else track.value
                    out.append(_transition("cleared", old, subject, value, at))
        return out

    def state(self) -> EngineState:
        return EngineState(
            tuple(
                TrackState(
                    rule_id=rule_id,
                    subject=subject,
                    metric=self._compiled[rule_id].rule.metric,
                    operator=self._compiled[rule_id].rule.operator,
                    latest_ts=t.latest_ts,
                    seen_at=t.seen_at,
                    pending_since=t.pending_since,
                    active=t.active,
                    value=t.value,
                )
                for rule_id, by_subject in self._tracks.items()
                for subject, t in by_subject.items()
            )
        )

    def _install(self, rules: Iterable[Rule]) -> None:
        all_rules = tuple(rules)
        seen: set[str] = set()
        for rule in all_rules:
            if rule.id in seen:
                raise ValueError(f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
        self._rules = all_rules
        self._compiled = {r.id: _compile(r) for r in all_rules if r.enabled}
        self._by_metric = {}
        for c in self._compiled.values():
            self._by_metric.setdefault(c.rule.metric, []).append(c)
        self._timed = [c for c in self._compiled.values() if c.nodata or c.for_ms > 0]
        self._tracks = {rule_id: {} for rule_id in self._compiled}

    def _restore(self, state: EngineState) -> None:
        for t in state.tracks:
            c = self._compiled.get(t.rule_id)
            if c is None or c.rule.metric != t.metric:
                continue  # rule gone or about something else now: its track means nothing
            if (c.rule.operator == "nodata") != (t.operator == "nodata"):
                continue
            fixed = c.rule.fixed_subject
            if fixed is not None and fixed != t.subject:
                continue
            self._tracks[t.rule_id][t.subject] = _Track(
                seen_at=t.seen_at,
                latest_ts=t.latest_ts,
                pending_since=None if c.rule.operator != t.operator else t.pending_since,
                active=t.active,
                value=t.value,
            )


def _ts_of(obs: Observation) -> int:
    return obs.ts_ms


def _transition(
    kind: TransitionKind, c: _Compiled, subject: str, value: Value | None, at_ms: int
) -> Transition:
    rule = c.rule
    return Transition(kind, rule.id, subject, rule.metric, value, at_ms, rule.severity)
