"""`iotsphere demo`: a cloud, a gateway enrolled with it (with its managed Mosquitto), a few
simulated sensors (MQTT, and CoAP at half the rate) and a rule.

Everything runs on this machine with embedded defaults; the data lives in the data dir
(`cloud/`, `gateway/`), so a second run continues where the first stopped. Ctrl-C stops
everything cleanly: sensors first, then the gateway, then the cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common.cli import CliError, add_common_args, data_dir_of, port_number
from common.tokens import new_cli_token
from edge.app.config import ConfigError, GatewayConfig, load_config

if TYPE_CHECKING:
    from edge.app.gateway import Gateway
    from firmware_stubs.mqtt_sim import DeviceCredentials

log = logging.getLogger("iotsphere.demo")
DEMO_DEVICES = ("demo-sensor-1", "demo-sensor-2", "demo-sensor-3")
DEMO_COAP_DEVICES = ("demo-coap-1", "demo-coap-2")  # POST /api/v1/{token}/telemetry


def register(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument(
        "--mqtt-port", type=port_number, default=1883, help="device MQTT port (1883)"
    )
    parser.add_argument("--port", type=port_number, default=8000, help="cloud HTTP port (8000)")
    parser.add_argument(
        "--coap-port",
        type=port_number,
        default=5683,
        help="device CoAP port, UDP (5683; 0 = any free port)",
    )
    parser.add_argument(
        "--http-port",
        type=port_number,
        default=8080,
        help="gateway HTTP port: device ingress and the local status page (8080; 0 = any free)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per sensor (1)")
    parser.add_argument(
        "--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)"
    )
    parser.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge.app.demo_cloud import enroll_once, start_cloud, stop_cloud
    from edge.security.local_password import PasswordError

    base = data_dir_of(args)
    cloud_dir, gateway_dir = base / "cloud", base / "gateway"
    try:
        cfg = load_config(
            gateway_dir,
            mqtt_port=args.mqtt_port,
            coap_port=args.coap_port,
            http_port=args.http_port,
            mqtts_port=0,  # all on this machine: no TLS ports (they would collide between demos)
            https_port=0,
            bind="127.0.0.1",
        )
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc
    proc, url = start_cloud(cloud_dir, args.port)
    try:
        enroll_once(cloud_dir, gateway_dir, url)
        print(
            f"IoTSphere cloud on {url} (API: {url}/openapi.json); log in as "
            f"admin@demo.local with the password in {base / 'demo-login.txt'}",
            file=sys.stderr,
        )
        try:
            status_login = _status_page_password(base, gateway_dir)
        except (PasswordError, OSError) as exc:
            raise CliError(f"demo: the status page password could not be set: {exc}") from exc
        asyncio.run(_demo(cfg, args.rate, args.seconds, status_login))
    finally:
        stop_cloud(proc)
    return 0


def _status_page_password(base: Path, gateway_dir: Path) -> Path:
    """The gateway's local status page password: generated on the first run (as an installer
    would set one with `iotsphere gateway password set`), kept beside the cloud login."""
    from edge.security.local_password import load_hash, set_password  # (raises PasswordError)

    path = base / "gateway-status-login.txt"
    if load_hash(gateway_dir) is None or not path.exists():
        password = new_cli_token(12)
        set_password(gateway_dir, password)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
    return path


async def _demo(cfg: GatewayConfig, rate: float, seconds: float, status_login: Path) -> None:
    # Imported here: `iotsphere gateway ...` must not pay for the whole gateway at start-up.
    from edge.app.gateway import Gateway
    from firmware_stubs.coap_sim import CoapSimConfig, run_coap_simulation
    from firmware_stubs.mqtt_sim import SimConfig, run_simulation

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if seconds:
        loop.call_later(seconds, stop.set)
    gateway = Gateway(cfg)
    gateway_stop = asyncio.Event()  # set only after the sensors stopped: they drain first
    run = asyncio.create_task(gateway.run(gateway_stop))
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({run, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run.done():
        run.result()
        return
    creds = await _provision(gateway, DEMO_DEVICES)
    coap_creds = await _provision(gateway, DEMO_COAP_DEVICES)
    rules = await gateway.list_rules()
    if not rules:
        await gateway.add_rule(
            {
                "name": "hot",
                "metric": "temperature",
                "operator": ">",
                "threshold": 30,
                "hysteresis": 1,
                "severity": "warning",
            }
        )
    print(
        f"IoTSphere gateway demo: MQTT on 127.0.0.1:{gateway.mqtt_port}, CoAP on "
        f"127.0.0.1:{gateway.coap_port} (UDP), data in {cfg.data_dir}\n"
        f"  local status page: http://127.0.0.1:{gateway.http_port}/ (password in "
        f"{status_login})\n"
        f"  sensors: {', '.join(DEMO_DEVICES)} (MQTT), {', '.join(DEMO_COAP_DEVICES)} (CoAP)\n"
        f"  try: iotsphere gateway status --data-dir {cfg.data_dir}\n"
        f"       iotsphere gateway readings --data-dir {cfg.data_dir}\n"
        "  Ctrl-C stops everything.",
        file=sys.stderr,
    )
    sim = asyncio.create_task(
        run_simulation(
            SimConfig(devices=creds, port=gateway.mqtt_port, rate=rate, count=0), stop=stop
        )
    )
    assert gateway.coap_port is not None
    coap_sim = asyncio.create_task(
        run_coap_simulation(
            CoapSimConfig(devices=coap_creds, port=gateway.coap_port, rate=rate / 2, count=0),
            stop=stop,
        )
    )
    reporter = asyncio.create_task(_report(gateway, stop))
    await asyncio.wait({run, sim, coap_sim}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    stats = await sim
    coap_stats = await coap_sim
    gateway_stop.set()
    await run
    coap_summary = coap_stats.to_dict()
    coap_summary.pop("latency_ms", None)
    print(
        json.dumps(
            {
                "simulator": dataclasses.asdict(stats),
                "coap_simulator": {"device_ids": list(DEMO_COAP_DEVICES), **coap_summary},
            },
            default=str,
        )
    )


async def _provision(
    gateway: Gateway, device_ids: tuple[str, ...]
) -> tuple[DeviceCredentials, ...]:
    """Demo devices get fresh tokens each run (revoke + add), as an installer would rotate."""
    existing = {d["device_id"]: d for d in await gateway.list_devices()}
    from firmware_stubs.mqtt_sim import DeviceCredentials

    creds = []
    for device_id in device_ids:
        if existing.get(device_id, {}).get("status") == "active":
            await gateway.revoke_device(device_id)
        added = await gateway.add_device(device_id, None)
        creds.append(DeviceCredentials(device_id, added["token"]))
    return tuple(creds)


async def _report(gateway: Gateway, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)
        status = await gateway.status()
        print(
            f"readings stored: {status['readings_stored']}, not yet in the cloud: "
            f"{status['sync'].get('backlog_readings')}, active alerts: "
            f"{status['active_alerts']}, rejected: {status['rejections']}, CoAP requests "
            f"accepted: {(status.get('coap') or {}).get('accepted')}",
            file=sys.stderr,
        )
