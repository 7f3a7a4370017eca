"""The store on a full disk: a failed commit rolls back cleanly, keeps its original error, keeps
every reading committed before, and the store writes again once there is space.

DuckDB on a real (small) tmpfs, filled with a file: the failures are the ones a full SD card
gives, not mocks. The classification and the health value are tested on their own below.
"""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest

from common.model import Reading
from edge.storage.health import StorageFailure, StorageHealth, storage_failure
from edge.storage.store import Batch, GatewayStore, StoreUnavailable
from tests.support.tmpfs import fill, tmpfs

BATCH = 2000
T0 = 1_764_300_000_000


def readings(k: int, n: int = BATCH) -> list[Reading]:
    """Batch k: distinct (device, ts) keys, values that compress poorly (a full disk sooner)."""
    rnd = random.Random(k)
    return [
        Reading(
            device_id=f"d{i % 50}",
            metric="temperature",
            ts=T0 + k * n + i,
            value=rnd.uniform(-40, 85),
            received_at=T0,
        )
        for i in range(n)
    ]


def commit_until_full(store: GatewayStore, first_k: int = 0) -> tuple[int, StoreUnavailable]:
    """Commit batches until one fails; (readings committed, the failure)."""
    committed = 0
    for k in range(first_k, first_k + 10_000):
        try:
            committed += store.commit(Batch(readings=readings(k))).inserted
        except StoreUnavailable as exc:
            return committed, exc
    raise AssertionError("the disk never filled")


def assert_unmasked(exc: StoreUnavailable) -> None:
    """The error is the disk's, not the ROLLBACK's that used to replace it."""
    text = str(exc) + "".join(getattr(exc, "__notes__", []))
    assert "no transaction is active" not in text
    assert exc.failure.disk_full and exc.failure.reason == "No space left on device"
    assert isinstance(exc.__cause__, duckdb.Error)


def test_a_commit_the_wal_cannot_take_fails_cleanly_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", 16) as disk:
        store = GatewayStore(disk / "gateway.duckdb")
        store.commit(Batch(readings=readings(0)))
        filler = fill(disk, 1_500_000)
        committed, exc = commit_until_full(store, first_k=1)
        committed += BATCH
        assert_unmasked(exc)
        assert not exc.reopened  # the WAL append failed: DuckDB rolled back, the file is fine
        # every reading committed before is there, and the sequence has no hole
        assert store.count_readings() == committed == store.last_seq()
        with pytest.raises(StoreUnavailable):  # still full: fails again, the same way
            store.commit(Batch(readings=readings(9_999)))
        filler.unlink()
        result = store.commit(Batch(readings=readings(9_999)))
        assert (result.inserted, result.first_seq) == (BATCH, committed + 1)
        store.close()
        again = GatewayStore(disk / "gateway.duckdb")
        assert again.count_readings() == committed + BATCH == again.last_seq()
        again.close()


