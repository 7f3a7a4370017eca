"""The pure rule engine: observations in, transitions out. No I/O and no clock of its own:
callers pass now_ms, so the gateway (on every committed batch) and the cloud (on synced batches
and model metrics) run the same code, and tests move time by hand. The engine keeps one small
track per (rule, subject) and hands its snapshot out as an EngineState (common.rule_state);
rules arrive compiled to predicates (common.rule_conditions). The episode semantics are
documented on RuleEngine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from common.model import Reading, Value
from common.rule_conditions import CompiledRule, compile_rule, same_meaning
from common.rule_definition import Rule
from common.rule_state import EngineState, TrackState
from common.rule_validation import Severity

TransitionKind = Literal["raised", "cleared"]


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


@dataclass(slots=True)
class _Track:
    """Mutable working copy of a TrackState, owned by one engine."""

    seen_at: int
    latest_ts: int | None = None
    pending_since: int | None = None
    active: bool = False
    value: Value | None = None


class RuleEngine:
    """Evaluates enabled rules over observations; emits each episode's raise and clear once.

    Not thread-safe: one owner (an actor) calls it.

    Episode semantics, per (rule, subject):
    - raised once, when the condition has held continuously for `for_seconds`: judged by
      reading timestamps in `observe`, and in `tick` by the time the breach had lasted at the
      last reading plus the time elapsed on the caller's clock since that reading arrived (so a
      device whose clock is off cannot make `tick` fire early or never);
    - a non-breaching reading before `for_seconds` elapsed resets the pending timer;
    - cleared when the value is back past the threshold by `hysteresis`. For `>`: cleared when
      value <= threshold - hysteresis; `>=`: value < threshold - hysteresis; `<`: value >=
      threshold + hysteresis; `<=`: value > threshold + hysteresis. With hysteresis 0 an
      episode therefore clears exactly when the condition stops holding; `==` / `!=` always
      clear that way;
    - readings not newer than the latest one already seen for the track are ignored, so a late
      or duplicated reading cannot flip an episode;
    - `nodata` rules measure silence on the caller's clock (arrival time, not device time, so a
      device with a wrong clock that is sending is not reported as silent): `tick` raises once
      now - last arrival >= for_seconds, and the next new reading clears the episode.
    """

    def __init__(self, rules: Iterable[Rule], state: EngineState | None = None) -> None:
        self._rules: tuple[Rule, ...] = ()
        self._compiled: dict[str, CompiledRule] = {}
        self._by_metric: dict[str, list[CompiledRule]] = {}
        self._timed: list[CompiledRule] = []  # rules tick() must look at
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

    # the episode state machine in one place (see RuleEngine):
    def observe(self, observations: Sequence[Observation], now_ms: int) -> list[Transition]:  # noqa: PLR0912
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
            if new is not None and same_meaning(old.rule, new.rule):
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
        self._compiled = {r.id: compile_rule(r) for r in all_rules if r.enabled}
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
    kind: TransitionKind, c: CompiledRule, subject: str, value: Value | None, at_ms: int
) -> Transition:
    rule = c.rule
    return Transition(kind, rule.id, subject, rule.metric, value, at_ms, rule.severity)
