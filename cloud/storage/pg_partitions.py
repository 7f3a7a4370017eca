"""The daily partitions of `readings` on PostgreSQL (see cloud.storage.pg_schema): created when
a batch first needs them, or ahead of time; dropped whole for retention.

One partition per UTC day, `readings_pYYYYMMDD`, FOR VALUES FROM (day start) TO (next day
start) in ms. Timestamps before 2000-01-01 or from 2100-01-01 on (a device whose clock was never
set) get no daily partition: they stay in the default partition, so no daily partition is ever
created over a range the default partition holds rows of (PostgreSQL would refuse it).

Several workers on several hosts write at once. Two advisory locks, both held to the end of the
transaction that takes them:
- PARTITIONS_LOCK, shared by every writing transaction (checked then inserted under it) and
  taken exclusively by retention: a partition cannot be dropped between a writer seeing it and
  its rows going in (they would land in the default partition instead).
- CREATE_LOCK, exclusive: creators take turns, and the second finds the table the first made
  (CREATE TABLE IF NOT EXISTS alone is not safe against a concurrent create).
Which partitions exist is asked of the catalog on each batch (one statement, to_regclass) rather
than cached in the process: a partition dropped by another worker's retention would leave a
cache wrong, and the question costs a fraction of a millisecond per batch of thousands.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from cloud.storage.sql import SqlConn

DAY_MS = 86_400_000
LOW_MS = 946_684_800_000  # 2000-01-01T00:00Z: earlier readings stay in the default partition
HIGH_MS = 4_102_444_800_000  # 2100-01-01T00:00Z: so do these and later ones
PARTITIONS_LOCK = "iotsphere.readings.partitions"
CREATE_LOCK = "iotsphere.readings.create_partition"
_PREFIX = "readings_p"


def partition_name(day: int) -> str:
    """The partition of a UTC day (ms since the epoch // DAY_MS)."""
    return _PREFIX + datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")


def day_of_name(name: str) -> int | None:
    if not name.startswith(_PREFIX):
        return None
    try:
        when = datetime.strptime(name[len(_PREFIX) :], "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(when.timestamp()) // 86_400


def days_of(ts: pa.ChunkedArray | pa.Array) -> list[int]:
    """The UTC days (with a daily partition) that these timestamps fall in."""
    inside = pc.filter(ts, pc.and_(pc.greater_equal(ts, LOW_MS), pc.less(ts, HIGH_MS)))
    if len(inside) == 0:
        return []
    days: list[int] = pc.unique(pc.divide(inside, DAY_MS)).to_pylist()  # int64: floored (ts > 0)
    return sorted(days)


def ensure_partitions(c: SqlConn, days: Iterable[int]) -> list[str]:
    """Make sure each day has its partition, inside the caller's transaction (which then holds
    PARTITIONS_LOCK shared until it ends). Returns the names it created."""
    names = [partition_name(d) for d in sorted(set(days))]
    c.execute("SELECT pg_advisory_xact_lock_shared(hashtext(?))", [PARTITIONS_LOCK]).fetchall()
    if not names:
        return []
    missing = c.execute(
        "SELECT n FROM unnest(CAST(? AS TEXT[])) n WHERE to_regclass(n) IS NULL", [names]
    ).fetchall()
    if not missing or not _partitioned(c):
        return []
    c.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [CREATE_LOCK]).fetchall()
    for (name,) in missing:
        day = day_of_name(name)
        assert day is not None
        lo = day * DAY_MS
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings"
            f" FOR VALUES FROM ({lo}) TO ({lo + DAY_MS})"
        )
    return [n for (n,) in missing]


def _partitioned(c: SqlConn) -> bool:
    """Whether readings is the partitioned table. It is not on TimescaleDB
    (cloud.storage.pg_timescale), whose hypertable makes its chunks itself: nothing to create."""
    rows = c.execute("SELECT relkind FROM pg_class WHERE oid = CAST('readings' AS regclass)")
    return bool(rows.fetchall()[0][0] == "p")


def create_ahead(c: SqlConn, now_ms: int, days: int = 2) -> list[str]:
    """Today's partition and the next days' (for the serve wiring's daily maintenance, so the
    first batch of a day does not create one inside its own transaction)."""
    today = now_ms // DAY_MS
    return ensure_partitions(c, range(today, today + days))


def partitions(c: SqlConn) -> list[str]:
    """The daily partitions of readings, oldest first."""
    rows = c.execute(
        "SELECT CAST(i.inhrelid::regclass AS TEXT) FROM pg_inherits i"
        " WHERE i.inhparent = CAST('readings' AS regclass)"
    ).fetchall()
    return sorted(r[0] for r in rows if day_of_name(r[0]) is not None)


def drop_before(c: SqlConn, cutoff_ms: int) -> list[str]:
    """Retention, in the caller's transaction: drop every daily partition wholly older than
    cutoff_ms (its last ms before it), and delete the default partition's rows older than it.
    Returns the dropped partitions' names. Waits for writing transactions to end first."""
    c.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [PARTITIONS_LOCK]).fetchall()
    dropped = []
    for name in partitions(c):
        day = day_of_name(name)
        if day is not None and (day + 1) * DAY_MS <= cutoff_ms:
            c.execute(f"DROP TABLE {name}")
            dropped.append(name)
    c.execute("DELETE FROM readings_default WHERE ts < ?", [cutoff_ms])
    return dropped