def test_a_checkpoint_that_fails_invalidates_duckdb_and_the_store_reopens(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", 24) as disk:
        # A 1 MiB WAL triggers DuckDB's automatic checkpoint at COMMIT (16 MiB by default).
        store = GatewayStore(disk / "gateway.duckdb", checkpoint_threshold="1MB")
        committed, k = 0, 0
        while store.headroom()[1] < 700_000:  # a WAL most of the way to the checkpoint
            committed += store.commit(Batch(readings=readings(k))).inserted
            k += 1
        # Room for the WAL append, not for copying the WAL into the database file.
        filler = fill(disk, 300_000)
        last = readings(k)
        with pytest.raises(StoreUnavailable) as caught:
            for _ in range(5):  # the WAL crosses the threshold within a batch or two
                committed += store.commit(Batch(readings=last)).inserted
                k += 1
                last = readings(k)
        exc = caught.value
        assert_unmasked(exc)
        assert exc.failure.invalidated and exc.reopened  # a FatalException, then a new file
        # The reopened store reads and counts; its sequence continues from the file. DuckDB may
        # or may not have kept the batch whose checkpoint failed (its WAL was written): a
        # resend is deduplicated either way.
        stored = store.count_readings()
        assert stored in (committed, committed + BATCH)
        assert store.last_seq() == stored
        filler.unlink()
        resent = store.commit(Batch(readings=last))
        assert resent.inserted + resent.duplicates == BATCH
        assert store.count_readings() == committed + BATCH == store.last_seq()
        store.close()


def test_close_on_a_full_disk_raises_nothing_and_loses_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", 16) as disk:
        store = GatewayStore(disk / "gateway.duckdb")
        committed, _ = commit_until_full(store)
        fill(disk, 0)
        store.close()  # its CHECKPOINT fails: the WAL keeps the data
        again = GatewayStore(disk / "gateway.duckdb")  # opens on the full disk too
        assert again.count_readings() == committed
        again.close()


def test_sequence_numbers_never_go_back_after_the_readings_are_pruned(tmp_path: Path) -> None:
    """After a failed commit the store re-reads its next seq from the file: retention may have
    deleted every reading the cloud has, and the numbers must not be handed out again (the sync
    cursor would skip the new readings)."""
    store = GatewayStore(tmp_path / "gateway.duckdb")
    store.commit(Batch(readings=readings(0, 10)))
    store.save_sync_cursor(10, 0, T0)
    store.enforce_budget(synced_before_ms=T0 + 1, unsynced_cap=None, protect_through=0, now_ms=T0)
    assert store.count_readings() == 0
    store.close()
    store = GatewayStore(tmp_path / "gateway.duckdb")
    assert store.last_seq() == 10
    assert store.commit(Batch(readings=readings(1, 10))).first_seq == 11
    store.close()


def test_a_failed_transaction_keeps_its_error_and_its_numbers_are_not_skipped(
    tmp_path: Path,
) -> None:
    """Not the disk: a bug inside the transaction is raised as itself, rolled back."""
    store = GatewayStore(tmp_path / "gateway.duckdb")
    store.commit(Batch(readings=readings(0, 5)))
    broken = Batch(readings=readings(1, 5), kv={"k": object()})  # type: ignore[dict-item]
    with pytest.raises(duckdb.Error) as caught:
        store.commit(broken)
    assert not isinstance(caught.value, StoreUnavailable)
    assert store.count_readings() == 5 and store.last_seq() == 5
    assert store.commit(Batch(readings=readings(1, 5))).first_seq == 6
    store.close()


# -- the pure parts ----------------------------------------------------------------------------

WAL_FULL = (
    'TransactionContext Error: Failed to commit: Could not write file "/d/gateway.duckdb.wal": '
    "No space left on device"
)
CHECKPOINT_FULL = (
    "FATAL Error: Failed: database has been invalidated because of a previous fatal error. The "
    'database must be restarted prior to being used again.\nOriginal error: "Failed to create '
    'checkpoint because of error: Could not write file "/d/gateway.duckdb": Input/output error"'
)


def test_storage_failures_are_told_from_other_errors() -> None:
    wal = storage_failure(duckdb.TransactionException(WAL_FULL))
    assert wal == StorageFailure("No space left on device", WAL_FULL, True, False)
    fatal = storage_failure(duckdb.FatalException(CHECKPOINT_FULL))
    assert fatal is not None and fatal.invalidated and not fatal.disk_full
    assert fatal.reason.startswith("Failed to create checkpoint because of error")
    closed = storage_failure(duckdb.ConnectionException("Connection already closed!"))
    assert closed is not None and closed.invalidated
    assert storage_failure(duckdb.ConstraintException("Duplicate key")) is None
    assert storage_failure(duckdb.TransactionException("cannot rollback")) is None
    assert storage_failure(ValueError(WAL_FULL)) is None  # not DuckDB's


def test_storage_health_walks_its_table_and_reports_why() -> None:
    full = StorageFailure("No space left on device", WAL_FULL, True, False)
    h = StorageHealth()
    assert h.available and h.to_dict(0)["reason"] is None
    h = h.failed(full, 1_000, refused=500)
    h = h.refused(20).failed(full, 3_000, probe=True).probed(4_000)
    status = h.to_dict(61_000)
    assert status["state"] == "unavailable" and status["reason"] == "No space left on device"
    assert status["since"] == 1_000 and status["unavailable_for_s"] == 60
    assert (status["failed_commits"], status["failed_probes"]) == (1, 1)
    assert status["refused_readings"] == 520 and status["last_probe_at"] == 4_000
    h = h.recovered(70_000)
    status = h.to_dict(71_000)
    assert status["state"] == "available" and status["reason"] is None
    assert status["recovered_at"] == 70_000 and status["last_failure"]["at"] == 3_000
    assert h.failed(full, 80_000).since == 80_000  # a new outage, a new start
