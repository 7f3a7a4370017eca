"""The gateway's DuckDB store: opening it, batched durable writes, devices, rules, the disk
budget. The tables are in edge.storage.schema, the rows a commit writes in edge.storage.records,
the reads for sync in edge.storage.sync_reads and the reports in edge.storage.reports.

Synchronous on purpose: while the gateway runs, exactly one actor (edge.storage.actor) owns an
instance and calls it from a worker thread; while it is stopped, the CLI opens it directly.
DuckDB allows one writer process, so nothing else ever opens the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from common.model import Reading
from common.sync_wire import DeviceRecord
from edge.storage.connection import DuckConfig, DuckConnection, StoreError, StoreUnavailable
from edge.storage.migrations import open_migrated
from edge.storage.records import (
    AlertRow,
    AuthFailure,
    Batch,
    BudgetResult,
    CommitResult,
    EpochStart,
    Rejection,
)
from edge.storage.reports import Reports
from edge.storage.schema import (
    DROPPED_COUNTER,
    INCOMING_READINGS,
    INCOMING_READINGS_SCHEMA,
    PRUNED_COUNTER,
    SCHEMA,
    SYNC_ALERTS_KEY,
    SYNC_AUTH_KEY,
    SYNC_DEVICES_KEY,
    SYNC_LAST_ERROR_KEY,
    SYNC_LAST_SUCCESS_KEY,
    SYNC_READINGS_KEY,
    SYNC_RULES_KEY,
)
from edge.storage.snapshot import copy_database

__all__ = [  # defined in the modules beside this one; callers import them from here
    "DROPPED_COUNTER",
    "PRUNED_COUNTER",
    "SCHEMA",
    "SYNC_ALERTS_KEY",
    "SYNC_AUTH_KEY",
    "SYNC_DEVICES_KEY",
    "SYNC_LAST_ERROR_KEY",
    "SYNC_LAST_SUCCESS_KEY",
    "SYNC_READINGS_KEY",
    "SYNC_RULES_KEY",
    "AlertRow",
    "AuthFailure",
    "Batch",
    "BudgetResult",
    "CommitResult",
    "EpochStart",
    "GatewayStore",
    "Rejection",
    "StoreError",
    "StoreUnavailable",
]

log = logging.getLogger("iotsphere.store")

_NO_TS = -(2**63)  # below any ts: a series with nothing stored yet


class GatewayStore(Reports):
    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "64MB",
        threads: int = 1,
        checkpoint_threshold: str | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        config: DuckConfig = {"memory_limit": memory_limit, "threads": threads}
        if checkpoint_threshold is not None:  # DuckDB's default: checkpoint at a 16 MiB WAL
            config["checkpoint_threshold"] = checkpoint_threshold
        self._lock = threading.Lock()  # one statement sequence at a time, whatever the thread
        # The next sequence numbers, kept in memory (read from the file by _load_cursors).
        self._next_seq = self._next_change = self._next_auth = self._next_epoch = 1
        # The newest ts stored per (device, metric), an upper bound (None: read it from the
        # file when next needed). A batch whose readings are all newer cannot hold a duplicate
        # and skips the anti-join: docs/decisions/edge-dedup-fast-path.md.
        self._series_newest: dict[tuple[str, str], int] | None = None
        self._pending_newest: dict[tuple[str, str], int] = {}
        # Appenders of the current connection, by table (a reopen starts a new set).
        self._appenders: dict[tuple[str, bool], duckdb.Appender] = {}
        self._appenders_of: duckdb.DuckDBPyConnection | None = None
        self._db = DuckConnection(path, config, after_reopen=self._after_reopen)
        open_migrated(self._db)  # refuses a file of a newer release (SchemaTooNew)
        self._con.execute(INCOMING_READINGS_SCHEMA)
        try:
            self._compact_counters()
        except StoreUnavailable as exc:  # e.g. opened on a full disk: the deltas stay as they are
            log.warning("store: counters not compacted at open: %s", exc.failure.reason)
        self._load_cursors()

    def _after_reopen(self) -> None:
        self._con.execute(INCOMING_READINGS_SCHEMA)  # temporary tables end with a connection
        self._load_cursors()

    def _appender(self, table: str, *, autocommit: bool = False) -> duckdb.Appender:
        """The kept appender of `table` on the current connection (creating one costs ~0.3 ms,
        more than a small commit's insert). `autocommit`: on the append connection, for a
        flush that is its own transaction (never inside one of the main connection's)."""
        con = self._db.append_con if autocommit else self._con
        if self._appenders_of is not self._con:  # reopened: the old appenders are gone
            self._appenders, self._appenders_of = {}, self._con
        key = (table, autocommit)
        appender = self._appenders.get(key)
        if appender is None:
            appender = self._appenders[key] = con.appender(table)
        return appender

    def _load_cursors(self) -> None:
        """The next sequence numbers from the file (at open, after a reopen, after a failed
        transaction), never below what this instance has handed out already."""
        q = self._con.execute
        # Retention and the cap may have deleted the newest readings: the sync cursor, the
        # drops and the clock epochs still name those numbers, and none may be used twice.
        seq, change, auth, epoch = q(
            "SELECT greatest("
            "  (SELECT coalesce(max(seq), 0) FROM readings),"
            "  (SELECT coalesce(max(to_seq), 0) FROM drops),"
            "  (SELECT coalesce(max(first_seq) - 1, 0) FROM clock_epochs),"
            "  (SELECT coalesce(max(TRY_CAST(value AS BIGINT)), 0) FROM kv WHERE key = ?)),"
            " (SELECT coalesce(max(change_seq), 0) FROM alerts),"
            " (SELECT coalesce(max(seq), 0) FROM auth_failures),"
            " (SELECT coalesce(max(id), 0) FROM clock_epochs)",
            [SYNC_READINGS_KEY],
        ).fetchall()[0]
        self._next_seq = max(self._next_seq, int(seq) + 1)
        self._series_newest = None  # the file is the truth again (a failed commit may be in it)
        self._next_change = max(self._next_change, int(change) + 1)
        self._next_auth = max(self._next_auth, int(auth) + 1)
        self._next_epoch = max(self._next_epoch, int(epoch) + 1)

    @contextlib.contextmanager
    def _transaction(self, *, single: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction (call with self._lock held). A failure is rolled back without
        masking its error (StoreUnavailable for a storage failure). Its sequence numbers go back
        to where they were (nothing of it was stored), unless the file says otherwise: DuckDB
        can keep a commit whose WAL was written when the checkpoint after it failed.
        `single`: the body is one statement, its own transaction in DuckDB's autocommit."""
        before = (self._next_seq, self._next_change, self._next_auth, self._next_epoch)
        try:
            with self._db.guarded() if single else self._db.transaction() as con:
                yield con
        except BaseException as exc:
            self._next_seq, self._next_change, self._next_auth, self._next_epoch = before
            try:
                self._load_cursors()
            except duckdb.Error as reload_error:  # the reopen failed: the next use retries it
                exc.add_note(f"sequence numbers not re-read: {reload_error}")
            raise

    def _compact_counters(self) -> None:
        with self._db.transaction() as con:
            rows = con.execute("SELECT name, sum(value) FROM counters GROUP BY name").fetchall()
            con.execute("DELETE FROM counters")
            if rows:
                con.execute(
                    "INSERT INTO counters SELECT unnest($1::VARCHAR[]), unnest($2::BIGINT[])",
                    [[r[0] for r in rows], [int(r[1]) for r in rows]],
                )

    def snapshot(self, dest: Path) -> int:
        """A consistent copy of the database at dest, between commits; its schema version."""
        with self._lock:
            return copy_database(self._db, dest)

    def close(self) -> None:
        """Checkpoint and close; never fails over a full disk (the WAL keeps the data)."""
        with self._lock:
            self._db.close()

    # -- storage health ------------------------------------------------------------------

    def recover(self, exc: BaseException) -> StoreUnavailable | None:
        """After an operation outside commit() failed with exc: None when it is no storage
        failure; else the StoreUnavailable to report, the store usable again (reopened when
        DuckDB invalidated the database)."""
        with self._lock:
            return self._db.recover(exc)

    def headroom(self) -> tuple[int, int]:
        """(bytes still free for the database on its file system, bytes in its WAL)."""
        return self._db.headroom()

    # -- writes -------------------------------------------------------------------------

    def commit(self, batch: Batch) -> CommitResult:
        """Make a batch durable in one transaction; dedupes readings on (device, metric, ts).

        A batch of fresh readings alone (the common case under load) is one appender flush in
        DuckDB's autocommit: the same one transaction and WAL sync, without the BEGIN and
        COMMIT statements (~0.3 ms of a small commit's ~2 ms; docs/decisions/ingest-cpu.md)."""
        with self._lock:
            with self._db.guarded():  # it may read the newest ts per series from the file
                rows, fresh = self._prepare_readings(batch.readings)
            if fresh and rows and batch.only_readings():
                with self._transaction(single=True):
                    result = self._insert_readings(rows, fresh, len(batch.readings), single=True)
            else:
                result = self._commit_all(batch, rows, fresh)
            if self._series_newest is not None:  # committed: the batch's readings are stored
                self._series_newest.update(self._pending_newest)
        return result

    def _commit_all(self, batch: Batch, rows: list[Reading], fresh: bool) -> CommitResult:
        with self._transaction() as con:
            if batch.epoch is not None:
                e = batch.epoch
                con.execute(
                    "INSERT INTO clock_epochs VALUES (?, ?, ?, ?, ?, NULL, ?)",
                    [
                        self._next_epoch,
                        self._next_seq,
                        e.boot_id,
                        e.mono_base_ms,
                        e.flags,
                        e.started_at,
                    ],
                )
                self._next_epoch += 1
            result = self._insert_readings(rows, fresh, len(batch.readings))
            self._insert_rejections(batch.rejections)
            self._insert_auth_failures(batch.auth_failures)
            self._upsert_alerts(batch.alerts)
            self._write_last_seen(batch.last_seen)
            self._add_counters(batch.counters)
            for key, value in batch.kv.items():
                con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", [key, value])
        return result

    def _prepare_readings(self, readings: Sequence[Reading]) -> tuple[list[Reading], bool]:
        """The batch's rows (first occurrence wins inside it; the anti-join handles the
        table) and whether all are newer than their series' newest stored (no anti-join)."""
        if not readings:
            return [], True
        newest = self._newest_per_series()
        # Live telemetry: each reading newer than the one before it in its series, so none
        # repeats another and all are fresh. One pass, no (device, metric, ts) key each.
        pending: dict[tuple[str, str], int] = {}
        for r in readings:
            key = (r.device_id, r.metric)
            if r.ts <= pending.get(key, newest.get(key, _NO_TS)):
                break
            pending[key] = r.ts
        else:
            self._pending_newest = pending
            return list(readings), True
        unique: dict[tuple[str, str, int], Reading] = {}
        for r in readings:
            unique.setdefault((r.device_id, r.metric, r.ts), r)
        rows = list(unique.values())
        pending = {}
        fresh = True
        for r in rows:
            key = (r.device_id, r.metric)
            known = newest.get(key, _NO_TS)
            if r.ts <= known:
                fresh = False
            if r.ts > pending.get(key, known):
                pending[key] = r.ts
        self._pending_newest = pending
        return rows, fresh

    def _insert_readings(
        self, rows: list[Reading], fresh: bool, received: int, *, single: bool = False
    ) -> CommitResult:
        """`single`: the insert is the whole commit (appended and flushed in autocommit)."""
        if not rows:
            return CommitResult(0, 0, None, None)
        first = self._next_seq
        # Rows go in through DuckDB's appender as Python tuples: no Arrow table to build and
        # no pyarrow in the gateway (docs/decisions/edge-dedup-fast-path.md).
        appender = (
            self._appender("readings", autocommit=single)
            if fresh
            else self._appender(INCOMING_READINGS)
        )
        try:
            appender.append_rows(_reading_rows(rows, first))
            appender.flush()
        except BaseException:
            appender.clear()  # nothing of a failed commit may reach the next one
            raise
        if fresh:  # newer than anything stored in each series: no duplicate possible
            inserted = len(rows)
        else:
            # Zone maps on ts prune the scan to the row groups overlapping this batch's time
            # range, so dedup costs a few ms without a PRIMARY KEY index (10x larger on disk).
            lo = min(r.ts for r in rows)
            hi = max(r.ts for r in rows)
            inserted = int(
                self._con.execute(
                    f"INSERT INTO readings SELECT b.* FROM {INCOMING_READINGS} b ANTI JOIN ("
                    " SELECT device_id, metric, ts FROM readings WHERE ts BETWEEN ? AND ?"
                    ") r USING (device_id, metric, ts) ORDER BY b.seq",
                    [lo, hi],
                ).fetchall()[0][0]
            )
            self._con.execute(f"DELETE FROM {INCOMING_READINGS}")
        self._next_seq = first + len(rows)
        return CommitResult(
            inserted=inserted,
            duplicates=received - inserted,
            first_seq=first,
            last_seq=self._next_seq - 1,
        )

    def _newest_per_series(self) -> dict[tuple[str, str], int]:
        if self._series_newest is None:
            rows = self._con.execute(
                "SELECT device_id, metric, max(ts) FROM readings GROUP BY ALL"
            ).fetchall()
            self._series_newest = {(d, m): int(ts) for d, m, ts in rows}
        return self._series_newest

    def _insert_rejections(self, rejections: Sequence[Rejection]) -> None:
        for rj in rejections:
            self._con.execute(
                "INSERT INTO rejections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    rj.at,
                    rj.device_id,
                    rj.transport,
                    rj.status,
                    rj.title,
                    rj.detail,
                    json.dumps([{"path": e.path, "message": e.message} for e in rj.errors]),
                    rj.digest,
                    len(rj.payload),
                ],
            )

    def _insert_auth_failures(self, failures: Sequence[AuthFailure]) -> None:
        for f in failures:
            self._con.execute(
                "INSERT INTO auth_failures (occurred_at, kind, transport, address, username,"
                " client_id, reason, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    f.at,
                    f.kind,
                    f.transport,
                    f.address,
                    f.username,
                    f.client_id,
                    f.reason,
                    self._next_auth,
                ],
            )
            self._next_auth += 1

    def _upsert_alerts(self, alerts: Sequence[AlertRow]) -> None:
        for a in alerts:
            self._con.execute(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    a.id,
                    a.rule_id,
                    a.subject,
                    a.metric,
                    a.severity,
                    a.state,
                    json.dumps(a.value),
                    a.started_at,
                    a.acknowledged_at,
                    a.resolved_at,
                    self._next_change,
                ],
            )
            self._next_change += 1

    def _write_last_seen(self, last_seen: dict[str, int]) -> None:
        # One statement for all devices: a per-device UPDATE costs ~3 ms each in DuckDB.
        if not last_seen:
            return
        items = sorted(last_seen.items())
        self._con.execute(
            "UPDATE devices SET last_seen = greatest(coalesce(devices.last_seen, 0), v.at) "
            "FROM (SELECT unnest($1::VARCHAR[]) AS id, unnest($2::BIGINT[]) AS at) v "
            "WHERE devices.device_id = v.id",
            [[k for k, _ in items], [at for _, at in items]],
        )

    def _add_counters(self, counters: dict[str, int]) -> None:
        if not counters:
            return
        items = sorted(counters.items())
        self._con.execute(
            "INSERT INTO counters SELECT unnest($1::VARCHAR[]), unnest($2::BIGINT[])",
            [[k for k, _ in items], [n for _, n in items]],
        )

    # -- devices --------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        device_type: str | None,
        token_lookup: str,
        pw_hash: str,
        pw_salt: str,
        pw_iterations: int,
        now_ms: int,
    ) -> None:
        with self._lock:
            existing = self._con.execute(
                "SELECT status FROM devices WHERE device_id = ?", [device_id]
            ).fetchall()
            if existing and existing[0][0] == "active":
                raise StoreError(f"device {device_id!r} already exists")
            self._con.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?, 'active', ?, NULL, NULL)",
                [device_id, device_type, token_lookup, pw_hash, pw_salt, pw_iterations, now_ms],
            )

    def revoke_device(self, device_id: str, now_ms: int) -> None:
        with self._lock:
            found = self._con.execute(
                "SELECT status FROM devices WHERE device_id = ?", [device_id]
            ).fetchall()
            if not found:
                raise StoreError(f"no device {device_id!r}")
            if found[0][0] == "revoked":
                raise StoreError(f"device {device_id!r} is already revoked")
            self._con.execute(
                "UPDATE devices SET status = 'revoked', revoked_at = ? WHERE device_id = ?",
                [now_ms, device_id],
            )

    def device_records(self) -> list[DeviceRecord]:
        """The device list as the cloud should know it (synced whenever it changes)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT device_id, type, status FROM devices ORDER BY device_id"
            ).fetchall()
        return [DeviceRecord(r[0], r[1], r[2]) for r in rows]

    def devices(self, *, include_secrets: bool = False) -> list[dict[str, Any]]:
        cols = "device_id, type, status, created_at, revoked_at, last_seen"
        if include_secrets:
            cols += ", pw_hash, pw_salt, pw_iterations, token_lookup"
        with self._lock:
            cur = self._con.execute(f"SELECT {cols} FROM devices ORDER BY device_id")
            names = [d[0] for d in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def device_by_token(self, token_lookup: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._con.execute(
                "SELECT device_id, type, status FROM devices WHERE token_lookup = ?",
                [token_lookup],
            ).fetchall()
        if not rows:
            return None
        return {"device_id": rows[0][0], "type": rows[0][1], "status": rows[0][2]}

    # -- rules and kv ------------------------------------------------------------------------

    def save_rule(self, rule_id: str, body: dict[str, Any], version: int, now_ms: int) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO rules VALUES (?, ?, ?, ?)",
                [rule_id, json.dumps(body), version, now_ms],
            )

    def delete_rule(self, rule_id: str) -> bool:
        with self._lock:
            n = self._con.execute("DELETE FROM rules WHERE id = ?", [rule_id]).fetchall()[0][0]
        return bool(n)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute("SELECT body FROM rules ORDER BY created_at, id").fetchall()
        return [json.loads(r[0]) for r in rows]

    def kv_set(self, key: str, value: str) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", [key, value])

    # -- queries -----------------------------------------------------------------------------

    def last_seq(self) -> int:
        return self._next_seq - 1

    # -- sync --------------------------------------------------------------------------------

    def save_sync_cursor(
        self,
        readings_seq: int,
        alerts_seq: int,
        at_ms: int,
        auth_seq: int | None = None,
        devices_digest: str | None = None,
        rules_digest: str | None = None,
    ) -> None:
        kv = {
            SYNC_READINGS_KEY: str(readings_seq),
            SYNC_ALERTS_KEY: str(alerts_seq),
            SYNC_LAST_SUCCESS_KEY: str(at_ms),
        }
        if auth_seq is not None:
            kv[SYNC_AUTH_KEY] = str(auth_seq)
        if devices_digest is not None:
            kv[SYNC_DEVICES_KEY] = devices_digest
        if rules_digest is not None:
            kv[SYNC_RULES_KEY] = rules_digest
        self.commit(Batch(kv=kv))

    # -- clock epochs -------------------------------------------------------------------------

    def set_epoch_skew(self, boot_id: str, skew_ms: int) -> None:
        """The skew measured now belongs to the current (latest) epoch of this boot."""
        with self._lock:
            self._con.execute(
                "UPDATE clock_epochs SET skew_ms = ? WHERE id = ("
                " SELECT max(id) FROM clock_epochs WHERE boot_id = ?)",
                [skew_ms, boot_id],
            )

    # -- disk budget --------------------------------------------------------------------------

    def enforce_budget(
        self,
        *,
        synced_before_ms: int | None,
        unsynced_cap: int | None,
        protect_through: int,
        now_ms: int,
    ) -> BudgetResult:
        """Delete synced readings received before synced_before_ms, then, when more than
        unsynced_cap readings wait for the cloud, the oldest of them down to the cap, never
        those up to protect_through (in a batch on its way to the cloud). Alerts, rejections
        and audit rows are never touched. Dropped readings are counted in the same transaction.
        """
        cursor, _ = self.sync_cursor()
        pruned = dropped = 0
        with self._lock:
            with self._transaction() as con:
                if synced_before_ms is not None and cursor > 0:
                    pruned = int(
                        con.execute(
                            "DELETE FROM readings WHERE seq <= ? AND received_at < ?",
                            [cursor, synced_before_ms],
                        ).fetchall()[0][0]
                    )
                if unsynced_cap is not None:
                    dropped, span = self._drop_over_cap(cursor, unsynced_cap, protect_through)
                    if dropped:
                        con.execute(
                            "INSERT INTO drops VALUES (?, ?, ?, ?)", [now_ms, *span, dropped]
                        )
                self._add_counters(
                    {k: v for k, v in ((PRUNED_COUNTER, pruned), (DROPPED_COUNTER, dropped)) if v}
                )
            if pruned or dropped:
                # Frees the deleted row groups for reuse, so the file stops growing.
                with self._db.guarded() as con:
                    con.execute("CHECKPOINT")
        return BudgetResult(pruned, dropped)

    def _drop_over_cap(
        self, cursor: int, cap: int, protect_through: int
    ) -> tuple[int, tuple[int, int]]:
        con = self._con
        unsynced = int(
            con.execute("SELECT count(*) FROM readings WHERE seq > ?", [cursor]).fetchall()[0][0]
        )
        excess = unsynced - cap
        if excess <= 0:
            return 0, (0, 0)
        floor = max(cursor, protect_through)
        rows = con.execute(
            "SELECT seq FROM readings WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
            [floor, excess - 1],
        ).fetchall()
        if rows:
            upto = int(rows[0][0])
        else:  # fewer droppable readings than the excess: drop all of them
            upto = int(con.execute("SELECT coalesce(max(seq), 0) FROM readings").fetchall()[0][0])
        n = int(
            con.execute(
                "DELETE FROM readings WHERE seq > ? AND seq <= ?", [floor, upto]
            ).fetchall()[0][0]
        )
        return n, (floor + 1, upto)

    def save_sync_error(self, message: str, at_ms: int) -> None:
        self.commit(Batch(kv={SYNC_LAST_ERROR_KEY: json.dumps({"at": at_ms, "message": message})}))


def _reading_rows(rows: Sequence[Reading], first_seq: int) -> list[tuple[Any, ...]]:
    """Rows in the readings table's column order; the value goes to the column of its type."""
    out: list[tuple[Any, ...]] = []
    append = out.append
    for seq, r in enumerate(rows, first_seq):
        v = r.value
        t = type(v)
        if t is float or t is int:
            append((seq, r.device_id, r.metric, r.ts, r.received_at, v, None, None, r.flags, r.seq))
        elif t is bool:
            append((seq, r.device_id, r.metric, r.ts, r.received_at, None, v, None, r.flags, r.seq))
        else:
            append((seq, r.device_id, r.metric, r.ts, r.received_at, None, None, v, r.flags, r.seq))
    return out
