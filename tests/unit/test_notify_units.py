"""Pure parts of cloud notifications: channel validation, formatting, state table, backoff."""

from __future__ import annotations

import random

import pytest

from cloud.notify.channels import ChannelType, apply_patch, parse_channel
from cloud.notify.format import (
    NotificationEvent,
    email_content,
    event_for_alert,
    webhook_payload,
)
from cloud.notify.outbox import (
    TRANSITIONS,
    InvalidOutboxTransition,
    NotificationStatus,
    OutboxEvent,
    RetryPolicy,
    after_failure,
    backoff_ceiling_s,
    backoff_delay_s,
    next_status,
    notification_id,
)
from common.problem import ProblemError

S, E = NotificationStatus, OutboxEvent

ALERT = {
    "id": "a-1",
    "rule_id": "r-1",
    "rule_name": "hot",
    "state": "active",
    "severity": "critical",
    "metric": "temperature",
    "value": 91.5,
    "device_id": "thermo-1",
    "started_at": 1_764_300_000_000,
    "resolved_at": None,
    "notifications": [{"channel_id": "c", "status": "pending", "attempts": 0}],
}


# --- channels ---------------------------------------------------------------------------------


def test_parse_webhook_and_email_channels() -> None:
    hook = parse_channel(
        {"name": " ops hook ", "type": "webhook", "url": "https://h.example/x", "secret": "s" * 16},
        id="c1",
    )
    assert (hook.id, hook.name, hook.type, hook.url) == (
        "c1",
        "ops hook",
        ChannelType.WEBHOOK,
        "https://h.example/x",
    )
    assert "secret" not in hook.to_dict() and hook.to_dict()["signed"] is True
    assert "s" * 16 not in repr(hook)
    mail = parse_channel({"id": "c2", "name": "ops", "type": "email", "to": "ops@example.com"})
    assert mail.to_dict() == {"id": "c2", "name": "ops", "type": "email", "to": "ops@example.com"}


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"name": "x", "type": "webhook", "url": "ftp://h/x"}, "/url"),
        ({"name": "x", "type": "webhook", "url": "http:///nohost"}, "/url"),
        ({"name": "x", "type": "webhook", "url": "https://h:99999/"}, "/url"),
        ({"name": "x", "type": "webhook", "url": "https://h/a b"}, "/url"),
        ({"name": "x", "type": "webhook"}, "/url"),
        ({"name": "x", "type": "webhook", "url": "https://h/", "secret": "short"}, "/secret"),
        ({"name": "x", "type": "email", "to": "not-an-address"}, "/to"),
        ({"name": "x", "type": "email", "to": "a@b.com\r\nBcc: evil@x.com"}, "/to"),
        ({"name": "x", "type": "email", "to": "a@localhost"}, "/to"),
        ({"name": "x", "type": "email", "to": "a@b.com", "url": "https://h/"}, "/url"),
        ({"name": "x", "type": "sms", "to": "a@b.com"}, "/type"),
        ({"name": "", "type": "email", "to": "a@b.com"}, "/name"),
        ({"name": "x", "type": "email", "to": "a@b.com", "URL": "typo"}, "/URL"),
    ],
)
def test_invalid_channels_are_422_with_field_errors(doc: dict[str, object], path: str) -> None:
    with pytest.raises(ProblemError) as info:
        parse_channel(doc, id="c")
    problem = info.value.problem
    assert problem.status == 422
    assert path in [e.path for e in problem.errors]


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ProblemError) as info:
        parse_channel({"type": "webhook", "url": "nope"})
    assert {e.path for e in info.value.problem.errors} == {"/id", "/name", "/url"}


def test_patch_keeps_id_and_changing_type_needs_new_address() -> None:
    hook = parse_channel({"name": "h", "type": "webhook", "url": "http://h/x"}, id="c1")
    renamed = apply_patch(hook, {"name": "new", "id": "other"})
    assert (renamed.id, renamed.name, renamed.url) == ("c1", "new", "http://h/x")
    mail = apply_patch(hook, {"type": "email", "to": "ops@example.com"})
    assert (mail.type, mail.url, mail.to) == (ChannelType.EMAIL, None, "ops@example.com")
    with pytest.raises(ProblemError):
        apply_patch(hook, {"type": "email"})


# --- format -----------------------------------------------------------------------------------


def test_webhook_payload_shape() -> None:
    body = webhook_payload(ALERT, NotificationEvent.RAISED, notification_id="n1", sent_at_ms=5)
    assert body["event"] == "alert.raised" and body["id"] == "n1" and body["sent_at"] == 5
    alert = body["alert"]
    assert list(alert)[:9] == [
        "id",
        "rule_id",
        "state",
        "severity",
        "metric",
        "value",
        "device_id",
        "started_at",
        "resolved_at",
    ]
    assert "source" not in alert and "notifications" not in alert
    assert alert["rule_name"] == "hot" and alert["value"] == 91.5


