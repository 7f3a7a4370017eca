"""What query code may assume of a database, whichever engine runs it (DuckDB or PostgreSQL).

Query functions take a SqlConn and write `?` placeholders; both engines run them unchanged
(cloud.storage.pg translates the placeholders for psycopg). SQL the two dialects share is
written once; where they differ (bulk loads, latest-value aggregates, the readings schema) a
store asks `db.dialect` or has a module per engine. See docs/decisions/cloud-sql-engines.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from cloud.storage.errors import SchemaTooNew

T = TypeVar("T")

Dialect = Literal["duckdb", "postgresql"]


class SqlResult(Protocol):
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class SqlConn(Protocol):
    """A connection as query code uses it: DuckDB's own, or cloud.storage.pg.PgConn."""

    def execute(self, query: str, parameters: object = None) -> SqlResult: ...
    def executemany(self, query: str, parameters: object = None) -> object: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # 1, 2, 3 ... within one component; applied in order, each exactly once
    statements: tuple[str, ...]


# One ordered list of migrations per engine: the engines' histories differ (PostgreSQL started
# later, from the schema DuckDB had reached), their versions count separately.
Migrations = Mapping[Dialect, Sequence[Migration]]


class SqlDatabase(Protocol):
    """The database a store is built on (cloud.storage.db.Database, cloud.storage.pg.PgDatabase).

    Errors: StoreError and its subclasses (cloud.storage.errors), nothing else."""

    @property
    def dialect(self) -> Dialect: ...

    def migrate(self, component: str, migrations: Migrations) -> int: ...
    def run_sync(self, fn: Callable[[Any], T]) -> T: ...
    async def run(self, fn: Callable[[Any], T]) -> T: ...
    def transaction(self, fn: Callable[[Any], T]) -> Callable[[Any], T]: ...
    def close(self) -> None: ...


def first(rows: list[Any]) -> Any:
    """The first row or None. (Fetch whole results: DuckDB refuses new work on a connection
    whose last result was only partly fetched, e.g. by fetchone().)"""
    return rows[0] if rows else None


def pending(
    c: SqlConn, component: str, migrations: Sequence[Migration]
) -> tuple[int, list[Migration]]:
    """The component's version and its migrations not applied yet, in order. Raises
    SchemaTooNew when a newer release migrated it further than this one knows."""
    row = first(
        c.execute("SELECT version FROM schema_versions WHERE component = ?", [component]).fetchall()
    )
    current = int(row[0]) if row else 0
    check_not_newer(component, current, migrations)
    return current, sorted((m for m in migrations if m.version > current), key=lambda m: m.version)


def check_not_newer(component: str, current: int, migrations: Sequence[Migration]) -> None:
    """Refuse a database a newer release migrated: its schema is not one this code knows."""
    known = max((m.version for m in migrations), default=0)
    if current > known:
        raise SchemaTooNew(
            f"the database's {component} schema is at version {current}, newer than this"
            f" release knows ({known}): upgrade iotsphere, or restore a backup of the database"
        )
