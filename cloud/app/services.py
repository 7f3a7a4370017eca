"""What the API layer is built from: settings, store, clock, token service, limiter, metrics.

Constructed once (by the server, or by a test) and handed to create_app: no constructor here
opens sockets or starts threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from cloud.app.changes import KINDS, ChangeFeed, install_indexes
from cloud.app.metrics import Counter, Histogram, Registry
from cloud.app.settings import CloudSettings
from cloud.monitoring.loop import MonitorMetrics
from cloud.monitoring.store import MonitoringStore
from cloud.notify.store import NotifyStore
from cloud.security.auth import KnownUsers, TokenService, load_or_create_secret
from cloud.security.store import JWT_KEY, FailureLimiter, SecurityStore
from cloud.storage.db import Database
from cloud.storage.errors import StoreError
from cloud.storage.interface import CloudStore
from cloud.storage.retry import Sleep
from cloud.storage.store import SqlCloudStore
from cloud.sync.store import SyncStore
from common.clock import Clock, SystemClock
from common.gateway_auth import GatewayVerifier


@dataclass(frozen=True, slots=True)
class ApiMetrics:
    requests: Counter
    latency: Histogram
    login_failures: Counter

    @classmethod
    def on(cls, registry: Registry) -> ApiMetrics:
        return cls(
            requests=registry.counter(
                "iotsphere_http_requests_total",
                "HTTP requests by method, route and status",
                ("method", "route", "status"),
            ),
            latency=registry.histogram(
                "iotsphere_http_request_duration_seconds",
                "HTTP request latency by route",
                ("route",),
            ),
            login_failures=registry.counter(
                "iotsphere_login_failures_total",
                "failed logins by reason (bad credentials, rate limited)",
                ("reason",),
            ),
        )


def _noop() -> None:
    return None


def _no_stats() -> str:
    return ""


@dataclass(slots=True)
class Hooks:
    """Set by the background tasks while they run (cloud/app/background.py); harmless no-ops before,
    so the API works the same without them (in-process tests without a lifespan)."""

    wake_monitor: Callable[[], None] = _noop  # evaluate rules now (metrics just arrived)
    notify_stats: Callable[[], str] = _no_stats  # the worker's counters, Prometheus text


@dataclass(frozen=True)
class Services:
    settings: CloudSettings
    store: CloudStore
    clock: Clock
    tokens: TokenService
    limiter: FailureLimiter
    registry: Registry
    metrics: ApiMetrics
    sleep: Sleep = field(default=asyncio.sleep)
    # The monitoring and notification areas (None on a store that lacks them).
    monitoring: MonitoringStore | None = None
    notify: NotifyStore | None = None
    monitor_metrics: MonitorMetrics | None = None
    hooks: Hooks = field(default_factory=Hooks)
    # Gateway enrollment and sync (None on a store that lacks them).
    sync: SyncStore | None = None
    gateway_verifier: GatewayVerifier | None = None
    enroll_limiter: FailureLimiter | None = None
    users: KnownUsers | None = None  # access tokens' subjects, checked against the store
    changes: ChangeFeed | None = None  # what changed per org, for live pages (GET /api/events)


def build_services(
    settings: CloudSettings,
    store: SqlCloudStore,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
) -> Services:
    clock = clock or SystemClock()
    security = SecurityStore(store.db)
    # Every worker must verify what any other signed: on PostgreSQL the key is in the database;
    # the embedded cloud (one process) keeps it in its data dir.
    if store.db.dialect == "postgresql":
        key = security.shared_secret(JWT_KEY, clock.now_ms())
    else:
        key = load_or_create_secret(settings.jwt_secret_path)
    registry = Registry()
    monitoring = notify = sync = verifier = None
    if isinstance(store, SqlCloudStore):  # they share its database
        notify = NotifyStore(store.db)
        monitoring = MonitoringStore(store.db)
        sync = SyncStore(store.db)
        install_indexes(store.db)  # the change feed's, on the tables above
        # the lookup runs in a worker thread (the endpoint verifies off the event loop)
        verifier = GatewayVerifier(sync.active_public_key, clock)
    return Services(
        settings=settings,
        store=store,
        clock=clock,
        tokens=TokenService(
            key,
            clock,
            issuer=settings.issuer,
            audience=settings.audience,
            ttl_s=settings.access_ttl_s,
        ),
        limiter=FailureLimiter(security, "login", settings.login, clock),
        registry=registry,
        metrics=ApiMetrics.on(registry),
        sleep=sleep or asyncio.sleep,
        monitoring=monitoring,
        notify=notify,
        monitor_metrics=MonitorMetrics.on(registry),
        sync=sync,
        gateway_verifier=verifier,
        enroll_limiter=FailureLimiter(security, "enroll", settings.enroll, clock),
        users=KnownUsers(store.user_by_id, clock),
        # deliveries live in the notify area's table
        changes=ChangeFeed(
            store.db, kinds=KINDS if notify else KINDS[:3], batches=sync is not None
        ),
    )


def open_store(settings: CloudSettings) -> SqlCloudStore:
    """The store the settings name: PostgreSQL at `database_url`, else the embedded DuckDB
    file (raises StoreError)."""
    if settings.database_url is not None:
        try:
            from cloud.storage.pg import PgDatabase  # psycopg: only where PostgreSQL is used
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL needs psycopg ({exc.name} is missing):"
                " pip install 'iotsphere[postgres]'"
            ) from exc
        return SqlCloudStore(PgDatabase(settings.database_url))
    return open_duckdb_store(settings)


def open_duckdb_store(settings: CloudSettings) -> SqlCloudStore:
    """The embedded default: `cloud.duckdb` in the data dir (raises StoreError)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqlCloudStore(Database(settings.db_path, memory_limit=settings.duckdb_memory_limit))


def migrate_all(settings: CloudSettings) -> dict[str, int]:
    """Open the store and every area on it (each migrates its tables); their versions."""
    store = open_store(settings)
    try:
        build_services(settings, store)
        rows = store.db.run_sync(
            lambda c: c.execute(
                "SELECT component, version FROM schema_versions ORDER BY component"
            ).fetchall()
        )
        return {str(name): int(version) for name, version in rows}
    finally:
        store.close()
