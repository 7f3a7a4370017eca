"""The durable notification outbox: a pure state table and backoff, and its storage (either engine).

Lifecycle (one row per alert x channel x event):

    pending --claim--> sending --succeed--> sent
                       sending --retry----> retrying --claim--> sending ...
                       sending --give_up--> failed      (permanent error, or max_attempts used)
                       sending --recover--> retrying    (worker died mid-send: on start,
                                                         or once its lease expired)

`attempts` counts claims, so a notification that crashes the process on every try still ends
in `failed` instead of looping forever.

Delivery guarantee: at-least-once, not exactly-once. A crash (or a lost HTTP response) after
the receiver accepted a message but before `mark_sent` committed means it is sent again after
recovery. Exactly-once needs the receiver's help: every attempt of one notification carries the
same `Idempotency-Key` header (webhook) / Message-ID (email) = the notification id, which is
derived from (org, alert, channel, event) and so is also stable if the same event is enqueued
again. A receiver that remembers keys it has processed sees each notification exactly once.

Concurrency: a claim is a lease (claimed_by, lease_until). On PostgreSQL, N workers share the
table: a claim locks its rows (FOR UPDATE SKIP LOCKED), so two workers never claim the same row,
and a row whose lease expired (its worker was killed) is recovered by another worker and sent
again with the same Idempotency-Key. An outcome reported by a worker that lost its claim is
ignored, except a success. See docs/decisions/cloud-work-once.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeVar

from cloud.notify.format import Notification, NotificationEvent
from cloud.storage.sql import SqlConn, SqlDatabase, first
from common.backoff import ceiling_s

T = TypeVar("T")


class NotificationStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


class OutboxEvent(StrEnum):
    CLAIM = "claim"
    SUCCEED = "succeed"
    RETRY = "retry"
    GIVE_UP = "give_up"
    RECOVER = "recover"


S, E = NotificationStatus, OutboxEvent
TRANSITIONS: Mapping[tuple[NotificationStatus, OutboxEvent], NotificationStatus] = MappingProxyType(
    {
        (S.PENDING, E.CLAIM): S.SENDING,
        (S.RETRYING, E.CLAIM): S.SENDING,
        (S.SENDING, E.SUCCEED): S.SENT,
        (S.SENDING, E.RETRY): S.RETRYING,
        (S.SENDING, E.GIVE_UP): S.FAILED,
        (S.SENDING, E.RECOVER): S.RETRYING,
    }
)
DUE_STATUSES = (S.PENDING, S.RETRYING)
# An attempt's result as the delivery history says it.
_RESULTS: Mapping[OutboxEvent, str] = MappingProxyType(
    {E.SUCCEED: "sent", E.RETRY: "failed, will retry", E.GIVE_UP: "failed, gave up"}
)
TERMINAL = frozenset({S.SENT, S.FAILED})


class OutboxError(Exception):
    """Root of the outbox's own errors."""


class InvalidOutboxTransition(OutboxError):
    def __init__(self, status: NotificationStatus, event: OutboxEvent) -> None:
        super().__init__(f"cannot {event.value} a notification that is {status.value}")
        self.status = status
        self.event = event


class UnknownNotification(OutboxError):
    pass


def next_status(status: NotificationStatus, event: OutboxEvent) -> NotificationStatus:
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise InvalidOutboxTransition(status, event) from None


def after_failure(*, attempts: int, max_attempts: int, retryable: bool) -> OutboxEvent:
    """RETRY while a retryable failure has attempts left, else GIVE_UP."""
    return E.RETRY if retryable and attempts < max_attempts else E.GIVE_UP


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreading retries uniformly over [0, ceiling] keeps a recovered receiver from
    being hit by every queued notification at the same instant."""

    max_attempts: int = 8
    base_s: float = 2.0
    cap_s: float = 900.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError("need max_attempts >= 1 and 0 < base_s <= cap_s")


def backoff_ceiling_s(attempts: int, policy: RetryPolicy) -> float:
    """min(cap, base * 2^(attempts-1)): the upper bound of the wait after `attempts` tries."""
    return ceiling_s(max(attempts, 1), policy.base_s, policy.cap_s)


def backoff_delay_s(
    attempts: int,
    policy: RetryPolicy,
    rand: Callable[[], float],
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait after the `attempts`-th failed try: uniform in [0, ceiling].

    `rand` returns a float in [0, 1) (inject `random.Random(seed).random` in tests). A receiver's
    Retry-After is honoured as a lower bound, but never beyond the cap.
    """
    r = min(max(rand(), 0.0), 1.0)
    delay = r * backoff_ceiling_s(attempts, policy)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.cap_s))
    return delay


