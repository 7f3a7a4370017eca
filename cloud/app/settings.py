"""Typed configuration of the cloud aggregator, loaded once and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cloud.notify.senders import SmtpSettings

DB_FILE = "cloud.duckdb"
JWT_SECRET_FILE = "cloud_jwt.key"


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failed-login throttling (per account and per source address, sliding window)."""

    max_failures: int = 5  # failures allowed inside the window before 429
    window_s: float = 15 * 60.0  # length of the sliding window


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """The cloud's alert evaluation loop (rules against model metrics and device readings)."""

    interval_s: float = 10.0  # evaluate at least this often (no-data and for_seconds rules)
    batch: int = 10_000  # most metric rows one pass reads per org; the rest follow at once


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Delivery of alert notifications through the durable outbox."""

    max_attempts: int = 8  # tries before a notification is `failed`
    base_delay_s: float = 2.0  # backoff ceiling after the first failure; doubles per failure
    max_delay_s: float = 900.0  # backoff cap (a receiver's Retry-After is honoured up to it)
    poll_interval_s: float = 1.0  # how often due retries are looked for (new ones wake it)
    concurrency: int = 8  # sends in flight at once
    webhook_timeout_s: float = 10.0
    smtp: SmtpSettings = field(default_factory=SmtpSettings)  # the relay email channels use


@dataclass(frozen=True, slots=True)
class GatewayStateSettings:
    """When GET /api/gateways calls a gateway `online`, `lagging` or `offline` (its `state`).

    Contact is any request the cloud accepted from the gateway (a batch, or the configuration
    it fetches every 10 s: edge sync `config_every_s`), so an idle gateway with nothing to send
    still counts as heard from; a refused request (503, full disk) records nothing, so refusals
    show as silence.
    """

    # Silent longer than this: lagging. A healthy gateway is never silent for more than its
    # config interval (10 s) plus one request; 15 s leaves room for one slow request, and a
    # gateway whose every request is refused turns lagging at most 15 s after its last
    # accepted one (its sync tick is 1 s and a part-full batch waits at most 2 s).
    lag_after_s: float = 15.0
    # Silent longer than this: offline (six missed configuration fetches, not a slow one).
    offline_after_s: float = 60.0
    # More unsynced readings than one full sync batch (edge `sync_batch_max_readings`):
    # the gateway cannot catch up in its next post, so it is behind.
    lag_backlog_readings: int = 40_000


@dataclass(frozen=True, slots=True)
class CloudSettings:
    data_dir: Path
    bind: str = "127.0.0.1"  # the cloud is local-only unless the operator says otherwise
    port: int = 8000
    issuer: str = "iotsphere-cloud"  # JWT `iss`; checked on every request
    audience: str = "iotsphere-api"  # JWT `aud`; checked on every request
    access_ttl_s: int = 15 * 60  # short-lived access tokens; refresh tokens renew them
    refresh_ttl_s: int = 14 * 24 * 3600
    enrollment_ttl_s: int = 24 * 3600  # gateway enrollment tokens expire unused after this
    online_threshold_s: float = 300.0  # a device not heard from for longer is "offline"
    store_attempts: int = 3  # the seed: a failing database query is tried 3 times in all
    store_backoff_s: float = 0.05  # first retry delay; doubles on each further retry
    retry_after_s: int = 5  # Retry-After sent with 503 when the store stays down
    max_points: int = 10_000  # cap on raw telemetry points in one response
    # PostgreSQL (postgresql://user@host:port/db) instead of the embedded DuckDB file
    database_url: str | None = None
    # readings older than this many days (device time) are deleted; None keeps them all
    retention_days: int | None = None
    duckdb_memory_limit: str = "64MB"  # DuckDB's buffer cache; it spills beyond (default 80% RAM)
    login: LoginLimits = field(default_factory=LoginLimits)
    # failed gateway enrollments per source address (token guessing)
    enroll: LoginLimits = field(default_factory=lambda: LoginLimits(10, 15 * 60.0))
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    gateway_state: GatewayStateSettings = field(default_factory=GatewayStateSettings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def jwt_secret_path(self) -> Path:
        return self.data_dir / JWT_SECRET_FILE