def test_model_alert_uses_source_and_resolved_event() -> None:
    alert = {
        "id": "a",
        "rule_id": "r",
        "state": "resolved",
        "severity": "warning",
        "metric": "accuracy",
        "value": 0.7,
        "source": "model:churn-v3",
        "started_at": 0,
        "resolved_at": 60_000,
    }
    assert event_for_alert(alert) is NotificationEvent.RESOLVED
    assert event_for_alert(ALERT) is NotificationEvent.RAISED
    body = webhook_payload(alert, NotificationEvent.RESOLVED, notification_id="n", sent_at_ms=1)
    assert body["alert"]["source"] == "model:churn-v3" and "device_id" not in body["alert"]
    mail = email_content(alert, NotificationEvent.RESOLVED)
    assert mail.subject == "[IoTSphere] WARNING: accuracy = 0.7 on model:churn-v3 - alert resolved"
    assert "Resolved:  1970-01-01T00:01:00Z" in mail.body


def test_email_subject_cannot_inject_headers() -> None:
    alert = {**ALERT, "device_id": "evil\r\nBcc: x@y.z", "value": "v" * 500}
    mail = email_content(alert, NotificationEvent.RAISED)
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert mail.subject.startswith("[IoTSphere] CRITICAL: temperature = vvv")
    assert len(mail.subject) < 200
    assert "Started:   2025-11-28T03:20:00Z" in mail.body


# --- state table ------------------------------------------------------------------------------


def test_state_table_happy_and_retry_paths() -> None:
    st = S.PENDING
    for event, expected in [
        (E.CLAIM, S.SENDING),
        (E.RETRY, S.RETRYING),
        (E.CLAIM, S.SENDING),
        (E.SUCCEED, S.SENT),
    ]:
        st = next_status(st, event)
        assert st is expected
    assert next_status(S.SENDING, E.GIVE_UP) is S.FAILED
    assert next_status(S.SENDING, E.RECOVER) is S.RETRYING


@pytest.mark.parametrize("status", [S.SENT, S.FAILED])
def test_terminal_states_accept_nothing(status: NotificationStatus) -> None:
    for event in OutboxEvent:
        with pytest.raises(InvalidOutboxTransition):
            next_status(status, event)


def test_only_a_claimed_notification_can_be_marked() -> None:
    for st in (S.PENDING, S.RETRYING):
        for event in (E.SUCCEED, E.RETRY, E.GIVE_UP, E.RECOVER):
            assert (st, event) not in TRANSITIONS
            with pytest.raises(InvalidOutboxTransition):
                next_status(st, event)


def test_after_failure_decision() -> None:
    assert after_failure(attempts=1, max_attempts=3, retryable=True) is E.RETRY
    assert after_failure(attempts=3, max_attempts=3, retryable=True) is E.GIVE_UP
    assert after_failure(attempts=1, max_attempts=3, retryable=False) is E.GIVE_UP


def test_notification_id_is_stable_and_distinct() -> None:
    a = notification_id("org", "a1", "c1", "alert.raised")
    assert a == notification_id("org", "a1", "c1", "alert.raised")
    assert a != notification_id("org", "a1", "c1", "alert.resolved")
    assert a != notification_id("org", "a1", "c2", "alert.raised")


# --- backoff ----------------------------------------------------------------------------------


def test_backoff_ceiling_doubles_then_caps() -> None:
    policy = RetryPolicy(base_s=2, cap_s=60)
    assert [backoff_ceiling_s(n, policy) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert backoff_ceiling_s(10_000, policy) == 60  # no overflow for absurd attempt counts


def test_backoff_full_jitter_stays_within_zero_and_ceiling() -> None:
    policy = RetryPolicy(base_s=1, cap_s=30)
    rng = random.Random(7)
    for attempts in range(1, 12):
        delays = [backoff_delay_s(attempts, policy, rng.random) for _ in range(200)]
        ceiling = backoff_ceiling_s(attempts, policy)
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 2  # spread out, not a fixed delay
    assert backoff_delay_s(3, policy, lambda: 0.0) == 0
    assert backoff_delay_s(3, policy, lambda: 0.5) == 2.0
    assert backoff_delay_s(50, policy, lambda: 0.999999) <= 30


def test_backoff_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=1, cap_s=30)
    assert backoff_delay_s(1, policy, lambda: 0.0, retry_after_s=10) == 10
    assert backoff_delay_s(1, policy, lambda: 0.0, retry_after_s=3600) == 30


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=10, cap_s=1)
