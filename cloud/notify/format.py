"""What a notification says: pure functions from an alert snapshot to a webhook body or an email.

The outbox stores the alert as it was when the event happened (the snapshot), and formatting
happens at send time per channel type, so a channel switched from webhook to email still gets
a message in its own format. Times in JSON are ms since the epoch (CONTRACT); the email shows
them as UTC ISO 8601 for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# The CONTRACT alert fields, in the order a reader expects them.
ALERT_FIELDS = (
    "id",
    "rule_id",
    "state",
    "severity",
    "metric",
    "value",
    "device_id",
    "source",
    "started_at",
    "resolved_at",
)
# Extra fields that help a receiver (rule name, threshold...) pass through when present; the
# alert's own "notifications" status list is left out: it is about this very delivery.
_EXCLUDED = frozenset({"notifications"})
MAX_SUBJECT_VALUE = 60


class NotificationEvent(StrEnum):
    RAISED = "alert.raised"
    RESOLVED = "alert.resolved"


def event_for_alert(alert: Mapping[str, Any]) -> NotificationEvent:
    """The event an alert snapshot announces: resolved once it is resolved, else raised."""
    return (
        NotificationEvent.RESOLVED if alert.get("state") == "resolved" else NotificationEvent.RAISED
    )


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox row handed to a sender: which alert event goes to which channel."""

    id: str  # stable across attempts and restarts: the receiver's idempotency key
    org_id: str
    alert_id: str
    channel_id: str
    event: NotificationEvent
    alert: Mapping[str, Any]  # the alert snapshot taken when the event was enqueued
    attempt: int  # 1-based number of this delivery attempt
    created_at: int  # ms since the epoch


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    body: str


def alert_document(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert as sent: CONTRACT fields first (None when absent), then any extra fields."""
    doc: dict[str, Any] = {k: alert.get(k) for k in ALERT_FIELDS}
    # "device_id" or "source": keep only the one the alert has, unless it has neither.
    if doc["device_id"] is None and doc["source"] is not None:
        del doc["device_id"]
    elif doc["source"] is None:
        del doc["source"]
    for key, value in alert.items():
        if key not in doc and key not in _EXCLUDED and key not in ALERT_FIELDS:
            doc[key] = value
    return doc


def webhook_payload(
    alert: Mapping[str, Any], event: NotificationEvent, *, notification_id: str, sent_at_ms: int
) -> dict[str, Any]:
    """The JSON body POSTed to a webhook. `id` equals the Idempotency-Key header."""
    return {
        "id": notification_id,
        "event": event.value,
        "alert": alert_document(alert),
        "sent_at": sent_at_ms,
    }


def email_content(alert: Mapping[str, Any], event: NotificationEvent) -> EmailContent:
    """Subject and plain-text body of an alert email."""
    severity = _clean(alert.get("severity") or "alert").upper()
    metric = _clean(alert.get("metric") or "?")
    value = _clean(_short(alert.get("value")))
    subject_of = _subject_of(alert)
    what = "resolved" if event is NotificationEvent.RESOLVED else "raised"
    name = alert.get("rule_name") or alert.get("name")
    title = f" ({_clean(name)})" if name else ""
    subject = f"[IoTSphere] {severity}: {metric} = {value} on {subject_of} - alert {what}{title}"

    lines = [
        f"Alert {what}{title}.",
        "",
        f"Severity:  {severity.lower()}",
        f"Metric:    {metric}",
        f"Value:     {_clean(repr_value(alert.get('value')))}",
        f"On:        {subject_of}",
        f"State:     {_clean(alert.get('state') or '?')}",
        f"Started:   {iso_utc(alert.get('started_at'))}",
        f"Resolved:  {iso_utc(alert.get('resolved_at'))}",
        "",
        f"Alert id:  {_clean(alert.get('id') or '?')}",
        f"Rule id:   {_clean(alert.get('rule_id') or '?')}",
    ]
    return EmailContent(subject=subject, body="\n".join(lines) + "\n")


def iso_utc(ms: object) -> str:
    """ms since the epoch as `2025-11-28T03:20:00Z`, or "-" when unknown."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return "-"
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return dt.isoformat(timespec="seconds").replace("+00:00", "Z")


def repr_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _subject_of(alert: Mapping[str, Any]) -> str:
    if alert.get("device_id"):
        return f"device {_clean(alert['device_id'])}"
    if alert.get("source"):
        return _clean(alert["source"])
    return "unknown source"


def _short(value: object) -> str:
    text = repr_value(value)
    return text if len(text) <= MAX_SUBJECT_VALUE else text[: MAX_SUBJECT_VALUE - 3] + "..."


def _clean(value: object) -> str:
    """Device-supplied text goes into mail headers: no CR/LF or other control characters."""
    return "".join(c if ord(c) >= 32 and c != "\x7f" else " " for c in str(value))
