"""The alert lifecycle as one explicit state table (the h11 `_state.py` approach).

active -> acknowledged -> resolved, or active -> resolved directly. Every state change of a
stored alert, whether a user asked for it or the rule engine cleared an episode, goes through
`next_state`, so an impossible move is refused in one place with its wire code (409).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from common.problem import Problem, ProblemError


class AlertState(StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class AlertEvent(StrEnum):
    ACK = "ack"
    RESOLVE = "resolve"


# Anything not listed is refused. Resolved is terminal: a new episode is a new alert.
TRANSITIONS: Mapping[tuple[AlertState, AlertEvent], AlertState] = MappingProxyType(
    {
        (AlertState.ACTIVE, AlertEvent.ACK): AlertState.ACKNOWLEDGED,
        (AlertState.ACTIVE, AlertEvent.RESOLVE): AlertState.RESOLVED,
        (AlertState.ACKNOWLEDGED, AlertEvent.RESOLVE): AlertState.RESOLVED,
    }
)

# States in which an alert still needs attention (counted as "active alerts" in status views).
OPEN_STATES: frozenset[AlertState] = frozenset({AlertState.ACTIVE, AlertState.ACKNOWLEDGED})


class InvalidTransition(ProblemError):
    """An event that the table does not allow in the alert's current state (HTTP 409)."""

    def __init__(self, state: AlertState, event: AlertEvent) -> None:
        super().__init__(
            Problem(
                slug="invalid-alert-transition",
                title="Invalid alert state change",
                status=409,
                detail=f"cannot {event.value} an alert that is {state.value}",
                extra={"state": state.value, "event": event.value},
            )
        )
        self.state = state
        self.event = event


def next_state(state: AlertState, event: AlertEvent) -> AlertState:
    """The state after `event`, or InvalidTransition when the table has no such move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None


def allowed_events(state: AlertState) -> frozenset[AlertEvent]:
    """The events accepted in `state` (e.g. to show only the valid buttons on a dashboard)."""
    return frozenset(ev for (st, ev) in TRANSITIONS if st == state)
