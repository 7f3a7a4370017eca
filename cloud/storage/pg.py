"""The cloud's database on PostgreSQL: a pool of psycopg connections, versioned migrations.

The same query functions run here as on DuckDB (cloud.storage.sql): PgConn gives them the
`execute(...).fetchall()` shape they use and turns their `?` placeholders into psycopg's. Unlike
the embedded engine there is no process-wide lock: each call gets its own pooled connection, so
statements from several threads (and several worker processes) run at once, and what must be
atomic is one transaction or one conditional statement.

psycopg exceptions are translated here into StoreError / StoreUnavailable / Conflict.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from cloud.storage.errors import Conflict, StoreError, StoreUnavailable
from cloud.storage.sql import Dialect, Migrations, first, pending

log = logging.getLogger("iotsphere.cloud.pg")
T = TypeVar("T")
FIRST_WAIT_S = 0.25  # a connection not free within this: is the server there at all?
PROBE_EVERY_S = 0.5  # at most one direct connection per this to tell (shared by all threads)

# `?` outside quotes becomes %s; a literal % must be doubled for psycopg.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


@lru_cache(maxsize=2048)
def to_pg(query: str) -> str:
    """A query written with `?` placeholders, in psycopg's %s style."""

    def swap(m: re.Match[str]) -> str:
        token = m.group(0)
        return "%s" if token == "?" else "%%" if token == "%" else token

    return _TOKEN.sub(swap, query)


