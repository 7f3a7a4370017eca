"""Security state every worker must share ("security" migrations on the cloud's database):
failed attempts behind the login and enrollment limits, and, on PostgreSQL, the JWT signing key.

With N workers on M hosts an attacker's attempts land on any of them, so counting them in one
process's memory would multiply the limit by N; a token signed by one worker must verify on
all. Both live in the database. The embedded engine (one process) uses the same table, which
also keeps the counts through a restart; its signing key stays a file in the data dir.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from cloud.app.settings import LoginLimits
from cloud.storage.sql import Migration, Migrations, SqlDatabase, first
from common.clock import Clock

_TABLES = (
    """CREATE TABLE auth_failures (
        scope VARCHAR NOT NULL, key VARCHAR NOT NULL, at_ms BIGINT NOT NULL)""",
    "CREATE INDEX auth_failures_key ON auth_failures (scope, key, at_ms)",
    """CREATE TABLE cloud_secrets (
        name VARCHAR PRIMARY KEY, value VARCHAR NOT NULL, created_at BIGINT NOT NULL)""",
)
# VARCHAR and BIGINT mean the same on both engines here: one statement list serves both.
SECURITY_MIGRATIONS: Migrations = {
    "duckdb": (Migration(1, _TABLES),),
    "postgresql": (Migration(1, _TABLES),),
}
PRUNE_EVERY_MS = 60_000  # rows that left every window are deleted at most this often
JWT_KEY = "jwt_signing_key"


def wait_s(failures_ms: Sequence[int], now_ms: int, limits: LoginLimits) -> float | None:
    """Seconds until one more attempt is allowed, given the failures (ms, any order) inside
    the window; None when allowed now. Sliding window: the attempt is allowed again once the
    max_failures-th newest failure leaves it."""
    if len(failures_ms) < limits.max_failures:
        return None
    newest = sorted(failures_ms)[-limits.max_failures]
    return max(0.0, (newest + limits.window_s * 1000 - now_ms) / 1000)


class SecurityStore:
    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.migrate("security", SECURITY_MIGRATIONS)

    async def failures(
        self, scope: str, keys: Sequence[str], since_ms: int
    ) -> dict[str, list[int]]:
        marks = ", ".join("?" for _ in keys)
        rows = await self.db.run(
            lambda c: c.execute(
                f"SELECT key, at_ms FROM auth_failures WHERE scope = ? AND key IN ({marks})"
                " AND at_ms > ?",
                [scope, *keys, since_ms],
            ).fetchall()
        )
        found: dict[str, list[int]] = {key: [] for key in keys}
        for key, at in rows:
            found[key].append(int(at))
        return found

    async def add_failures(
        self, scope: str, keys: Sequence[str], at_ms: int, prune_before_ms: int | None
    ) -> None:
        def go(c: Any) -> None:
            if prune_before_ms is not None:
                c.execute("DELETE FROM auth_failures WHERE at_ms <= ?", [prune_before_ms])
            for key in keys:
                c.execute("INSERT INTO auth_failures VALUES (?, ?, ?)", [scope, key, at_ms])

        await self.db.run(self.db.transaction(go))

    async def clear(self, scope: str, key: str) -> None:
        await self.db.run(
            lambda c: c.execute(
                "DELETE FROM auth_failures WHERE scope = ? AND key = ?", [scope, key]
            )
        )

    def shared_secret(self, name: str, now_ms: int) -> bytes:
        """The named 32-byte secret, created by whichever worker asks first (the others read
        that one: the insert does nothing when a row exists)."""

        def go(c: Any) -> str:
            c.execute(
                "INSERT INTO cloud_secrets VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                [name, secrets.token_bytes(32).hex(), now_ms],
            )
            row = first(
                c.execute("SELECT value FROM cloud_secrets WHERE name = ?", [name]).fetchall()
            )
            return str(row[0])

        return bytes.fromhex(self.db.run_sync(self.db.transaction(go)))


class FailureLimiter:
    """Sliding-window count of failed attempts per key ("user:<email>", "addr:<ip>"), shared
    by every worker through the database. Wall-clock time: workers on several hosts share no
    monotonic clock (NTP-synchronised hosts are assumed, as for token expiry)."""

    def __init__(self, store: SecurityStore, scope: str, limits: LoginLimits, clock: Clock):
        self._store = store
        self._scope = scope
        self._limits = limits
        self._clock = clock
        self._pruned_at = 0

    @property
    def _window_ms(self) -> int:
        return int(self._limits.window_s * 1000)

    async def retry_after(self, *keys: str) -> float | None:
        """Seconds until one more attempt is allowed, or None when allowed now."""
        now = self._clock.now_ms()
        found = await self._store.failures(self._scope, keys, now - self._window_ms)
        waits = [w for times in found.values() if (w := wait_s(times, now, self._limits))]
        return max(waits) if waits else None

    async def record_failure(self, *keys: str) -> None:
        now = self._clock.now_ms()
        prune = None
        if now - self._pruned_at >= PRUNE_EVERY_MS:  # bounded: a spray of random e-mails
            self._pruned_at, prune = now, now - self._window_ms
        await self._store.add_failures(self._scope, keys, now, prune)

    async def reset(self, key: str) -> None:
        await self._store.clear(self._scope, key)
