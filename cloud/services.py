"""What the API layer is built from: settings, store, clock, token service, limiter, metrics.

Constructed once (by the server, or by a test) and handed to create_app: no constructor here
opens sockets or starts threads.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cloud.auth import LoginLimiter, TokenService, load_or_create_secret
from cloud.db import Database
from cloud.metrics import Counter, Histogram, Registry
from cloud.retry import Sleep
from cloud.settings import CloudSettings
from cloud.store import CloudStore
from cloud.store_duckdb import DuckCloudStore
from common.clock import Clock, SystemClock


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


@dataclass(frozen=True)
class Services:
    settings: CloudSettings
    store: CloudStore
    clock: Clock
    tokens: TokenService
    limiter: LoginLimiter
    registry: Registry
    metrics: ApiMetrics
    sleep: Sleep = field(default=asyncio.sleep)


def build_services(
    settings: CloudSettings,
    store: CloudStore,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
) -> Services:
    clock = clock or SystemClock()
    key = load_or_create_secret(settings.jwt_secret_path)
    registry = Registry()
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
        limiter=LoginLimiter(settings.login, clock),
        registry=registry,
        metrics=ApiMetrics.on(registry),
        sleep=sleep or asyncio.sleep,
    )


def open_duckdb_store(settings: CloudSettings) -> DuckCloudStore:
    """The embedded default: `cloud.duckdb` in the data dir (raises StoreError)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DuckCloudStore(Database(settings.db_path))
