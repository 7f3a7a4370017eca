"""The store actor through a storage outage: refuse, hold, probe, recover; never crash.

A real GatewayStore whose commits fail the way a full disk makes them fail (StoreUnavailable)
while `full` is set, under a supervisor that allows no restart: a crash would end the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.actors import ActorRef, ChildSpec, OverflowPolicy, Supervisor
from common.clock import SystemClock
from common.gateway_auth import RequestSigner, generate_private_key, public_key_bytes
from common.model import Reading
from common.problem import Problem
from edge.alerts.rules_actor import STORAGE_RULE, RulesActor, RulesStats
from edge.ingest.coap.ingress import _unavailable
from edge.ingest.intake import INSUFFICIENT_STORAGE, IngestUnavailable
from edge.status.view import StatusData, build_view
from edge.storage.actor import (
    Ingest,
    RecordAuth,
    SaveAlerts,
    StoreActor,
    StoreMsg,
)
from edge.storage.client import StoreClient, call
from edge.storage.health import StorageFailure, StorageHealth
from edge.storage.stats import StoreStats
from edge.storage.store import (
    AlertRow,
    AuthFailure,
    Batch,
    CommitResult,
    EpochStart,
    GatewayStore,
    StoreUnavailable,
)
from edge.sync.actor import SyncActor, SyncSettings, SyncStats
from edge.sync.cloud_client import CloudClient
from tests.edge.test_gateway_sync import StubCloud, stub  # noqa: F401 - stub is a fixture
from tests.support.waiting import until

FULL = StorageFailure(
    "No space left on device",
    'Failed to commit: Could not write file "x.wal": No space left on device',
    disk_full=True,
    invalidated=False,
)


class FlakyStore(GatewayStore):
    """Commits fail like a full disk while `full`; the free space says so too."""

    full = False
    commits_tried = 0

    def commit(self, batch: Batch) -> CommitResult:
        self.commits_tried += 1
        if self.full:
            raise StoreUnavailable(FULL)
        return super().commit(batch)

    def headroom(self) -> tuple[int, int]:
        return (0, 0) if self.full else (1 << 30, 0)


@dataclass
class Confirms:
    results: list[BaseException | None]

    def __call__(self, error: BaseException | None) -> None:
        self.results.append(error)


def readings(first_ts: int, n: int) -> list[Reading]:
    return [
        Reading(device_id="d1", metric="temperature", ts=first_ts + i, value=20.0, received_at=1)
        for i in range(n)
    ]


@dataclass
class Running:
    store: FlakyStore
    live: StoreStats
    ref: ActorRef[StoreMsg]
    root: Supervisor


@pytest.fixture
async def running_store(tmp_path: Path) -> AsyncIterator[Running]:
    store = FlakyStore(tmp_path / "gateway.duckdb")
    live = StoreStats()
    root = Supervisor("test", max_restarts=0)  # any crash would escalate
    ref = await root.start_child(
        ChildSpec(
            "store",
            lambda: StoreActor(
                store, max_readings=10, max_delay_ms=5, stats=live, probe_every_s=0.02
            ),
            capacity=100,
        )
    )
    yield Running(store, live, ref, root)
    await root.stop()
    store.close()


async def test_a_full_disk_refuses_holds_probes_and_recovers_without_a_crash(
    running_store: Running,
) -> None:
    store, live, ref = running_store.store, running_store.live, running_store.ref
    alerts_open = RulesStats()
    rules = await running_store.root.start_child(
        ChildSpec(
            "rules",
            lambda: RulesActor(StoreClient(ref), SystemClock(), lambda _d: None, 0.02, alerts_open),
        )
    )
    first = Confirms([])
    await ref.send(Ingest(readings(1000, 5), confirm=first))
    await ref.send(Ingest(readings(2000, 5), confirm=first))
    await until(lambda: len(first.results) == 2)
    assert first.results == [None, None] and await call(ref, lambda s: s.count_readings()) == 10

    store.full = True
    failed = Confirms([])
    await ref.send(Ingest(readings(3000, 5), confirm=failed))
    await until(lambda: failed.results)
    assert isinstance(failed.results[0], StoreUnavailable)  # nothing of it acknowledged
    health = live.storage
    assert not health.available and health.failure == FULL
    assert (health.failed_commits, health.refused_readings) == (1, 5)
    tried = store.commits_tried

    # While unavailable: ingest is answered at once, nothing is tried; audit rows and alerts
    # wait for the probe; the probe writes nothing without free space.
    refused = Confirms([])
    await ref.send(Ingest(readings(4000, 5), confirm=refused))
    await until(lambda: refused.results)
    assert isinstance(refused.results[0], StoreUnavailable)
    audit = AuthFailure(5, "auth_failure", "http", "10.0.0.9", None, None, "bad token")
    await ref.send(RecordAuth(audit))
    await until(lambda: alerts_open.active_alerts == 1)  # the rules actor raised the storage alert
    await until(lambda: live.storage.last_probe_at is not None)
    assert store.commits_tried == tried and live.storage.refused_readings == 10
    assert ref.stats.failures == 0

    store.full = False
    await until(lambda: live.storage.available)
    assert live.storage.recovered_at is not None
    rows = await call(ref, lambda s: s.auth_failures())
    assert [r["reason"] for r in rows] == ["bad token"]
    await until(lambda: alerts_open.active_alerts == 0)
    await until(lambda: _resolved(ref))  # raised while unavailable, stored once it ended
    alerts = await call(ref, lambda s: s.alerts())
    storage_alerts = [a for a in alerts if a.rule_id == STORAGE_RULE]
    assert len(storage_alerts) == 1 and storage_alerts[0].severity == "critical"
    await until(lambda: _resolved(ref))

    again = Confirms([])
    await ref.send(Ingest(readings(3000, 5), confirm=again))  # the refused ones, resent
    await until(lambda: again.results)
    assert again.results == [None]
    assert await call(ref, lambda s: s.count_readings()) == 15
    assert ref.stats.failures == 0 and ref.stats.restarts == 0
    assert rules.stats.failures == 0


async def _resolved(ref: ActorRef[StoreMsg]) -> bool:
    alerts = await call(ref, lambda s: s.alerts())
    return [a.state for a in alerts if a.rule_id == STORAGE_RULE] == ["resolved"]


async def test_alerts_saved_during_an_outage_are_written_when_it_ends(
    running_store: Running,
) -> None:
    store, live, ref = running_store.store, running_store.live, running_store.ref
    store.full = True
    failed = Confirms([])
    await ref.send(Ingest(readings(1000, 5), confirm=failed))
    await until(lambda: failed.results)
    alert = AlertRow("a1", "r1", "d1", "temperature", "warning", "active", 30.0, 7)
    saved = Confirms([])
    await ref.send(SaveAlerts([alert], {"rules.cursor": "5"}, confirm=saved))
    await until(lambda: saved.results)
    assert isinstance(saved.results[0], StoreUnavailable)  # not durable now...
    store.full = False
    await until(lambda: live.storage.available)
    assert [a.id for a in await call(ref, lambda s: s.alerts())] == ["a1"]  # ...but kept
    assert await call(ref, lambda s: s.kv_get("rules.cursor")) == "5"


async def test_a_write_through_call_on_a_full_disk_reports_the_outage(
    running_store: Running,
) -> None:
    """A Call that writes (the sync cursor save) gets StoreUnavailable, and the outage
    begins: its caller is not the one to crash over it."""
    store, live, ref = running_store.store, running_store.live, running_store.ref
    store.full = True
    with pytest.raises(StoreUnavailable):
        await call(ref, lambda s: s.save_sync_cursor(1, 0, 5))
    assert not live.storage.available and ref.stats.failures == 0


def test_a_failed_batch_carries_the_gateways_own_records_only() -> None:
    audit = AuthFailure(5, "auth_failure", "http", None, None, None, "bad token")
    alert = AlertRow("a1", "r1", "d1", "t", "warning", "active", 30.0, 7)
    epoch = EpochStart("boot", 1, 0, 2)
    failed = Batch(
        readings=readings(0, 3),
        auth_failures=[audit],
        alerts=[alert],
        counters={"accepted_readings": 3},
        kv={"k": "old"},
        last_seen={"d1": 5},
        epoch=epoch,
    )
    held = failed.carried()
    assert not held.readings and not held.rejections
    held.absorb(Batch(counters={"accepted_readings": 2}, kv={"k": "new"}, last_seen={"d1": 4}))
    assert held.counters == {"accepted_readings": 5} and held.kv == {"k": "new"}
    assert held.last_seen == {"d1": 5} and held.epoch == epoch and held.auth_failures == [audit]


def test_a_full_disk_is_507_with_retry_after_over_http_and_503_with_max_age_over_coap() -> None:
    full = IngestUnavailable.from_store(StoreUnavailable(FULL))
    assert full.status == INSUFFICIENT_STORAGE
    problem: Problem = full.problem
    doc = problem.to_dict()
    assert doc["status"] == 507 and doc["type"].endswith("/insufficient-storage")
    assert doc["retry_after"] == full.retry_after_s > 1
    assert "x.wal" not in doc["detail"]  # the device learns why, not the gateway's paths
    coap = _unavailable(full)
    assert (coap.status, coap.max_age) == (503, full.retry_after_s)
    io_error = StorageFailure("Input/output error", "...", disk_full=False, invalidated=False)
    other = IngestUnavailable.from_store(StoreUnavailable(io_error))
    assert other.status == 503 and other.problem.slug == "storage-unavailable"


async def test_sync_goes_on_when_its_cursor_cannot_be_saved(
    running_store: Running,
    stub: StubCloud,  # noqa: F811 - the fixture imported above
) -> None:
    """The cloud acknowledges a batch while the disk is full: the cursor save fails, the sync
    actor keeps the cursor in memory (no crash: its restarts share the gateway's budget), and
    the next save after the outage writes a later one. Every reading reaches the cloud once."""
    store, live, ref, root = (
        running_store.store,
        running_store.live,
        running_store.ref,
        running_store.root,
    )
    key = generate_private_key()
    stub.keys["gw-1"] = public_key_bytes(key)
    signer = RequestSigner("gw-1", key, SystemClock())
    settings = SyncSettings(
        tick_s=0.02, batch_max_readings=7, batch_max_age_s=0.02,
        backoff_base_s=0.01, backoff_max_s=0.05,
    )  # fmt: skip
    stats = SyncStats("gw-1", stub.url)
    sync = await root.start_child(
        ChildSpec(
            "sync",
            lambda: SyncActor(
                StoreClient(ref),
                lambda: CloudClient(stub.url, signer, 5.0),
                SystemClock(),
                settings,
                stats,
            ),
            capacity=4,
            policy=OverflowPolicy.DROP_NEWEST,
        )
    )
    stub.fail_503 = 10**9  # the cloud is down while the readings are stored
    done = Confirms([])
    await ref.send(Ingest(readings(1000, 5), confirm=done))
    await until(lambda: done.results == [None] and stats.failures >= 1)
    store.full = True  # the disk fills; then the cloud comes back and acknowledges
    stub.fail_503 = 0
    await until(lambda: len(stub.readings) == 5)
    await until(lambda: not live.storage.available)  # the cursor save found the disk full
    assert stats.cursor_seq == 0  # status shows the durable cursor: the save failed
    assert sync.stats.failures == 0 and ref.stats.failures == 0

    store.full = False
    await until(lambda: live.storage.available)
    await ref.send(Ingest(readings(2000, 3), confirm=done))
    await until(lambda: len(stub.readings) == 8)
    await until(lambda: stats.cursor_seq == 8)
    assert (await call(ref, lambda s: s.sync_cursor()))[0] == 8
    assert sorted(stub.arrival) == list(range(1, 9))  # once each
    assert sync.stats.failures == 0 and sync.stats.restarts == 0


def test_the_status_page_says_why_the_gateway_cannot_store() -> None:
    health = StorageHealth().failed(FULL, 1_000, refused=500)
    data = StatusData(
        status={"storage": health.to_dict(121_000)},
        devices=[], latest={}, rejections=[], audit=[], alerts=[], locked=[],
    )  # fmt: skip
    view = build_view(data, 121_000)
    cards = dict(view.cards)
    assert cards["Storage"] == (
        "unavailable: No space left on device, for 2 min 0 s (1 failed commits)"
    )
    assert any("cannot store data (No space left on device)" in p for p in view.problems)
    recovered = StatusData(
        status={"storage": health.recovered(130_000).to_dict(131_000)},
        devices=[], latest={}, rejections=[], audit=[], alerts=[], locked=[],
    )  # fmt: skip
    view = build_view(recovered, 131_000)
    assert dict(view.cards)["Storage"] == "available" and not view.problems
