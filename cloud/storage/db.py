"""The owner of the cloud's DuckDB connection: one file, one lock, versioned migrations.

DuckDB allows one writer process; inside this process every query goes through one
connection guarded by a lock and runs in a worker thread, so the event loop never blocks on
disk. Each area (core, notify, monitoring, ...) registers its own ordered migrations under its
own component name, so helpers add tables without touching each other's schema.

duckdb exceptions are translated here, at the edge, into StoreError / StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from cloud.storage.errors import Conflict, StoreError, StoreUnavailable
from cloud.storage.sql import Dialect, Migrations, pending

log = logging.getLogger("iotsphere.cloud.db")

T = TypeVar("T")


class Database:
    """The embedded engine (cloud.storage.sql.SqlDatabase on DuckDB)."""

    dialect: Dialect = "duckdb"

    def __init__(self, path: Path | str, *, memory_limit: str | None = None) -> None:
        self.path = str(path)
        # DuckDB's own default is 80% of RAM, kept as cache: a bound keeps the cloud's RSS
        # predictable (it spills to disk beyond it for large queries).
        self._config: dict[str, str | bool | int | float | list[str]] = (
            {"memory_limit": memory_limit} if memory_limit else {}
        )
        self._lock = threading.Lock()
        self._conn = self._connect()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions ("
            " component VARCHAR PRIMARY KEY, version INTEGER NOT NULL)"
        )

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(self.path, config=self._config)
        except duckdb.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc

    # -- schema -------------------------------------------------------------------------

    def migrate(self, component: str, migrations: Migrations) -> int:
        """Apply the not-yet-applied migrations of one component; returns its new version.
        Raises SchemaTooNew when a newer release migrated it further than this one knows."""

        def go(conn: duckdb.DuckDBPyConnection) -> int:
            current, todo = pending(conn, component, migrations[self.dialect])
            for m in todo:  # each in its own transaction
                conn.execute("BEGIN")
                try:
                    for stmt in m.statements:
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT OR REPLACE INTO schema_versions VALUES (?, ?)",
                        [component, m.version],
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                log.debug("migrated %s to schema version %d", component, m.version)
                current = m.version
            return current

        return self.run_sync(go)

    # -- queries ------------------------------------------------------------------------

    def run_sync(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run fn with the connection, under the lock; database errors become StoreError."""
        with self._lock:
            try:
                return fn(self._conn)
            except duckdb.ConstraintException as exc:
                raise Conflict(str(exc)) from exc
            except (duckdb.ConnectionException, duckdb.IOException) as exc:
                raise StoreUnavailable(str(exc)) from exc
            except duckdb.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """run_sync in a worker thread, so the event loop keeps serving."""
        return await asyncio.to_thread(self.run_sync, fn)

    def transaction(
        self, fn: Callable[[duckdb.DuckDBPyConnection], T]
    ) -> Callable[[duckdb.DuckDBPyConnection], T]:
        """Wrap fn so it runs inside BEGIN/COMMIT (ROLLBACK on any error)."""

        def wrapped(conn: duckdb.DuckDBPyConnection) -> T:
            conn.execute("BEGIN")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return wrapped

    # -- availability (tests and operators: a REAL outage, not a mocked answer) ----------

    def make_unavailable(self) -> None:
        """Close the connection: every query now fails inside DuckDB until make_available()."""
        with self._lock:
            self._conn.close()
        log.warning("store made unavailable: connection to %s closed", self.path)

    def make_available(self) -> None:
        with self._lock:
            self._conn.close()
            self._conn = self._connect()
        log.warning("store available again: %s reopened", self.path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- for code that manages the lock itself (cloud/notify's OutboxStore) ---------------

    @property
    def lock(self) -> threading.Lock:
        """The lock every use of the connection must hold (DuckDB connections are not
        safe for concurrent use)."""
        return self._lock

    def current_connection(self) -> duckdb.DuckDBPyConnection:
        """The connection now in use: make_available() replaces it, so callers that keep a
        handle keep this method, not its result. Hold `lock` while using it."""
        return self._conn
