"""Readings kept and partitions prepared: the cloud's periodic maintenance (cloud/app/
background.py runs it every MAINTAIN_EVERY_S in each worker).

PostgreSQL: the next days' partitions are created ahead (so the first batch of a day does not
create one inside its own transaction), and with a retention set, whole daily partitions older
than it are dropped (cloud.storage.pg_partitions). Both are idempotent and serialised by the
partition locks, so every worker may run them: the second finds nothing left to do. On
TimescaleDB (cloud.storage.pg_timescale) drop_chunks drops whole chunks instead. DuckDB
(one process): readings older than the retention are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud.storage.sql import SqlConn, SqlDatabase

DAY_MS = 86_400_000
AHEAD_DAYS = 2


@dataclass(frozen=True, slots=True)
class Maintained:
    created: tuple[str, ...] = ()  # partitions made ahead
    dropped: tuple[str, ...] = ()  # partitions dropped for retention
    deleted: int = 0  # DuckDB: readings deleted for retention


async def maintain_readings(db: SqlDatabase, now_ms: int, keep_days: int | None) -> Maintained:
    cutoff = None if keep_days is None else now_ms - keep_days * DAY_MS
    if db.dialect == "postgresql":
        from cloud.storage import pg_timescale
        from cloud.storage.pg_partitions import create_ahead, drop_before

        def on_pg(c: SqlConn) -> Maintained:
            if pg_timescale.enabled(c):  # chunks are made by the extension, dropped by it
                gone = pg_timescale.drop_before(c, cutoff) if cutoff is not None else []
                return Maintained(dropped=tuple(gone))
            created = create_ahead(c, now_ms, AHEAD_DAYS)
            dropped = drop_before(c, cutoff) if cutoff is not None else []
            return Maintained(tuple(created), tuple(dropped))

        return await db.run(db.transaction(on_pg))
    if cutoff is None:
        return Maintained()

    def on_duckdb(c: SqlConn) -> Maintained:
        # DuckDB answers a DELETE with one row: how many it deleted
        count = c.execute("DELETE FROM readings WHERE ts < ?", [cutoff]).fetchall()
        return Maintained(deleted=int(count[0][0]) if count else 0)

    return await db.run(db.transaction(on_duckdb))