def notification_id(org_id: str, alert_id: str, channel_id: str, event: str) -> str:
    """Deterministic, so the idempotency key survives re-enqueueing the same event."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join((org_id, alert_id, channel_id, event))))


_NAMESPACE = uuid.UUID("5b0f7f0e-6c1e-4f0b-9a53-4f7a3c2b9d11")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id VARCHAR PRIMARY KEY,
    org_id VARCHAR NOT NULL,
    alert_id VARCHAR NOT NULL,
    channel_id VARCHAR NOT NULL,
    event VARCHAR NOT NULL,
    payload JSON NOT NULL,
    status VARCHAR NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error VARCHAR,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT,
    UNIQUE (alert_id, channel_id, event)
)
"""
# The DuckDB table as first created (cloud.notify.schema adds the lease columns, claimed_by and
# lease_until, in a later migration). No index on (status, next_attempt_at) on purpose: DuckDB
# rewrites an update of an indexed column as delete+insert, which trips its over-eager unique
# checks within one transaction; and the outbox is small (terminal rows could be pruned), so the
# scan is cheap. PostgreSQL has the index (a partial one, on the due statuses).

_COLUMNS = (
    "id, org_id, alert_id, channel_id, event, payload, status, attempts, next_attempt_at, "
    "last_error, created_at, updated_at, sent_at"
)
_SHOWN = f"{_COLUMNS}, claimed_by, lease_until"
MAX_ERROR = 1000
DEFAULT_LEASE_MS = 300_000  # longer than any send may take (the worker passes its own)
INTERRUPTED = "interrupted mid-send (the worker stopped, or its lease expired)"

log = logging.getLogger("iotsphere.cloud.notify")


