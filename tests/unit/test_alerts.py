"""The alert lifecycle table: allowed moves, refused moves and their wire code."""

from __future__ import annotations

import itertools

import pytest

from common.alerts import (
    OPEN_STATES,
    TRANSITIONS,
    AlertEvent,
    AlertState,
    InvalidTransition,
    allowed_events,
    next_state,
)
from common.problem import ProblemError

ALLOWED = {
    (AlertState.ACTIVE, AlertEvent.ACK): AlertState.ACKNOWLEDGED,
    (AlertState.ACTIVE, AlertEvent.RESOLVE): AlertState.RESOLVED,
    (AlertState.ACKNOWLEDGED, AlertEvent.RESOLVE): AlertState.RESOLVED,
}


def test_wire_values_match_the_contract() -> None:
    assert [s.value for s in AlertState] == ["active", "acknowledged", "resolved"]
    assert [e.value for e in AlertEvent] == ["ack", "resolve"]


@pytest.mark.parametrize(("state", "event"), list(ALLOWED))
def test_allowed_moves(state: AlertState, event: AlertEvent) -> None:
    assert next_state(state, event) is ALLOWED[(state, event)]


def test_table_is_exactly_the_lifecycle() -> None:
    assert dict(TRANSITIONS) == ALLOWED
    with pytest.raises(TypeError):
        TRANSITIONS[(AlertState.RESOLVED, AlertEvent.ACK)] = AlertState.ACTIVE  # type: ignore[index]


@pytest.mark.parametrize(
    ("state", "event"),
    [pair for pair in itertools.product(AlertState, AlertEvent) if pair not in ALLOWED],
)
def test_refused_moves_are_409_problems(state: AlertState, event: AlertEvent) -> None:
    with pytest.raises(InvalidTransition) as info:
        next_state(state, event)
    err = info.value
    assert isinstance(err, ProblemError)
    assert err.problem.status == 409
    doc = err.problem.to_dict()
    assert doc["status"] == 409
    assert doc["type"].endswith("/invalid-alert-transition")
    assert doc["state"] == state.value and doc["event"] == event.value
    assert state.value in doc["detail"]


def test_plain_strings_from_the_wire_work() -> None:
    assert next_state(AlertState("active"), AlertEvent("ack")) == "acknowledged"


def test_allowed_events_and_open_states() -> None:
    assert allowed_events(AlertState.ACTIVE) == {AlertEvent.ACK, AlertEvent.RESOLVE}
    assert allowed_events(AlertState.ACKNOWLEDGED) == {AlertEvent.RESOLVE}
    assert allowed_events(AlertState.RESOLVED) == frozenset()
    assert {AlertState.ACTIVE, AlertState.ACKNOWLEDGED} == OPEN_STATES
