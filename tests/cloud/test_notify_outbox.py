"""The outbox table on each engine: idempotent enqueue, claiming, recovery, status."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloud.app.services import open_store
from cloud.app.settings import CloudSettings
from cloud.notify.format import NotificationEvent
from cloud.notify.outbox import InvalidOutboxTransition, OutboxStore, UnknownNotification
from cloud.notify.store import NotifyStore
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import both_engines

pytestmark = both_engines

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


@pytest.fixture
def outbox(store: SqlCloudStore) -> OutboxStore:
    return NotifyStore(store.db).outbox


@pytest.fixture
def reopen(settings: CloudSettings) -> Iterator[list[SqlCloudStore]]:
    """Opens the database again, as a restarted process would; closes what it opened."""
    opened: list[SqlCloudStore] = []
    yield opened
    for s in opened:
        s.close()


def open_outbox(settings: CloudSettings, opened: list[SqlCloudStore]) -> OutboxStore:
    opened.append(open_store(settings))
    return NotifyStore(opened[-1].db).outbox


def enqueue(outbox: OutboxStore, alert_id: str) -> str:
    """A raised alert's notification to channel c1, queued at 1 ms."""
    return outbox.enqueue(
        org_id="o", alert_id=alert_id, channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
    )[0]


def test_enqueue_is_idempotent_per_alert_channel_event(outbox: OutboxStore) -> None:
    nid, created = outbox.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=100
    )
    again, created_again = outbox.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=200
    )
    assert created and not created_again and nid == again
    ids = outbox.enqueue_alert(
        org_id="o", alert=ALERT, channel_ids=["c1", "c2", "c2"], event=RAISED, now_ms=300
    )
    assert ids[0] == nid and len(ids) == 2
    resolved, created = outbox.enqueue(
        org_id="o",
        alert_id="a-1",
        channel_id="c1",
        event=NotificationEvent.RESOLVED,
        payload=ALERT,
        now_ms=400,
    )
    assert created and resolved != nid
    assert outbox.counts()["pending"] == 3
    row = outbox.get(nid)
    assert row is not None and row["payload"] == ALERT and row["created_at"] == 100


def test_claim_only_due_rows_oldest_first_and_counts_attempts(outbox: OutboxStore) -> None:
    first, _ = outbox.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=100
    )
    second, _ = outbox.enqueue(
        org_id="o",
        alert_id="a-2",
        channel_id="c1",
        event=RAISED,
        payload={**ALERT, "id": "a-2"},
        now_ms=200,
    )
    assert outbox.claim_due(now_ms=50, limit=10) == []
    claimed = outbox.claim_due(now_ms=1000, limit=1)
    assert [n.id for n in claimed] == [first]
    assert claimed[0].attempt == 1 and claimed[0].alert["source"] == "model:churn-v3"
    assert [n.id for n in outbox.claim_due(now_ms=1000, limit=10)] == [second]
    assert outbox.claim_due(now_ms=1000, limit=10) == []  # claimed rows are not handed out twice

    outbox.mark_retry(first, now_ms=1000, next_attempt_at=5000, error="HTTP 500")
    assert outbox.claim_due(now_ms=4999, limit=10) == []
    again = outbox.claim_due(now_ms=5000, limit=10)
    assert [(n.id, n.attempt) for n in again] == [(first, 2)]
    outbox.mark_sent(first, now_ms=5001)
    row = outbox.get(first)
    assert row is not None
    assert (row["status"], row["attempts"], row["sent_at"], row["last_error"]) == (
        "sent",
        2,
        5001,
        "HTTP 500",
    )
    with pytest.raises(InvalidOutboxTransition):
        outbox.mark_retry(first, now_ms=6000, next_attempt_at=7000, error="late")
    with pytest.raises(UnknownNotification):
        outbox.mark_sent("nope", now_ms=1)


def test_status_for_alert_as_users_see_it(outbox: OutboxStore) -> None:
    a, _ = outbox.enqueue(
        org_id="o", alert_id="a-1", channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
    )
    b, _ = outbox.enqueue(
        org_id="o", alert_id="a-1", channel_id="c2", event=RAISED, payload=ALERT, now_ms=2
    )
    assert [
        (s["channel_id"], s["status"], s["attempts"]) for s in outbox.status_for_alert("a-1")
    ] == [("c1", "pending", 0), ("c2", "pending", 0)]
    outbox.claim_due(now_ms=10, limit=10)
    outbox.mark_retry(a, now_ms=10, next_attempt_at=20, error="down")
    outbox.mark_failed(b, now_ms=10, error="HTTP 404")
    status = outbox.status_for_alert("a-1")
    assert [(s["channel_id"], s["status"], s["attempts"], s["last_error"]) for s in status] == [
        ("c1", "retrying", 1, "down"),
        ("c2", "failed", 1, "HTTP 404"),
    ]
    assert status[0]["next_attempt_at"] == 20
    assert outbox.status_for_alert("unknown") == []
    assert outbox.status_for_alerts(["a-1", "x"])["x"] == []


