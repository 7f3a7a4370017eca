"""Simulated MQTT sensors that behave like real firmware, many devices in one process:
run_simulation runs a fleet of MqttDevice (firmware_stubs.mqtt_device) until each has sent its
messages, gave up on refused credentials, or a stop is asked for, and sums up what they did.
The protocol-neutral parts the CoAP and HTTP simulators share live beside it, pure:
credentials (firmware_stubs.credentials), telemetry (firmware_stubs.telemetry) and redelivery
(firmware_stubs.redelivery); the run's configuration and report are in
firmware_stubs.mqtt_sim_config. Every name is re-exported here."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

from firmware_stubs.credentials import (
    DeviceCredentials,
    SimConfigError,
    SimError,
    load_credentials,
    parse_credentials,
)
from firmware_stubs.mqtt_device import (
    CREDENTIAL_REFUSALS,
    AckedLog,
    MqttDevice,
    SimCounters,
    is_credential_refusal,
    log,
)
from firmware_stubs.mqtt_sim_config import METRIC_NAME, SimConfig, SimStats
from firmware_stubs.redelivery import Backoff, Outbox
from firmware_stubs.telemetry import OutgoingMessage, RandomWalk, TelemetryGenerator

__all__ = [  # the ones not defined here come from the modules beside this one
    "CREDENTIAL_REFUSALS",
    "METRIC_NAME",
    "AckedLog",
    "Backoff",
    "DeviceCredentials",
    "Outbox",
    "OutgoingMessage",
    "RandomWalk",
    "SimConfig",
    "SimConfigError",
    "SimError",
    "SimStats",
    "TelemetryGenerator",
    "is_credential_refusal",
    "load_credentials",
    "parse_credentials",
    "run_simulation",
]


@contextlib.contextmanager
def _opened_log(path: Path | None) -> Iterator[AckedLog | None]:
    acked_log = AckedLog(path) if path is not None else None
    try:
        yield acked_log
    finally:
        if acked_log is not None:
            acked_log.close()


async def run_simulation(config: SimConfig, *, stop: asyncio.Event | None = None) -> SimStats:
    """Run every configured device until each has its `count` messages acknowledged (QoS 1)
    or sent (QoS 0), or gave up on refused credentials, or `stop` is set. On stop, devices
    stop sampling and get `drain_timeout` seconds for in-flight acknowledgements."""
    stop = stop if stop is not None else asyncio.Event()
    counters = SimCounters()
    master = random.Random(config.seed)
    started = config.clock.monotonic()
    with _opened_log(config.acked_log) as acked_log:
        devices = [
            MqttDevice(creds, config, random.Random(master.getrandbits(64)), counters, acked_log)
            for creds in config.devices
        ]
        tasks = [asyncio.create_task(d.run(), name=f"sim-{d.device_id}") for d in devices]
        stop_waiter = asyncio.create_task(stop.wait())
        try:
            pending: set[asyncio.Task[None]] = set(tasks)
            while pending and not stop.is_set():
                done, _ = await asyncio.wait(
                    {*pending, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done - {stop_waiter}:
                    pending.discard(task)
                    task.result()  # an unexpected failure (a bug, a full disk) is not hidden
            if pending:
                log.info("stop requested; draining in-flight messages")
                for device in devices:
                    device.request_stop()
                await asyncio.wait(pending, timeout=config.drain_timeout)
        finally:
            for task in [*tasks, stop_waiter]:
                task.cancel()
            results = await asyncio.gather(*tasks, stop_waiter, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result
    return SimStats(
        devices=len(config.devices),
        sent=counters.sent,
        acked=counters.acked,
        refused=len(counters.refused_devices),
        reconnects=counters.reconnects,
        errors=counters.errors,
        resent=counters.resent,
        dropped=counters.dropped,
        unacked=counters.unacked,
        elapsed_s=config.clock.monotonic() - started,
        refused_devices=tuple(counters.refused_devices),
    )
