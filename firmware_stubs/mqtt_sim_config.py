"""What one MQTT simulation run is given and what it reports: SimConfig (devices, broker,
rate, QoS, the fault switches and the delivery limits, validated on construction, every
problem named at once) and SimStats (what the run did, as `iotsphere sim mqtt` prints it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.clock import Clock, SystemClock
from firmware_stubs.credentials import DeviceCredentials, SimConfigError

METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulation run needs; validated on construction."""

    devices: tuple[DeviceCredentials, ...]
    host: str = "127.0.0.1"
    port: int = 1883
    rate: float = 1.0  # messages per second per device
    count: int = 10  # messages per device; 0 = until stopped
    qos: int = 1
    protocol: int = 5  # MQTT 5 or 311 (3.1.1)
    metrics: tuple[str, ...] = ("temperature", "humidity")
    malformed_every: int = 0  # every K-th message (by seq) is broken JSON; 0 = never
    wrong_password: bool = False  # connect with a wrong token, to exercise refusal
    no_clock: bool = False  # flat objects without ts/seq, like a device without a clock
    # Closed loop for benchmarks: sample only while fewer than max_inflight messages await
    # their PUBACK, so "as fast as possible" measures the broker path, not a generator that
    # burns CPU producing messages it must drop.
    saturate: bool = False
    acked_log: Path | None = None  # "device_id seq ts_ms" appended per PUBACKed message
    max_inflight: int = 20  # QoS 1 messages awaiting PUBACK per connection (paho's default)
    buffer_limit: int = 10_000  # unacked messages kept per device; oldest dropped beyond
    ack_timeout: float = 30.0  # no PUBACK within this: the connection is treated as dead
    connect_timeout: float = 10.0
    keepalive: int = 30
    backoff_initial: float = 0.5  # first reconnect delay (before jitter), seconds
    backoff_max: float = 30.0
    refused_attempts: int = 3  # credential refusals in a row before a device gives up
    drain_timeout: float = 5.0  # on stop: how long in-flight messages may still be acked
    seed: int | None = None  # for reproducible values and jitter
    clock: Clock = field(default_factory=SystemClock, compare=False)

    def __post_init__(self) -> None:  # noqa: PLR0912 - one check per configuration field
        problems: list[str] = []
        if not self.devices:
            problems.append("no devices")
        if len({d.device_id for d in self.devices}) != len(self.devices):
            problems.append("duplicate device ids")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} out of range")
        if not self.rate > 0:
            problems.append("rate must be > 0")
        if self.count < 0:
            problems.append("count must be >= 0")
        if self.qos not in (0, 1):
            problems.append("qos must be 0 or 1")
        if self.protocol not in (5, 311):
            problems.append("protocol must be 5 or 311")
        if not self.metrics:
            problems.append("at least one metric is needed")
        bad = [m for m in self.metrics if not METRIC_NAME.fullmatch(m)]
        if bad:
            problems.append(f"invalid metric names {bad} (allowed: [A-Za-z0-9_.-]{{1,64}})")
        if len(set(self.metrics)) != len(self.metrics):
            problems.append("duplicate metric names")
        if self.malformed_every < 0:
            problems.append("malformed_every must be >= 0")
        for name in ("max_inflight", "buffer_limit", "refused_attempts", "keepalive"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        for name in ("ack_timeout", "connect_timeout", "backoff_initial", "backoff_max"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0")
        if self.drain_timeout < 0:
            problems.append("drain_timeout must be >= 0")
        if problems:
            raise SimConfigError("; ".join(problems))


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True, slots=True)
class SimStats:
    """What a run did. `sent` counts distinct messages published at least once."""

    devices: int
    sent: int
    acked: int  # QoS 1 messages the broker PUBACKed (QoS 0 has no acknowledgement)
    refused: int  # devices that gave up because their credentials were refused
    reconnects: int  # connections re-established after a loss
    errors: int  # failed connection attempts, lost connections, publish timeouts
    resent: int  # extra publishes of unacknowledged messages after reconnecting
    dropped: int  # messages discarded because a device's buffer was full
    unacked: int  # messages generated but never acknowledged (or, QoS 0, never sent)
    elapsed_s: float
    refused_devices: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "refused": self.refused,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "resent": self.resent,
            "dropped": self.dropped,
            "unacked": self.unacked,
            "devices": self.devices,
            "elapsed_s": round(self.elapsed_s, 3),
            "refused_devices": list(self.refused_devices),
        }
