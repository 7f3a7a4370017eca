"""A reading is stored once per (device, metric, ts), whichever path its batch takes: the fast
path for readings newer than anything stored in their series, the anti-join for the rest."""

from __future__ import annotations

from pathlib import Path

from common.model import Reading
from edge.storage.store import Batch, GatewayStore

T0 = 1_764_300_000_000


def batch(device: str, metric: str, stamps: range | list[int]) -> Batch:
    return Batch(
        readings=[
            Reading(device_id=device, metric=metric, ts=T0 + t, value=float(t), received_at=T0)
            for t in stamps
        ]
    )


def stored(store: GatewayStore) -> list[tuple[str, str, int]]:
    rows = store._con.execute(
        "SELECT device_id, metric, ts - ? FROM readings ORDER BY ALL", [T0]
    ).fetchall()
    return [(d, m, int(t)) for d, m, t in rows]


def test_resends_and_overlaps_are_stored_once(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.duckdb")
    try:
        assert store.commit(batch("d1", "t", range(10))).inserted == 10
        again = store.commit(batch("d1", "t", range(10)))  # a resend: every reading known
        assert (again.inserted, again.duplicates) == (0, 10)
        newer = store.commit(batch("d1", "t", range(10, 20)))
        assert newer.inserted == 10
        mixed = store.commit(batch("d1", "t", [5, 19, 20, 21]))  # two old, two new
        assert (mixed.inserted, mixed.duplicates) == (2, 2)
        other = store.commit(batch("d1", "h", range(3)))  # another series, older ts: new
        assert other.inserted == 3
        out_of_order = store.commit(batch("d1", "t", [3, 3, 22]))  # repeat inside the batch
        assert (out_of_order.inserted, out_of_order.duplicates) == (1, 2)
        assert len(stored(store)) == 23 + 3  # t: 0-22, h: 0-2
        new_repeat = store.commit(batch("d1", "t", [30, 30, 31]))  # all new, one said twice
        assert (new_repeat.inserted, new_repeat.duplicates) == (2, 1)
        new_unordered = store.commit(batch("d1", "t", [33, 32]))  # all new, out of order
        assert (new_unordered.inserted, new_unordered.duplicates) == (2, 0)
        assert len(stored(store)) == 23 + 3 + 4
        assert len(set(stored(store))) == len(stored(store))
    finally:
        store.close()


def test_a_reopened_store_still_knows_what_it_holds(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.duckdb")
    store.commit(batch("d1", "t", range(5)))
    store.close()
    store = GatewayStore(tmp_path / "g.duckdb")
    try:
        assert store.commit(batch("d1", "t", range(5))).inserted == 0
        assert store.commit(batch("d1", "t", range(5, 6))).inserted == 1
    finally:
        store.close()


def test_readings_deleted_outside_commits_can_be_stored_again(tmp_path: Path) -> None:
    """The newest-ts map is only an upper bound: deletions (retention, the cap) keep it
    conservative, and a reading deleted and resent goes through the anti-join."""
    store = GatewayStore(tmp_path / "g.duckdb")
    try:
        store.commit(batch("d1", "t", range(5)))
        store._con.execute("DELETE FROM readings WHERE ts - ? >= 3", [T0])
        assert store.commit(batch("d1", "t", range(5))).inserted == 2
        assert [t for _d, _m, t in stored(store)] == [0, 1, 2, 3, 4]
    finally:
        store.close()
