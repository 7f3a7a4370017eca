"""What the store's query groups share: the connection, its lock and the next sequence number.

GatewayStore (edge.storage.store) builds on these classes; each group of queries lives in its
own module (edge.storage.sync_reads, edge.storage.reports) and reads through this base.
"""

from __future__ import annotations

import threading
from typing import Any

import duckdb

from common.model import Value
from edge.storage.connection import DuckConnection


class StoreBase:
    _lock: threading.Lock  # one statement sequence at a time, whatever the thread
    _db: DuckConnection
    _next_seq: int  # the next reading sequence number (kept in memory)

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        return self._db.con

    def kv_get(self, key: str) -> str | None:
        with self._lock:
            rows = self._con.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchall()
        return str(rows[0][0]) if rows else None


def row_value(num: float | None, flag: bool | None, text: str | None) -> Value:
    """The one typed value of a row's value_num / value_bool / value_str columns."""
    if num is not None:
        return num
    return flag if flag is not None else text or ""


def filters(**conds: str | None) -> tuple[str, list[Any]]:
    parts = [f"{col} = ?" for col, v in conds.items() if v is not None]
    params = [v for v in conds.values() if v is not None]
    return ("WHERE " + " AND ".join(parts) if parts else "", params)
