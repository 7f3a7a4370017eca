"""The rule engine and rule validation: observations in, transitions out, no clock, no I/O."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.model import Reading
from common.problem import ProblemError
from common.rules import (
    EngineState,
    InvalidRule,
    Observation,
    Rule,
    RuleEngine,
    Transition,
    parse_rule,
)

T0 = 1_764_300_000_000
S = 1000  # ms in a second


def rule(**kw: Any) -> Rule:
    fields: dict[str, Any] = {
        "id": "r1",
        "name": "hot",
        "metric": "temperature",
        "operator": ">",
        "threshold": 30.0,
    }
    fields.update(kw)
    return Rule(**fields)


def obs(
    value: Any,
    ts: int,
    subject: str = "dev-1",
    metric: str = "temperature",
    device_type: str | None = None,
) -> Observation:
    return Observation(subject, metric, ts, value, device_type)


def feed(
    engine: RuleEngine, values: Sequence[Any], start: int = T0, step: int = S
) -> list[Transition]:
    """One reading per call, each arriving at its own timestamp."""
    out: list[Transition] = []
    for i, v in enumerate(values):
        ts = start + i * step
        out += engine.observe([obs(v, ts)], now_ms=ts)
    return out


def kinds(transitions: Sequence[Transition]) -> list[tuple[str, Any]]:
    return [(t.kind, t.value) for t in transitions]


# --- threshold, hysteresis, for_seconds -------------------------------------------------------


def test_raised_once_then_hysteresis_then_cleared() -> None:
    engine = RuleEngine([rule(hysteresis=2.0)])
    raised = feed(engine, [31, 32, 33])
    assert raised == [Transition("raised", "r1", "dev-1", "temperature", 31, T0, "warning")]
    assert engine.observe([obs(29, T0 + 10 * S)], T0 + 10 * S) == []  # inside the band
    cleared = engine.observe([obs(27.5, T0 + 11 * S)], T0 + 11 * S)
    assert kinds(cleared) == [("cleared", 27.5)]
    assert cleared[0].at_ms == T0 + 11 * S
    # A new breach is a new episode.
    assert kinds(engine.observe([obs(31, T0 + 12 * S)], T0 + 12 * S)) == [("raised", 31)]


@pytest.mark.parametrize(
    ("operator", "threshold", "breach", "stays", "clears"),
    [
        (">", 30.0, 30.5, 28.5, 28.0),  # > clears at value <= threshold - hysteresis
        (">=", 30.0, 30.0, 28.0, 27.9),  # >= clears at value < threshold - hysteresis
        ("<", 10.0, 9.5, 11.5, 12.0),
        ("<=", 10.0, 10.0, 12.0, 12.1),
    ],
)
def test_hysteresis_boundaries(
    operator: str, threshold: float, breach: float, stays: float, clears: float
) -> None:
    engine = RuleEngine([rule(operator=operator, threshold=threshold, hysteresis=2.0)])
    assert kinds(feed(engine, [breach, stays, breach, stays, clears])) == [
        ("raised", breach),
        ("cleared", clears),
    ]


def test_threshold_itself_does_not_breach_strict_operator() -> None:
    engine = RuleEngine([rule()])
    assert feed(engine, [30, 30.0]) == []
    assert kinds(feed(engine, [30.01, 30], start=T0 + 10 * S)) == [
        ("raised", 30.01),
        ("cleared", 30),
    ]


def test_for_seconds_pending_reset_by_a_good_reading() -> None:
    engine = RuleEngine([rule(for_seconds=60)])

    def at(value: float, seconds: int) -> list[Transition]:
        return engine.observe([obs(value, T0 + seconds * S)], T0 + seconds * S)

    assert at(31, 0) == []
    assert at(31, 30) == []
    assert at(29, 40) == []  # resets the pending timer
    assert at(31, 50) == []
    assert at(31, 100) == []  # 50 s since the breach restarted, not 100
    assert kinds(at(31.5, 110)) == [("raised", 31.5)]
    assert at(32, 200) == []


def test_for_seconds_raised_by_tick() -> None:
    engine = RuleEngine([rule(for_seconds=60)])
    assert engine.observe([obs(31, T0)], T0) == []
    assert engine.tick(T0 + 59 * S) == []
    raised = engine.tick(T0 + 60 * S)
    assert raised == [
        Transition("raised", "r1", "dev-1", "temperature", 31, T0 + 60 * S, "warning")
    ]
    assert engine.tick(T0 + 120 * S) == []
    assert engine.observe([obs(35, T0 + 121 * S)], T0 + 121 * S) == []


def test_tick_counts_time_on_the_callers_clock_not_the_devices() -> None:
    # The device clock is an hour behind: the breach has not lasted 60 s just because
    # now - reading ts is large.
    engine = RuleEngine([rule(for_seconds=60)])
    engine.observe([obs(31, T0 - 3600 * S)], now_ms=T0)
    assert engine.tick(T0 + 1 * S) == []
    engine.observe([obs(31, T0 - 3600 * S + 30 * S)], now_ms=T0 + 30 * S)
    assert engine.tick(T0 + 45 * S) == []  # 30 s by readings + 15 s since the last one
    assert kinds(engine.tick(T0 + 60 * S)) == [("raised", 31)]


def test_a_good_reading_stops_the_tick_timer() -> None:
    engine = RuleEngine([rule(for_seconds=60)])
    engine.observe([obs(31, T0)], T0)
    engine.observe([obs(25, T0 + 10 * S)], T0 + 10 * S)
    assert engine.tick(T0 + 600 * S) == []


def test_batch_is_judged_in_timestamp_order() -> None:
    engine = RuleEngine([rule(for_seconds=60)])
    out = engine.observe([obs(31, T0 + 60 * S), obs(31, T0)], T0 + 61 * S)
    assert [(t.kind, t.at_ms) for t in out] == [("raised", T0 + 60 * S)]


def test_old_and_repeated_readings_do_not_flip_state() -> None:
    engine = RuleEngine([rule()])
    assert kinds(engine.observe([obs(31, T0 + 10 * S)], T0 + 10 * S)) == [("raised", 31)]
    assert engine.observe([obs(20, T0 + 5 * S)], T0 + 11 * S) == []  # late
    assert engine.observe([obs(20, T0 + 10 * S)], T0 + 12 * S) == []  # same ts: a duplicate
    assert kinds(engine.observe([obs(20, T0 + 13 * S)], T0 + 13 * S)) == [("cleared", 20)]


def test_ordering_operators_ignore_booleans_and_strings() -> None:
    engine = RuleEngine([rule(threshold=0.0)])
    # In Python True > 0; a boolean is not a temperature, so it must not raise.
    assert feed(engine, [True, "hot", float("nan")]) == []
    assert kinds(feed(engine, [1, False, "cold"], start=T0 + 10 * S)) == [("raised", 1)]


def test_equality_compares_types_strictly() -> None:
    engine = RuleEngine([rule(metric="door_open", operator="==", threshold=True)])

    def door(value: Any, seconds: int) -> list[Transition]:
        return engine.observe([obs(value, T0 + seconds * S, metric="door_open")], T0)

    assert door(1, 0) == []  # 1 is not True here
    assert kinds(door(True, 1)) == [("raised", True)]
    assert door(True, 2) == []
    assert kinds(door(False, 3)) == [("cleared", False)]


def test_not_equal_string() -> None:
    engine = RuleEngine([rule(metric="mode", operator="!=", threshold="auto")])
    out = []
    for i, value in enumerate(["auto", "manual", "off", "auto"]):
        out += engine.observe([obs(value, T0 + i * S, metric="mode")], T0 + i * S)
    assert kinds(out) == [("raised", "manual"), ("cleared", "auto")]


def test_disabled_rules_and_unrelated_metrics_do_nothing() -> None:
    engine = RuleEngine([rule(enabled=False), rule(id="r2", metric="humidity")])
    assert feed(engine, [99, 100]) == []


def test_severity_and_ids_are_carried() -> None:
    engine = RuleEngine([rule(id="a"), rule(id="b", severity="critical", threshold=40.0)])
    out = engine.observe([obs(50, T0)], T0)
    assert [(t.rule_id, t.severity) for t in out] == [("a", "warning"), ("b", "critical")]


def test_subjects_are_tracked_separately() -> None:
    engine = RuleEngine([rule()])
    out = engine.observe([obs(31, T0, "a"), obs(31, T0, "b"), obs(20, T0 + S, "a")], T0 + S)
    assert [(t.kind, t.subject) for t in out] == [
        ("raised", "a"),
        ("raised", "b"),
        ("cleared", "a"),
    ]


# --- scope ------------------------------------------------------------------------------------


def test_scope_device_id_device_type_and_source() -> None:
    engine = RuleEngine(
        [
            rule(id="one", device_id="dev-1"),
            rule(id="type", device_type="boiler"),
            rule(id="model", metric="drift", threshold=0.2, source="model:churn-v3"),
        ]
    )
    out = engine.observe(
        [
            obs(31, T0, "dev-1"),
            obs(31, T0, "dev-2", device_type="boiler"),
            obs(31, T0, "dev-3", device_type="fridge"),
            obs(0.5, T0, "model:churn-v3", metric="drift"),
            obs(0.5, T0, "model:other", metric="drift"),
        ],
        T0,
    )
    assert sorted((t.rule_id, t.subject) for t in out) == [
        ("model", "model:churn-v3"),
        ("one", "dev-1"),
        ("type", "dev-2"),
    ]


# --- nodata -----------------------------------------------------------------------------------


def test_nodata_raised_by_tick_and_cleared_by_next_reading() -> None:
    engine = RuleEngine([rule(operator="nodata", threshold=None, for_seconds=300)])
    engine.observe([obs(20, T0)], T0)
    assert engine.tick(T0 + 299 * S) == []
    raised = engine.tick(T0 + 300 * S)
    assert raised == [
        Transition("raised", "r1", "dev-1", "temperature", None, T0 + 300 * S, "warning")
    ]
    assert engine.tick(T0 + 400 * S) == []  # raised once
    assert engine.observe([obs(19, T0 - S)], T0 + 401 * S) == []  # older than seen: no flip
    cleared = engine.observe([obs(21, T0 + 402 * S)], T0 + 402 * S)
    assert kinds(cleared) == [("cleared", 21)]
    assert engine.tick(T0 + 701 * S) == []
    assert kinds(engine.tick(T0 + 702 * S)) == [("raised", None)]


def test_nodata_for_a_device_that_never_reported_starts_at_first_tick() -> None:
    engine = RuleEngine(
        [rule(operator="nodata", threshold=None, for_seconds=60, device_id="dev-9")]
    )
    assert engine.tick(T0) == []
    assert engine.tick(T0 + 59 * S) == []
    out = engine.tick(T0 + 60 * S)
    assert [(t.kind, t.subject, t.at_ms) for t in out] == [("raised", "dev-9", T0 + 60 * S)]
    assert kinds(engine.observe([obs(1, T0 + 61 * S, "dev-9")], T0 + 61 * S)) == [("cleared", 1)]


def test_unscoped_nodata_watches_only_subjects_seen() -> None:
    engine = RuleEngine([rule(operator="nodata", threshold=None, for_seconds=60)])
    assert engine.tick(T0 + 3600 * S) == []


# --- state snapshot and rule changes ----------------------------------------------------------


def test_episode_survives_restart() -> None:
    rules = [rule(hysteresis=1.0), rule(id="slow", for_seconds=60, threshold=40.0)]
    engine = RuleEngine(rules)
    assert kinds(engine.observe([obs(45, T0)], T0)) == [("raised", 45)]  # r1 raised, slow pending
    text = engine.state().to_json()
    json.loads(text)  # plain JSON

    restored = RuleEngine(rules, EngineState.from_json(text))
    assert restored.state() == engine.state()
    assert restored.observe([obs(45, T0 + 30 * S)], T0 + 30 * S) == []
    assert [t.rule_id for t in restored.observe([obs(45, T0 + 60 * S)], T0 + 60 * S)] == ["slow"]
    assert [(t.rule_id, t.kind) for t in restored.observe([obs(20, T0 + 61 * S)], T0)] == [
        ("r1", "cleared"),
        ("slow", "cleared"),
    ]
    # Without the snapshot the same reading would have raised again.
    assert kinds(RuleEngine(rules).observe([obs(45, T0 + 30 * S)], T0)) == [("raised", 45)]


def test_restore_drops_tracks_of_rules_that_changed_meaning() -> None:
    engine = RuleEngine([rule()])
    engine.observe([obs(45, T0)], T0)
    state = engine.state()
    assert len(state.active) == 1
    moved = RuleEngine([rule(metric="pressure")], state)
    assert moved.state().tracks == ()
    assert RuleEngine([], state).state().tracks == ()


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[]",
        '{"format": 2, "tracks": []}',
        '{"format": 1, "tracks": {}}',
        '{"format": 1, "tracks": [{"rule_id": "r"}]}',
    ],
)
def test_bad_snapshots_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        EngineState.from_json(text)


def test_set_rules_keeps_unchanged_and_reports_removed() -> None:
    keep, gone = rule(id="keep"), rule(id="gone")
    engine = RuleEngine([keep, gone])
    assert len(engine.observe([obs(45, T0)], T0)) == 2
    out = engine.set_rules([keep], now_ms=T0 + 5 * S)
    assert [(t.kind, t.rule_id, t.value, t.at_ms) for t in out] == [
        ("cleared", "gone", 45, T0 + 5 * S)
    ]
    assert engine.observe([obs(46, T0 + 6 * S)], T0 + 6 * S) == []  # keep: still one episode
    # Re-adding the rule starts from scratch.
    engine.set_rules([keep, gone])
    assert [t.rule_id for t in engine.observe([obs(47, T0 + 7 * S)], T0 + 7 * S)] == ["gone"]


def test_set_rules_threshold_edit_keeps_episode_open() -> None:
    engine = RuleEngine([rule()])
    engine.observe([obs(45, T0)], T0)
    assert engine.set_rules([rule(threshold=40.0, version=2)]) == []
    assert engine.observe([obs(42, T0 + S)], T0 + S) == []
    assert kinds(engine.observe([obs(39, T0 + 2 * S)], T0 + 2 * S)) == [("cleared", 39)]


@pytest.mark.parametrize(
    "changed",
    [
        rule(enabled=False),
        rule(metric="pressure"),
        rule(device_id="dev-2"),
        rule(operator="nodata", threshold=None, for_seconds=5),
    ],
)
def test_set_rules_ends_episodes_whose_rule_changed_meaning(changed: Rule) -> None:
    engine = RuleEngine([rule()])
    engine.observe([obs(45, T0)], T0)
    out = engine.set_rules([changed])
    assert [(t.kind, t.rule_id, t.at_ms) for t in out] == [("cleared", "r1", T0)]


def test_duplicate_rule_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        RuleEngine([rule(), rule()])


def test_observation_from_reading() -> None:
    reading = Reading("dev-1", "temperature", T0, 31.0, received_at=T0 + 5)
    assert Observation.from_reading(reading, "boiler") == Observation(
        "dev-1", "temperature", T0, 31.0, "boiler"
    )


# --- rule documents ---------------------------------------------------------------------------


def test_parse_rule_round_trips_contract_shape() -> None:
    doc = {
        "name": "boiler hot",
        "metric": "temperature",
        "operator": ">=",
        "threshold": 80,
        "for_seconds": 30,
        "hysteresis": 2.5,
        "severity": "critical",
        "enabled": True,
        "channels": ["ch-1", "ch-2"],
        "device_type": "boiler",
    }
    parsed = parse_rule(doc, id="r7", version=3)
    assert parsed.threshold == 80.0 and isinstance(parsed.threshold, float)
    assert parsed.channels == ("ch-1", "ch-2")
    out = parsed.to_dict()
    assert out == {**doc, "id": "r7", "version": 3}
    assert set(out) >= {
        "id", "name", "metric", "operator", "threshold", "for_seconds", "hysteresis",
        "severity", "enabled", "channels", "version",
    }  # fmt: skip
    # What the server hands out can be sent back (e.g. PATCH by merge); id/version are ignored.
    assert parse_rule({**out, "id": "x", "version": 99}, id="r7", version=3) == parsed


def test_parse_rule_defaults_and_generated_names() -> None:
    minimal = parse_rule({"metric": "t", "operator": "<", "threshold": -5}, id="a", version=1)
    assert minimal.to_dict() == {
        "id": "a",
        "name": "t < -5",
        "metric": "t",
        "operator": "<",
        "threshold": -5.0,
        "for_seconds": 0.0,
        "hysteresis": 0.0,
        "severity": "warning",
        "enabled": True,
        "channels": [],
        "version": 1,
    }
    nodata = parse_rule(
        {"metric": "t", "operator": "nodata", "for_seconds": 300}, id="b", version=1
    )
    assert nodata.threshold is None and nodata.name == "no t for 300s"
    door = parse_rule({"metric": "door", "operator": "==", "threshold": True}, id="c", version=1)
    assert door.threshold is True and door.name == "door == true"
    mode = parse_rule({"metric": "mode", "operator": "!=", "threshold": "auto"}, id="d", version=1)
    assert mode.threshold == "auto"


def problems(data: Any) -> dict[str, str]:
    with pytest.raises(InvalidRule) as info:
        parse_rule(data, id="r1", version=1)
    err = info.value
    assert isinstance(err, ProblemError)
    doc = err.problem.to_dict()
    assert doc["status"] == 422
    assert doc["type"].endswith("/invalid-rule")
    return {e["path"]: e["message"] for e in doc["errors"]}


def test_parse_rule_lists_every_problem_with_its_path() -> None:
    errors = problems(
        {
            "metric": "bad metric!",
            "operator": "~=",
            "threshold": 1,
            "for_seconds": -1,
            "hysteresis": -0.5,
            "severity": "fatal",
            "enabled": "yes",
            "channels": ["ok", ""],
            "device_id": "dev-1",
            "source": "model:x",
            "treshold": 3,
        }
    )
    assert set(errors) == {
        "/metric",
        "/operator",
        "/for_seconds",
        "/hysteresis",
        "/severity",
        "/enabled",
        "/channels/1",
        "/device_id",
        "/source",
        "/treshold",
    }
    assert "~=" in errors["/operator"]
    assert errors["/treshold"] == "unknown field"


@pytest.mark.parametrize(
    ("doc", "path", "fragment"),
    [
        ({"metric": "t", "operator": ">"}, "/threshold", "required"),
        ({"metric": "t", "operator": ">", "threshold": "30"}, "/threshold", "number"),
        ({"metric": "t", "operator": ">", "threshold": True}, "/threshold", "number"),
        ({"metric": "t", "operator": "<=", "threshold": float("inf")}, "/threshold", "finite"),
        ({"metric": "t", "operator": "==", "threshold": [1]}, "/threshold", "boolean"),
        ({"metric": "t", "operator": "==", "threshold": "x" * 257}, "/threshold", "256"),
        ({"metric": "t", "operator": "nodata"}, "/for_seconds", "> 0"),
        ({"metric": "t", "operator": "nodata", "for_seconds": 0}, "/for_seconds", "> 0"),
        ({"metric": "t", "operator": "nodata", "for_seconds": 9, "threshold": 1}, "/threshold", ""),
        ({"metric": "t", "operator": "==", "threshold": 1, "hysteresis": 1}, "/hysteresis", ">"),
        ({"operator": ">", "threshold": 1}, "/metric", "required"),
        ({"metric": "x" * 65, "operator": ">", "threshold": 1}, "/metric", "64"),
        ({"metric": "t", "threshold": 1}, "/operator", "required"),
        ({"metric": "t", "operator": ">", "threshold": 1, "for_seconds": "5"}, "/for_seconds", ""),
        ({"metric": "t", "operator": ">", "threshold": 1, "name": ""}, "/name", "non-empty"),
        ({"metric": "t", "operator": ">", "threshold": 1, "channels": "c1"}, "/channels", ""),
        (
            {"metric": "t", "operator": ">", "threshold": 1, "device_id": "a", "device_type": "b"},
            "/device_type",
            "at most one",
        ),
        ({"metric": "t", "operator": ">", "threshold": 1, "a/b": 1}, "/a~1b", "unknown"),
        (["metric", "t"], "", "object"),
    ],
)
def test_parse_rule_single_problems(doc: Any, path: str, fragment: str) -> None:
    errors = problems(doc)
    assert path in errors, errors
    assert fragment in errors[path]


def test_rule_validates_on_direct_construction_too() -> None:
    with pytest.raises(InvalidRule):
        rule(operator="between")
    with pytest.raises(InvalidRule):
        rule(version=0)
    assert rule(channels=["c"]).channels == ("c",)


# --- properties -------------------------------------------------------------------------------

PROPERTY_RULES = [
    rule(id="gt", hysteresis=2.0),
    rule(id="ge-slow", operator=">=", threshold=20.0, for_seconds=30),
    rule(id="lt", operator="<", threshold=10.0, hysteresis=1.0, for_seconds=10),
    rule(id="eq", operator="==", threshold=True),
    rule(id="ne", operator="!=", threshold="ok"),
    rule(id="quiet", operator="nodata", threshold=None, for_seconds=60),
    rule(id="quiet-b", operator="nodata", threshold=None, for_seconds=20, device_id="b"),
]

values = st.one_of(
    st.floats(min_value=-5, max_value=45, allow_nan=False),
    st.integers(min_value=-5, max_value=45),
    st.booleans(),
    st.sampled_from(["ok", "bad"]),
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("obs"),
            st.sampled_from(["a", "b"]),
            values,
            st.integers(min_value=-20, max_value=40),  # seconds; negative = a late reading
        ),
        st.tuples(st.just("tick"), st.integers(min_value=0, max_value=90)),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_raise_and_clear_alternate_per_rule_and_subject(plan: list[tuple[Any, ...]]) -> None:
    engine = RuleEngine(PROPERTY_RULES)
    now = T0
    device_ts = {"a": T0, "b": T0}
    newest_number_ts: dict[str, int] = {}  # what the numeric rules have seen, per subject
    open_episodes: set[tuple[str, str]] = set()

    def check(transitions: list[Transition]) -> None:
        for t in transitions:
            key = (t.rule_id, t.subject)
            if t.kind == "raised":
                assert key not in open_episodes, f"second raise for {key}"
                open_episodes.add(key)
            else:
                assert key in open_episodes, f"clear without raise for {key}"
                open_episodes.remove(key)

    for step in plan:
        if step[0] == "obs":
            _, subject, value, dt = step
            now += 1 * S
            device_ts[subject] += dt * S
            check(engine.observe([obs(value, device_ts[subject], subject)], now))
            is_number = isinstance(value, int | float) and not isinstance(value, bool)
            if is_number and device_ts[subject] > newest_number_ts.get(subject, T0 - 10**9):
                newest_number_ts[subject] = device_ts[subject]
                # for_seconds=0 rule: a new breaching value is always inside an open episode,
                # a value past the hysteresis band never is.
                if value > 30:
                    assert ("gt", subject) in open_episodes
                elif value <= 28:
                    assert ("gt", subject) not in open_episodes
        elif step[0] == "tick":
            now += step[1] * S
            check(engine.tick(now))
        else:
            engine = RuleEngine(PROPERTY_RULES, EngineState.from_json(engine.state().to_json()))
    assert {(t.rule_id, t.subject) for t in engine.state().active} == open_episodes


@pytest.mark.parametrize("operator", [{}, [], 5, True])
def test_an_operator_that_is_not_a_string_is_a_422_not_a_crash(operator: Any) -> None:
    """Found by schemathesis: {"operator": {}} raised TypeError (unhashable) -> HTTP 500."""
    errors = problems({"metric": "t", "operator": operator, "threshold": 1})
    assert set(errors) == {"/operator"} and "unknown operator" in errors["/operator"]
