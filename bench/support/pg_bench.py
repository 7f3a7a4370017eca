"""PostgreSQL for the cloud benchmarks (sync_drain.py, cloud_api.py): the database to use (the
one given, or a private throwaway cluster), a scratch schema for a second cloud in the same
database, and the disk the readings take."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg

from tests.support.postgres import running_cluster


@contextlib.contextmanager
def database(url: str | None, private: bool) -> Iterator[str | None]:
    """The URL to use: `url`, or with `private` a fresh database on a throwaway cluster
    (tests/support/postgres.py: durability defaults, removed afterwards), else None."""
    if url is not None or not private:
        yield url
        return
    with running_cluster() as cluster:
        yield cluster.fresh_database()


@contextlib.contextmanager
def scratch_schema(url: str, name: str) -> Iterator[str]:
    """A URL whose connections work in schema `name` (made empty first, dropped afterwards):
    a second cloud in the same database, its tables apart from the main one's."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={name}")]
    try:
        yield parts._replace(query=urlencode(query)).geturl()
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def readings_size(url: str) -> dict[str, int]:
    """Rows and bytes (tables with their TOAST, and indexes) of every partition of readings,
    the series table (PostgreSQL keys readings by series id) counted with the tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE readings")  # an up-to-date visibility map, as in service
        row = conn.execute(
            "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid))"
            " FROM pg_partition_tree('readings') WHERE isleaf"
        ).fetchone()
        count = conn.execute("SELECT count(*) FROM readings").fetchone()
        series = conn.execute(  # the series readings are keyed by, with its indexes
            "SELECT coalesce(pg_total_relation_size(to_regclass('series')), 0)"
        ).fetchone()
    assert row is not None and count is not None and series is not None
    return {
        "rows": int(count[0]),
        "table_bytes": int(row[0]) + int(series[0]),
        "index_bytes": int(row[1]),
    }


def per_million(size: dict[str, int]) -> float:
    """MB (table + indexes) per million readings."""
    return round((size["table_bytes"] + size["index_bytes"]) / max(size["rows"], 1), 1)