class PgConn:
    """A pooled psycopg connection with the shape query code expects (cloud.storage.sql.SqlConn):
    execute() returns something to fetchall() from, placeholders are `?`."""

    __slots__ = ("_cur", "raw")

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw
        self._cur: psycopg.Cursor[Any] | None = None

    def execute(self, query: str, parameters: object = None) -> PgConn:
        params: Any = parameters  # a sequence of values, as with DuckDB
        self._cur = self.raw.execute(to_pg(query), params)
        return self

    def executemany(self, query: str, parameters: object = None) -> PgConn:
        cur = self.raw.cursor()
        rows: Any = parameters
        cur.executemany(to_pg(query), rows)
        self._cur = cur
        return self

    def fetchall(self) -> list[Any]:
        cur = self._cur
        return cur.fetchall() if cur is not None and cur.description is not None else []

    def fetchone(self) -> Any:
        return first(self.fetchall())

    @property
    def rowcount(self) -> int:
        return -1 if self._cur is None else self._cur.rowcount


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(an unparsable URL)"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class PgDatabase:
    """cloud.storage.sql.SqlDatabase on PostgreSQL."""

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 10,
        connect_timeout_s: float = 5.0,
        application_name: str = "iotsphere-cloud",
    ) -> None:
        self.url = url
        self._timeout_s = connect_timeout_s
        self._threads = ThreadPoolExecutor(max_connections, thread_name_prefix="pg")
        self._probe_lock = threading.Lock()
        self._probed_at = -PROBE_EVERY_S
        self._down: StoreError | None = None
        _try_connect(url, connect_timeout_s)  # the server's own reason when it refuses
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={
                "autocommit": True,  # a transaction is explicit: transaction(fn)
                "connect_timeout": max(1, int(connect_timeout_s)),
                "application_name": application_name,
            },
            # A connection handed out is checked first: after a server restart every pooled
            # connection is dead, and the first query on each would fail otherwise.
            check=ConnectionPool.check_connection,
            timeout=connect_timeout_s,
            open=False,
            name="iotsphere",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable(f"cannot connect to {redact(url)}: {_reason(exc)}") from exc
        self.run_sync(
            lambda c: c.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions ("
                " component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            )
        )

    # -- schema -------------------------------------------------------------------------

    def migrate(self, component: str, migrations: Migrations) -> int:
        """Apply the not-yet-applied migrations of one component; returns its new version.

        Several workers may start at once: an advisory lock held for the transaction makes
        them take turns, and each reads the version only once it holds the lock."""
        if self.dialect not in migrations:
            raise StoreError(f"no PostgreSQL schema for the {component} tables in this release")

        def go(c: PgConn) -> int:
            c.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ["iotsphere.migrate"])
            current, todo = pending(c, component, migrations[self.dialect])
            for m in todo:  # all in this one transaction
                for stmt in m.statements:
                    c.execute(stmt)
                current = m.version
                log.debug("migrated %s to schema version %d", component, m.version)
            c.execute(
                "INSERT INTO schema_versions VALUES (?, ?) ON CONFLICT (component)"
                " DO UPDATE SET version = excluded.version",
                [component, current],
            )
            return current

        return self.run_sync(self.transaction(go))

    # -- queries ------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[PgConn]:
        raw = self._checkout()
        try:
            with _translated():
                yield PgConn(raw)
        finally:
            self._pool.putconn(raw)  # rolled back, or discarded when broken, by the pool

    def _checkout(self) -> psycopg.Connection[Any]:
        """A pooled connection. One that is not free at once may be a busy pool or a server
        that is down: a direct connection tells which (at most every PROBE_EVERY_S), so an
        outage fails in milliseconds with the server's reason instead of after the pool's whole
        wait, three times over with the API's retries."""
        try:
            return self._pool.getconn(timeout=FIRST_WAIT_S)
        except PoolTimeout:
            pass
        self._probe()
        try:
            return self._pool.getconn(timeout=self._timeout_s)
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no database connection free: {_reason(exc)}") from exc

    def _probe(self) -> None:
        now = time.monotonic()
        with self._probe_lock:
            if now - self._probed_at >= PROBE_EVERY_S:
                self._probed_at = now
                try:
                    _try_connect(self.url, self._timeout_s)
                    self._down = None
                except StoreError as exc:
                    self._down = exc
            down = self._down
        if down is not None:
            raise StoreUnavailable(str(down))

    def run_sync(self, fn: Callable[[PgConn], T]) -> T:
        """Run fn with a pooled connection; database errors become StoreError."""
        with self._connection() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[PgConn], T]) -> T:
        """run_sync in a worker thread, so the event loop keeps serving: threads as many as
        connections (asyncio's default executor has min(32, cores + 4))."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self.run_sync, fn)

    def transaction(self, fn: Callable[[PgConn], T]) -> Callable[[PgConn], T]:
        """Wrap fn so it runs in one transaction (rolled back on any error)."""

        def wrapped(conn: PgConn) -> T:
            with conn.raw.transaction():
                return fn(conn)

        return wrapped

    def close(self) -> None:
        self._pool.close()
        self._threads.shutdown(wait=False)


@contextmanager
def _translated() -> Iterator[None]:
    """psycopg's exceptions as the store's."""
    try:
        yield
    except psycopg.errors.IntegrityError as exc:
        raise Conflict(_reason(exc, full=True)) from exc
    except psycopg.OperationalError as exc:  # connection lost, server shutting down
        raise StoreUnavailable(_reason(exc)) from exc
    except psycopg.Error as exc:
        raise StoreError(f"{type(exc).__name__}: {_reason(exc)}") from exc


def _try_connect(url: str, timeout_s: float) -> None:
    """One connection before the pool: a wrong URL, a server that is down or a refused login
    fails here with libpq's reason, where the pool would only say that it timed out."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, int(timeout_s))):
            pass
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {redact(url)}: {_reason(exc)}") from exc
    except ValueError as exc:  # not a URL libpq can parse
        raise StoreError(f"not a PostgreSQL URL: {redact(url)} ({exc})") from exc


def _reason(exc: BaseException, *, full: bool = False) -> str:
    """A driver's message on one line: the first (libpq's are multi-line), or all of them
    joined (a constraint's DETAIL names the key)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return "; ".join(lines) if full else lines[0]