def default_claimant() -> str:
    """Who claims: host, process and a random part (two stores in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutboxStore:
    """The outbox table on the cloud's database, either engine (cloud.storage.sql.SqlDatabase).

    Each call is one short statement or transaction through `db.run_sync`; call them from async
    code via asyncio.to_thread. Rows are claimed with a lease: `claimed_by` (this store's
    `claimant`) and `lease_until`. On PostgreSQL several workers share the table: claims skip
    rows another transaction holds (FOR UPDATE SKIP LOCKED), and only expired leases are
    recovered. On DuckDB one process owns the file, so every `sending` row found at start is
    from a process that died (docs/decisions/cloud-work-once.md).
    """

    def __init__(self, db: SqlDatabase, *, claimant: str | None = None) -> None:
        self._db = db
        self.claimant = claimant or default_claimant()
        # Several processes may claim from this table: lock what is claimed, honour leases.
        self.shared = db.dialect == "postgresql"
        self._for_update = " FOR UPDATE" if self.shared else ""

    def _tx(self, fn: Callable[[SqlConn], T]) -> T:
        return self._db.run_sync(self._db.transaction(fn))

    def enqueue(
        self,
        *,
        org_id: str,
        alert_id: str,
        channel_id: str,
        event: NotificationEvent,
        payload: Mapping[str, Any],
        now_ms: int,
    ) -> tuple[str, bool]:
        """Queue one notification (status pending, due now). Returns (id, created): enqueueing
        the same (alert, channel, event) again is a no-op, so re-raising never double-sends."""
        return self._db.run_sync(
            lambda c: enqueue_on(
                c,
                org_id=org_id,
                alert_id=alert_id,
                channel_id=channel_id,
                event=event,
                payload=payload,
                now_ms=now_ms,
            )
        )

    def enqueue_alert(
        self,
        *,
        org_id: str,
        alert: Mapping[str, Any],
        channel_ids: Sequence[str],
        event: NotificationEvent,
        now_ms: int,
    ) -> list[str]:
        """One notification per channel for an alert event; returns the ids (new or existing)."""
        return self._tx(
            lambda c: enqueue_alert_on(
                c,
                org_id=org_id,
                alert=alert,
                channel_ids=channel_ids,
                event=event,
                now_ms=now_ms,
            )
        )

    def claim_due(
        self, now_ms: int, limit: int, lease_ms: int = DEFAULT_LEASE_MS
    ) -> list[Notification]:
        """Move up to `limit` due rows (pending/retrying, next_attempt_at <= now) to sending,
        counting the attempt, leased to this store until now + lease_ms; oldest-due first.

        On PostgreSQL the rows are locked as they are read, and rows another claimer's
        transaction holds are skipped: two claimers never get the same row."""
        skip = " FOR UPDATE SKIP LOCKED" if self.shared else ""

        def go(c: SqlConn) -> list[Notification]:
            rows = c.execute(
                "SELECT id, org_id, alert_id, channel_id, event, payload, status, attempts, "
                "created_at FROM notifications WHERE status IN (?, ?) AND next_attempt_at <= ? "
                f"ORDER BY next_attempt_at, created_at, id LIMIT ?{skip}",
                [DUE_STATUSES[0].value, DUE_STATUSES[1].value, now_ms, limit],
            ).fetchall()
            if not rows:
                return []
            new = {next_status(NotificationStatus(r[6]), E.CLAIM) for r in rows}
            assert new == {S.SENDING}
            c.execute(
                "UPDATE notifications SET status = ?, attempts = attempts + 1, updated_at = ?,"
                " claimed_by = ?, lease_until = ?"
                f" WHERE id IN ({', '.join('?' for _ in rows)})",
                [S.SENDING.value, now_ms, self.claimant, now_ms + lease_ms, *(r[0] for r in rows)],
            )
            return [
                Notification(
                    id=nid,
                    org_id=org,
                    alert_id=alert_id,
                    channel_id=cid,
                    event=NotificationEvent(event),
                    alert=MappingProxyType(json.loads(payload)),
                    attempt=attempts + 1,
                    created_at=created,
                )
                for nid, org, alert_id, cid, event, payload, _s, attempts, created in rows
            ]

        return self._tx(go)

    def mark_sent(self, nid: str, now_ms: int) -> bool:
        return self._move(nid, E.SUCCEED, now_ms, sent_at=now_ms)

    def mark_retry(self, nid: str, now_ms: int, next_attempt_at: int, error: str) -> bool:
        return self._move(nid, E.RETRY, now_ms, next_attempt_at=next_attempt_at, error=error)

    def mark_failed(self, nid: str, now_ms: int, error: str) -> bool:
        return self._move(nid, E.GIVE_UP, now_ms, error=error)

    def _move(
        self,
        nid: str,
        event: OutboxEvent,
        now_ms: int,
        *,
        next_attempt_at: int | None = None,
        error: str | None = None,
        sent_at: int | None = None,
    ) -> bool:
        """Record an attempt's outcome; False when it was ignored because this store no longer
        holds the claim (its lease expired and the row was recovered or claimed again)."""

        def go(c: SqlConn) -> bool:
            row = first(
                c.execute(
                    "SELECT status, claimed_by, attempts, alert_id, channel_id, event"
                    f" FROM notifications WHERE id = ?{self._for_update}",
                    [nid],
                ).fetchall()
            )
            if row is None:
                raise UnknownNotification(nid)
            status = NotificationStatus(row[0])
            if row[1] == self.claimant:
                new = next_status(status, event)
            elif event is E.SUCCEED and status not in TERMINAL:
                # Delivered is delivered: nobody needs to send it again, and the claimer now
                # sending it (if any) finds it no longer its own.
                new = S.SENT
            else:
                log.info("notification %s: %s ignored, claim lost (%s)", nid, event, status)
                return False
            c.execute(
                "UPDATE notifications SET status = ?, updated_at = ?, "
                "next_attempt_at = coalesce(?, next_attempt_at), "
                "last_error = coalesce(?, last_error), sent_at = coalesce(?, sent_at), "
                "claimed_by = ?, lease_until = NULL WHERE id = ?",
                [new.value, now_ms, next_attempt_at, _clip(error), sent_at, self.claimant, nid],
            )
            c.execute(  # the attempt's own line in the delivery history
                "INSERT INTO notification_attempts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [nid, row[3], row[4], row[5], row[2], now_ms, _RESULTS[event], _clip(error)],
            )
            return True

        return self._tx(go)

    def recover_interrupted(self, now_ms: int, max_attempts: int) -> int:
        """Rows left in `sending` by a worker that stopped go back to `retrying`, due now (or
        to `failed` when they already used every attempt). Returns how many were recovered.

        DuckDB (one process owns the file; called at start): every `sending` row. PostgreSQL
        (other workers may be sending right now): only rows whose lease has expired."""
        where = "status = ?"
        if self.shared:
            where += " AND (lease_until IS NULL OR lease_until <= ?) FOR UPDATE SKIP LOCKED"

        def go(c: SqlConn) -> int:
            params: list[object] = [S.SENDING.value, now_ms] if self.shared else [S.SENDING.value]
            rows = c.execute(
                f"SELECT id, attempts FROM notifications WHERE {where}", params
            ).fetchall()
            for nid, attempts in rows:
                event = E.RECOVER if attempts < max_attempts else E.GIVE_UP
                new = next_status(S.SENDING, event)
                c.execute(
                    "UPDATE notifications SET status = ?, next_attempt_at = ?, updated_at = ?, "
                    "last_error = ?, claimed_by = NULL, lease_until = NULL WHERE id = ?",
                    [new.value, now_ms, now_ms, INTERRUPTED, nid],
                )
            return len(rows)

        return self._tx(go)

    def status_for_alert(self, alert_id: str) -> list[dict[str, Any]]:
        """The alert's `notifications` member: one entry per channel and event."""
        return self.status_for_alerts([alert_id]).get(alert_id, [])

    def status_for_alerts(self, alert_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Batch form for alert lists (one query, not one per alert)."""
        return self._db.run_sync(lambda c: status_for_alerts_on(c, alert_ids))

    def get(self, nid: str) -> dict[str, Any] | None:
        """One row as a dict (diagnostics and tests)."""
        row = first(
            self._db.run_sync(
                lambda c: c.execute(
                    f"SELECT {_SHOWN} FROM notifications WHERE id = ?", [nid]
                ).fetchall()
            )
        )
        if row is None:
            return None
        doc = dict(zip(_SHOWN.split(", "), row, strict=True))
        doc["payload"] = json.loads(doc["payload"])
        return doc

    def counts(self) -> dict[str, int]:
        """Rows per status, every status present (a /metrics gauge of the backlog)."""
        rows = self._db.run_sync(
            lambda c: c.execute(
                "SELECT status, count(*) FROM notifications GROUP BY status"
            ).fetchall()
        )
        out = {s.value: 0 for s in NotificationStatus}
        out.update({status: int(n) for status, n in rows})
        return out


# -- connection-level forms, for callers that run them inside their own transaction ----------
# (the monitoring loop creates an alert and enqueues its notifications in ONE transaction, so a
# crash can neither lose the notification nor send one for an alert that was rolled back).


def enqueue_on(
    conn: SqlConn,
    *,
    org_id: str,
    alert_id: str,
    channel_id: str,
    event: NotificationEvent,
    payload: Mapping[str, Any],
    now_ms: int,
) -> tuple[str, bool]:
    """OutboxStore.enqueue on a connection the caller holds (in its transaction)."""
    nid = notification_id(org_id, alert_id, channel_id, event.value)
    body = json.dumps(dict(payload), separators=(",", ":"), default=str)
    rows = conn.execute(
        f"INSERT INTO notifications ({_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, NULL, ?, ?, NULL) ON CONFLICT DO NOTHING RETURNING id",
        [
            nid,
            org_id,
            alert_id,
            channel_id,
            event.value,
            body,
            S.PENDING.value,
            now_ms,
            now_ms,
            now_ms,
        ],
    ).fetchall()
    return nid, bool(rows)


def enqueue_alert_on(
    conn: SqlConn,
    *,
    org_id: str,
    alert: Mapping[str, Any],
    channel_ids: Sequence[str],
    event: NotificationEvent,
    now_ms: int,
) -> list[str]:
    """OutboxStore.enqueue_alert on a connection the caller holds (and locks)."""
    return [
        enqueue_on(
            conn,
            org_id=org_id,
            alert_id=str(alert["id"]),
            channel_id=cid,
            event=event,
            payload=alert,
            now_ms=now_ms,
        )[0]
        for cid in dict.fromkeys(channel_ids)
    ]


def attempts_for_alert_on(conn: SqlConn, alert_id: str) -> list[dict[str, Any]]:
    """Every delivery attempt of the alert's notifications, oldest first, on a connection the
    caller holds."""
    rows = conn.execute(
        "SELECT channel_id, event, attempt, at_ms, result, error FROM notification_attempts"
        " WHERE alert_id = ? ORDER BY at_ms, channel_id, attempt",
        [alert_id],
    ).fetchall()
    keys = ("channel_id", "event", "attempt", "at", "result", "error")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def status_for_alerts_on(
    conn: SqlConn, alert_ids: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """OutboxStore.status_for_alerts on a connection the caller holds (and locks)."""
    out: dict[str, list[dict[str, Any]]] = {a: [] for a in alert_ids}
    if not alert_ids:
        return out
    marks = ", ".join("?" for _ in alert_ids)
    rows = conn.execute(
        "SELECT alert_id, channel_id, event, status, attempts, last_error, sent_at, "
        f"next_attempt_at FROM notifications WHERE alert_id IN ({marks}) "
        "ORDER BY alert_id, created_at, channel_id, event",
        list(alert_ids),
    ).fetchall()
    for alert_id, cid, event, status, attempts, error, sent_at, next_at in rows:
        shown = _shown_status(status, attempts)
        entry: dict[str, Any] = {
            "channel_id": cid,
            "status": shown,
            "attempts": attempts,
            "event": event,
            "last_error": error,
            "sent_at": sent_at,
        }
        if shown == S.RETRYING.value:
            entry["next_attempt_at"] = next_at
        out[alert_id].append(entry)
    return out


def _shown_status(status: str, attempts: int) -> str:
    """`sending` is internal and brief; users see the CONTRACT's pending/retrying for it."""
    if status != S.SENDING.value:
        return status
    return S.PENDING.value if attempts <= 1 else S.RETRYING.value


def _clip(error: str | None) -> str | None:
    return error if error is None or len(error) <= MAX_ERROR else error[:MAX_ERROR] + "..."
