"""Typed gateway configuration, loaded once: defaults < gateway.toml in the data dir < flags.

Every field is documented where it is declared; nothing below reads config with ad-hoc
defaults. The defaults are sized for a Raspberry Pi.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common.validation import DeviceTypeSpec, device_type_from_dict


class ConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class LockoutConfig:
    max_failures_per_user: int = 10  # failed CONNECTs of one username within window_s
    max_failures_per_address: int = 10  # failed CONNECTs from one source address within window_s
    window_s: float = 300.0
    cooldown_s: float = 300.0  # how long a locked-out username/address is refused


@dataclass(frozen=True, slots=True)
class DiskBudget:
    """What the store actor enforces (derived from GatewayConfig, which documents it)."""

    synced_retention_s: float | None  # None: keep synced readings forever
    unsynced_cap: int | None  # readings; None: no cap
    every_s: float


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    data_dir: Path
    bind: str = "0.0.0.0"  # LAN-facing listeners
    mqtt_port: int = 1883  # the device-facing MQTT front (0 = any free port)
    http_port: int = 8080  # device HTTP ingress and the local status page (later issue)
    coap_port: int = 5683  # CoAP ingress (later issue)
    # TLS (edge.security.tls): MQTT over TLS and HTTPS (ingress, status page) in front of the
    # same front and app as the plain ports; 0 = off. The certificate is generated in DATA/tls on
    # first start unless tls_cert_file and tls_key_file (PEM) name the installer's own.
    mqtts_port: int = 8883
    https_port: int = 8443
    plain_mqtt: bool = True  # false: no plain MQTT listener (mqtt_port 0 already means "any")
    plain_http: bool = True  # false: no plain HTTP listener (devices, status page, /metrics)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    broker_url: str | None = None  # external broker (mqtt://user:pass@host:port); None = managed
    broker_port: int = 0  # private Mosquitto port on 127.0.0.1 (0 = a free port at each start)
    broker_max_queued: int = 1_000_000  # QoS 1 messages the broker holds for the gateway
    batch_max_readings: int = 500  # the store commits when this many readings are pending...
    batch_max_delay_ms: int = 50  # ...or when the oldest pending one waited this long
    # While at least commit_siblings devices wait for one commit, it waits up to commit_delay_us
    # for more of them (PostgreSQL's commit_delay): fewer, larger commits under load; a device
    # alone never waits. Figures: docs/decisions/ingest-cpu.md.
    commit_delay_us: int = 1000
    commit_siblings: int = 5
    ingest_queue: int = 5_000  # store mailbox (messages); full = backpressure to ingress
    duckdb_memory_limit: str = "64MB"  # DuckDB's own default takes 80% of RAM; it spills beyond
    duckdb_threads: int = 1
    max_future_skew_s: float = 86_400.0  # device ts further ahead than this is flagged
    rule_tick_s: float = 1.0  # how often `for` timers and no-data rules are checked
    # Connection caps of the LAN listeners (edge.ingest.listener): a connection over a cap is closed
    # as soon as it is accepted (HTTP: a 503 problem document first), counted (`gateway status`
    # "connections") and logged at most once per 10 s. At start the gateway raises its soft
    # descriptor limit (never above the hard limit) to fd_reserve + 2 x mqtt_max_connections
    # + http_max_connections (an MQTT connection can hold two: its own and its pipe to
    # Mosquitto); under a lower hard limit both caps shrink in proportion and the start-up log
    # says so. Figures: docs/decisions/listener-caps.md.
    mqtt_max_connections: int = 4096  # open at once on the MQTT port (Mosquitto's name)
    http_max_connections: int = 1024  # open at once on the HTTP port (devices, status page)
    max_connections_per_address: int = 128  # per listener; never over a quarter of its cap
    fd_reserve: int = 128  # descriptors kept for DuckDB, Mosquitto, CoAP, logs, admin, sync
    # Sync to the cloud (only once enrolled: `iotsphere gateway enroll`).
    sync_tick_s: float = 1.0  # how often the sync actor looks for unsynced data
    sync_config_every_s: float = 10.0  # how often rule/device changes are fetched from the cloud
    # per batch: 24-320 KB on the wire (0.6-8 B each); two are in flight while draining
    # (bench/sync_drain.py: 40k drains 105-140k readings/s, 30k 91-121k)
    sync_batch_max_readings: int = 40_000
    sync_batch_max_age_s: float = 2.0  # a part-full batch waits at most this long
    sync_timeout_s: float = 30.0  # per request
    sync_backoff_base_s: float = 1.0  # first retry delay bound; doubles per failure...
    sync_backoff_max_s: float = 300.0  # ...up to this (full jitter: uniform in [0, bound])
    # Disk budget. A typical site (20 devices x 10 metrics every 10 s = 1.7M readings a day)
    # fills the unsynced cap in ~12 days offline; DuckDB keeps ~8 MB per million readings
    # (measured, random-walk values), so the cap is ~160 MB of SD card.
    synced_retention_h: float = 168.0  # synced readings are kept this long (0 = forever)
    unsynced_cap_readings: int = 20_000_000  # then the oldest unsynced are dropped (0 = no cap)
    budget_every_s: float = 10.0  # how often retention and the cap are enforced
    lockout: LockoutConfig = field(default_factory=LockoutConfig)
    device_types: dict[str, DeviceTypeSpec] = field(default_factory=dict)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.duckdb"

    @property
    def budget(self) -> DiskBudget:
        return DiskBudget(
            synced_retention_s=self.synced_retention_h * 3600 if self.synced_retention_h else None,
            unsynced_cap=self.unsynced_cap_readings or None,
            every_s=self.budget_every_s,
        )

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"


_AT_LEAST = {
    "mqtt_max_connections": 1,
    "http_max_connections": 1,
    "max_connections_per_address": 1,
    "fd_reserve": 0,
    "commit_delay_us": 0,
    "commit_siblings": 1,
}


def load_config(data_dir: Path, **overrides: Any) -> GatewayConfig:
    """Defaults, then `gateway.toml` in the data dir, then non-None overrides (CLI flags)."""
    cfg = GatewayConfig(data_dir=data_dir)
    toml_path = data_dir / "gateway.toml"
    if toml_path.exists():
        try:
            raw = tomllib.loads(toml_path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{toml_path}: {exc}") from exc
        cfg = _apply_toml(cfg, raw, toml_path)
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    for name, least in _AT_LEAST.items():
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{name} must be a whole number of at least {least}, not {value!r}")
    _check_tls(cfg)
    if cfg.broker_url is not None:
        parts = urlsplit(cfg.broker_url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ConfigError(
                f"--broker must look like mqtt://user:pass@host:1883, not {cfg.broker_url!r}"
            )
    return cfg


def _check_tls(cfg: GatewayConfig) -> None:
    for name in ("mqtts_port", "https_port"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
            raise ConfigError(f"{name} must be a port number (0 = off), not {value!r}")
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        raise ConfigError("tls_cert_file and tls_key_file go together: set both or neither")
    if not cfg.plain_mqtt and not cfg.mqtts_port and cfg.broker_url is None:
        raise ConfigError("plain_mqtt = false needs mqtts_port: devices would have no MQTT port")
    if not cfg.plain_http and not cfg.https_port:
        raise ConfigError("plain_http = false needs https_port: no HTTP port would be left")


def _apply_toml(cfg: GatewayConfig, raw: dict[str, Any], path: Path) -> GatewayConfig:
    known = {f.name for f in fields(GatewayConfig)} - {"data_dir", "lockout", "device_types"}
    gw = raw.get("gateway", {})
    unknown = set(gw) - known
    if unknown:
        raise ConfigError(f"{path}: unknown [gateway] settings: {', '.join(sorted(unknown))}")
    updates: dict[str, Any] = dict(gw)
    if "lockout" in raw:
        try:
            updates["lockout"] = LockoutConfig(**raw["lockout"])
        except TypeError as exc:
            raise ConfigError(f"{path}: [lockout]: {exc}") from exc
    types: dict[str, DeviceTypeSpec] = {}
    for name, body in raw.get("device_types", {}).items():
        try:
            types[name] = device_type_from_dict({"name": name, **body})
        except ValueError as exc:
            raise ConfigError(f"{path}: [device_types.{name}]: {exc}") from exc
    if types:
        updates["device_types"] = types
    return replace(cfg, **updates)
