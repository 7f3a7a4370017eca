"""The store's one DuckDB connection: opened, kept usable after a failed write, closed.

What DuckDB does when a write fails for lack of space (measured with the database on a full
tmpfs, DuckDB 1.1.3, 1.4.4, 1.5.x and 2.0.1; figures in docs/decisions/storage-full.md):
- A COMMIT whose WAL append fails raises TransactionException "Failed to commit: Could not write
  file ...wal: No space left on device". DuckDB has already rolled the transaction back and
  truncated the WAL to its size before the commit, so a ROLLBACK after it fails with "cannot
  rollback - no transaction is active" (that error used to replace the real one), and the
  connection stays usable.
- A large insert that writes row groups straight into the database file fails inside the
  transaction (IOException): there a ROLLBACK is needed, and works.
- A COMMIT that runs an automatic checkpoint (the WAL past checkpoint_threshold, 16 MiB by
  default) which then fails invalidates the whole database: FatalException, "database has been
  invalidated", on that and every later statement until the file is reopened. DuckDB 1.5+ keeps
  the WAL, so the reopened file has every committed transaction.
Every COMMIT ends with an fsync (2.0: fdatasync) of the WAL, so a commit that returned is on disk.

So a failed transaction is rolled back when one is still open, the original error is what the
caller sees (as StoreUnavailable for a storage failure), and an invalidated database is closed
and opened again before the next statement.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from edge.storage.health import StorageFailure, storage_failure

log = logging.getLogger("iotsphere.store")

NO_TRANSACTION = "no transaction is active"
DuckConfig = dict[str, str | bool | int | float | list[str]]


class StoreError(Exception):
    """The store cannot do what was asked (carries a user-facing message)."""


class StoreUnavailable(StoreError):
    """A write failed for a storage reason: a full disk, an I/O error, a database DuckDB
    invalidated. Nothing of the failed transaction was stored, and the connection is usable
    again (reopened if DuckDB had invalidated it): retry later."""

    def __init__(self, failure: StorageFailure, *, reopened: bool = False) -> None:
        super().__init__(failure.detail)
        self.failure = failure
        self.reopened = reopened


class DuckConnection:
    """Owns the duckdb connection of one database file; callers serialise access (one lock).

    `after_reopen` runs after every reopen, before any other statement: the store re-reads
    what it keeps in memory (the next sequence numbers) from the file."""

    def __init__(self, path: Path, config: DuckConfig, after_reopen: Callable[[], None]) -> None:
        self.path = path
        self._config = config
        self._after_reopen = after_reopen
        self._broken = False  # a reopen failed: the next use tries again
        self._append_con: duckdb.DuckDBPyConnection | None = None
        try:
            self._con = duckdb.connect(str(path), config=config)
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():
                raise StoreError(
                    f"the database {path} is in use by another process (is the gateway running?)"
                ) from exc
            raise StoreError(f"cannot open the database {path}: {exc}") from exc

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        return self._con

    @property
    def append_con(self) -> duckdb.DuckDBPyConnection:
        """A second connection to the database for autocommitted Appender flushes, without
        DuckDB's optimizer: a flush plans an insert, and the optimizer is 0.1 ms of a 1.1 ms
        flush (docs/decisions/ingest-cpu.md). Nothing else runs on it."""
        if self._append_con is None:
            self._append_con = self._con.cursor()
            self._append_con.execute("PRAGMA disable_optimizer")
        return self._append_con

    def _close_append_con(self) -> None:
        con, self._append_con = self._append_con, None
        if con is not None:
            try:
                con.close()
            except duckdb.Error as exc:
                log.debug("store: closing the append connection: %s", exc)

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".wal")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT. On failure: roll back what DuckDB has not, keep the original
        error, make the connection usable again; a storage failure leaves as StoreUnavailable."""
        self.ensure_open()
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as exc:
            self._rollback_after(exc)
            unavailable = self.recover(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise

    @contextlib.contextmanager
    def guarded(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write outside a transaction (CHECKPOINT): a storage failure becomes
        StoreUnavailable with the connection usable again."""
        self.ensure_open()
        try:
            yield self._con
        except duckdb.Error as exc:
            unavailable = self.recover(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise

    def recover(self, exc: BaseException) -> StoreUnavailable | None:
        """After a failed statement: None when exc is no storage failure (the caller's error);
        otherwise reopen the database if DuckDB invalidated it, and the StoreUnavailable to
        report. Never raises for the failure it recovers from."""
        failure = storage_failure(exc)
        if failure is None:
            return None
        if not failure.invalidated and self._usable():
            return StoreUnavailable(failure)
        try:
            self.reopen()
        except StoreUnavailable as again:
            exc.add_note(f"reopening the database failed too: {again}")
            return StoreUnavailable(failure)
        log.warning("store: database reopened after DuckDB invalidated it (%s)", failure.reason)
        return StoreUnavailable(failure, reopened=True)

    def ensure_open(self) -> None:
        if self._broken:
            self.reopen()

    def reopen(self) -> None:
        """Close (whatever state DuckDB is in) and open the file again; the WAL is replayed,
        so every committed transaction is there. Raises StoreUnavailable when it cannot."""
        self._close_append_con()
        try:
            self._con.close()
        except duckdb.Error as exc:  # an invalidated database closes, but be sure
            log.debug("store: closing the old connection: %s", exc)
        self._broken = True
        try:
            self._con = duckdb.connect(str(self.path), config=self._config)
            self._after_reopen()
        except duckdb.Error as exc:
            failure = storage_failure(exc) or StorageFailure(
                reason=str(exc)[:200], detail=str(exc), disk_full=False, invalidated=True
            )
            raise StoreUnavailable(failure) from exc
        self._broken = False

    def headroom(self) -> tuple[int, int]:
        """(bytes this process may still write on the database's file system, WAL size)."""
        st = os.statvfs(self.path.parent)
        try:
            wal = self.wal_path.stat().st_size
        except FileNotFoundError:
            wal = 0
        return st.f_bavail * st.f_frsize, wal

    def close(self) -> None:
        """Checkpoint and close. A checkpoint that fails (full disk, invalidated database)
        loses nothing: the committed transactions are in the WAL, replayed at the next open."""
        try:
            if not self._broken:
                self._con.execute("CHECKPOINT")
        except duckdb.Error as exc:
            log.warning("store: checkpoint at close failed, the WAL keeps the data: %s", exc)
        finally:
            self._close_append_con()
            self._con.close()

    def _usable(self) -> bool:
        try:
            self._con.execute("SELECT 1").fetchall()
        except duckdb.Error:
            return False
        return True

    def _rollback_after(self, exc: BaseException) -> None:
        try:
            self._con.execute("ROLLBACK")
        except duckdb.Error as rollback_error:
            # A COMMIT that failed was rolled back by DuckDB already; any other rollback
            # error is noted on the original, which stays the error that is raised.
            if NO_TRANSACTION not in str(rollback_error):
                exc.add_note(f"rollback failed too: {rollback_error}")
