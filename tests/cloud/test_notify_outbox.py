"""The outbox table on a real DuckDB file: idempotent enqueue, claiming, recovery, status."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from cloud.notify.format import NotificationEvent
from cloud.notify.outbox import InvalidOutboxTransition, OutboxStore, UnknownNotification

RAISED = NotificationEvent.RAISED
ALERT = {
    "id": "a-1",
    "rule_id": "r",
    "state": "active",
    "severity": "warning",
    "metric": "accuracy",
    "value": 0.7,
    "source": "model:churn-v3",
    "started_at": 1,
}


def open_store(path: Path) -> tuple[duckdb.DuckDBPyConnection, OutboxStore]:
    conn = duckdb.connect(str(path))
    store = OutboxStore(conn, threading.Lock())
    store.ensure_schema()
    return conn, store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutboxStore]:
    conn, store = open_store(tmp_path / "cloud.duckdb")
    yield store
    conn.close()


def test_enqueue_is_idempotent_per_alert_channel_event(store: OutboxStore) -> None:
    nid, created = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=100
    )
    again, created_again = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=200
    )
    assert created and not created_again and nid == again
    ids = store.enqueue_alert(
        org_id="o", alert=ALERT, channel_ids=["c1", "c2", "c2"], event=RAISED, now_ms=300
    )
    assert ids[0] == nid and len(ids) == 2
    resolved, created = store.enqueue(
        org_id="o",
        alert_id="a-1",
        channel_id="c1",
        event=NotificationEvent.RESOLVED,
        payload=ALERT,
        now_ms=400,
    )
    assert created and resolved != nid
    assert store.counts()["pending"] == 3
    row = store.get(nid)
    assert row is not None and row["payload"] == ALERT and row["created_at"] == 100


def test_claim_only_due_rows_oldest_first_and_counts_attempts(store: OutboxStore) -> None:
    first, _ = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=100
    )
    second, _ = store.enqueue(
        org_id="o",
        alert_id="a-2",
        channel_id="c1",
        event=RAISED,
        payload={**ALERT, "id": "a-2"},
        now_ms=200,
    )
    assert store.claim_due(now_ms=50, limit=10) == []
    claimed = store.claim_due(now_ms=1000, limit=1)
    assert [n.id for n in claimed] == [first]
    assert claimed[0].attempt == 1 and claimed[0].alert["source"] == "model:churn-v3"
    assert [n.id for n in store.claim_due(now_ms=1000, limit=10)] == [second]
    assert store.claim_due(now_ms=1000, limit=10) == []  # claimed rows are not handed out twice

    store.mark_retry(first, now_ms=1000, next_attempt_at=5000, error="HTTP 500")
    assert store.claim_due(now_ms=4999, limit=10) == []
    again = store.claim_due(now_ms=5000, limit=10)
    assert [(n.id, n.attempt) for n in again] == [(first, 2)]
    store.mark_sent(first, now_ms=5001)
    row = store.get(first)
    assert row is not None
    assert (row["status"], row["attempts"], row["sent_at"], row["last_error"]) == (
        "sent",
        2,
        5001,
        "HTTP 500",
    )
    with pytest.raises(InvalidOutboxTransition):
        store.mark_retry(first, now_ms=6000, next_attempt_at=7000, error="late")
    with pytest.raises(UnknownNotification):
        store.mark_sent("nope", now_ms=1)


def test_status_for_alert_as_users_see_it(store: OutboxStore) -> None:
    a, _ = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
    )
    b, _ = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c2", event=RAISED, payload=ALERT, now_ms=2
    )
    assert [
        (s["channel_id"], s["status"], s["attempts"]) for s in store.status_for_alert("a-1")
    ] == [("c1", "pending", 0), ("c2", "pending", 0)]
    store.claim_due(now_ms=10, limit=10)
    store.mark_retry(a, now_ms=10, next_attempt_at=20, error="down")
    store.mark_failed(b, now_ms=10, error="HTTP 404")
    status = store.status_for_alert("a-1")
    assert [(s["channel_id"], s["status"], s["attempts"], s["last_error"]) for s in status] == [
        ("c1", "retrying", 1, "down"),
        ("c2", "failed", 1, "HTTP 404"),
    ]
    assert status[0]["next_attempt_at"] == 20
    assert store.status_for_alert("unknown") == []
    assert store.status_for_alerts(["a-1", "x"])["x"] == []


def test_recover_after_crash_mid_send(tmp_path: Path) -> None:
    path = tmp_path / "cloud.duckdb"
    conn, store = open_store(path)
    nid, _ = store.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
    )
    spent, _ = store.enqueue(
        org_id="o", alert_id="a-2", channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
    )
    assert len(store.claim_due(now_ms=2, limit=10)) == 2  # ...and the process dies here
    conn.close()

    conn, store = open_store(path)
    try:
        assert store.claim_due(now_ms=3, limit=10) == []  # still "sending": not claimable
        # each row used 1 of 2 attempts: back in line, due now
        assert store.recover_interrupted(now_ms=3, max_attempts=2) == 2
        row = store.get(nid)
        assert row is not None and row["status"] == "retrying" and row["next_attempt_at"] == 3
        assert {n.id for n in store.claim_due(now_ms=3, limit=10)} == {nid, spent}
        # crashed again mid-send: both attempts used up, so they fail instead of looping
        assert store.recover_interrupted(now_ms=4, max_attempts=2) == 2
        assert {store.get(i)["status"] for i in (nid, spent)} == {"failed"}  # type: ignore[index]
    finally:
        conn.close()