def test_recover_after_crash_mid_send(settings: CloudSettings, reopen: list[SqlCloudStore]) -> None:
    first = open_outbox(settings, reopen)
    nid = enqueue(first, "a-1")
    spent = enqueue(first, "a-2")
    claimed = first.claim_due(now_ms=2, limit=10, lease_ms=1)
    assert len(claimed) == 2  # ...and the process dies here
    reopen.pop().close()

    outbox = open_outbox(settings, reopen)
    assert outbox.claim_due(now_ms=3, limit=10) == []  # still "sending": not claimable
    # each row used 1 of 2 attempts: back in line, due now
    assert outbox.recover_interrupted(now_ms=3, max_attempts=2) == 2
    row = outbox.get(nid)
    assert row is not None and row["status"] == "retrying" and row["next_attempt_at"] == 3
    assert row["claimed_by"] is None and row["lease_until"] is None
    assert {n.id for n in outbox.claim_due(now_ms=3, limit=10, lease_ms=1)} == {nid, spent}
    # crashed again mid-send: both attempts used up, so they fail instead of looping
    assert outbox.recover_interrupted(now_ms=4, max_attempts=2) == 2
    assert {outbox.get(i)["status"] for i in (nid, spent)} == {"failed"}  # type: ignore[index]


def test_concurrent_claimers_never_share_a_notification(
    engine: str, settings: CloudSettings, reopen: list[SqlCloudStore]
) -> None:
    """Two workers' outboxes claim from one table at once, in small batches, until nothing is
    due: each row goes to one. PostgreSQL: two pools, as two processes have; DuckDB: one
    process, two stores on its one database."""
    if engine == "postgresql":
        workers = [open_outbox(settings, reopen) for _ in range(2)]
    else:
        workers = [open_outbox(settings, reopen)]
        workers.append(NotifyStore(reopen[0].db).outbox)
    for i in range(120):
        workers[0].enqueue(
            org_id="o", alert_id=f"a-{i}", channel_id="c1", event=RAISED, payload=ALERT, now_ms=1
        )
    start = threading.Barrier(2)

    def claim_all(outbox: OutboxStore) -> list[str]:
        start.wait()
        got: list[str] = []
        while batch := outbox.claim_due(now_ms=10, limit=3):
            got += [n.id for n in batch]
        return got

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(claim_all, workers)
    assert len(a) + len(b) == 120 and len(set(a) | set(b)) == 120
    assert not set(a) & set(b)
    assert workers[1].counts()["sending"] == 120


# -- PostgreSQL: several workers share the outbox ---------------------------------------------


@pytest.fixture
def two(settings: CloudSettings, reopen: list[SqlCloudStore]) -> tuple[OutboxStore, OutboxStore]:
    """Two workers' outboxes on one database, each with its own connection pool."""
    return open_outbox(settings, reopen), open_outbox(settings, reopen)


@pytest.mark.engines("postgresql")
def test_only_an_expired_lease_is_recovered(two: tuple[OutboxStore, OutboxStore]) -> None:
    live, other = two
    nid = enqueue(live, "a-1")
    [n] = live.claim_due(now_ms=10, limit=10, lease_ms=1000)
    # another worker starting (or sweeping) while the send is in flight leaves it alone
    assert other.recover_interrupted(now_ms=500, max_attempts=5) == 0
    assert other.claim_due(now_ms=500, limit=10) == []
    row = other.get(nid)
    assert row is not None and (row["status"], row["claimed_by"]) == ("sending", live.claimant)
    # the worker died: once its lease is over, the other one takes the row, same id (the
    # Idempotency-Key), next attempt
    assert other.recover_interrupted(now_ms=1010, max_attempts=5) == 1
    [again] = other.claim_due(now_ms=1010, limit=10)
    assert (again.id, again.attempt) == (n.id, 2)
    row = other.get(nid)
    assert row is not None and row["claimed_by"] == other.claimant


@pytest.mark.engines("postgresql")
def test_a_worker_that_lost_its_claim_cannot_undo_the_new_claim(
    two: tuple[OutboxStore, OutboxStore],
) -> None:
    slow, other = two
    a = enqueue(slow, "a-1")
    b = enqueue(slow, "a-2")
    slow.claim_due(now_ms=10, limit=10, lease_ms=100)
    assert other.recover_interrupted(now_ms=200, max_attempts=5) == 2
    assert len(other.claim_due(now_ms=200, limit=10)) == 2
    # the slow worker's failure report is stale: the row is the other worker's now
    assert slow.mark_retry(a, now_ms=201, next_attempt_at=999, error="timeout") is False
    assert slow.mark_failed(b, now_ms=201, error="HTTP 404") is False
    # ...but its success is news: the receiver has it, nobody must send it again
    assert slow.mark_sent(b, now_ms=202) is True
    assert other.mark_sent(b, now_ms=203) is False
    assert other.mark_sent(a, now_ms=204) is True
    assert [(r["status"], r["sent_at"]) for r in map(other.get, (a, b)) if r] == [
        ("sent", 204),
        ("sent", 202),
    ]
