"""The worker processes of the MQTT ingest benchmark, each run as `bench/ingest_mqtt.py MODE ...`
(its hidden modes) so that it does not share an interpreter with the measuring loop: `_sim`
(firmware_stubs.mqtt_sim's devices), `_raw` (bench.mqtt_loadgen's lean devices) and `_sub` (a
bare subscriber that only counts, for the ceiling). Each prints JSON lines on stdout."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "ingest_mqtt.py"
PROGRESS_EVERY_S = 0.25  # the bare subscriber's count period


def worker_argv(mode: str, *args: str) -> list[str]:
    """The command line of a worker: the benchmark script re-run in one of its hidden modes."""
    return [sys.executable, str(SCRIPT), mode, *args]


def sim_main(argv: Sequence[str]) -> int:
    """Simulated devices for `seconds`, then stop and print SimStats as one JSON line."""
    import asyncio
    import logging

    from firmware_stubs.mqtt_sim import SimConfig, load_credentials, run_simulation

    p = argparse.ArgumentParser(prog="ingest_mqtt.py _sim")
    p.add_argument("--credentials", type=Path, required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)  # per device
    p.add_argument("--metrics", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--saturate", action="store_true")  # closed loop: as fast as PUBACKs return
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    devices = load_credentials(args.credentials)[args.first : args.first + args.count]
    config = SimConfig(
        devices=devices,
        port=args.port,
        rate=args.rate,
        count=0,  # until stopped
        qos=1,
        metrics=tuple(f"m{i}" for i in range(args.metrics)),
        # At full speed the sampler outruns the connection; a small buffer bounds memory
        # (the oldest unsent messages are dropped and counted, as firmware would).
        buffer_limit=1_000,
        drain_timeout=2.0,
        seed=args.seed,
        saturate=args.saturate,
    )

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.call_later(args.seconds, stop.set)
        stats = await run_simulation(config, stop=stop)
        return stats.to_dict()

    result = asyncio.run(run())
    result.pop("refused_devices", None)
    print(json.dumps(result), flush=True)
    return 0


def raw_main(argv: Sequence[str]) -> int:
    """bench.mqtt_loadgen's devices for `seconds` (or until SIGTERM); prints one JSON line."""
    import asyncio

    from bench.mqtt_loadgen import run_fleet

    p = argparse.ArgumentParser(prog="ingest_mqtt.py _raw")
    for name in ("--first", "--count", "--port", "--metrics", "--window"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--credentials", type=Path, required=True)
    p.add_argument("--rate", type=float, required=True)  # per device; 0 = saturate
    p.add_argument("--seconds", type=float, required=True)
    args = p.parse_args(argv)
    devices = json.loads(args.credentials.read_text())[args.first : args.first + args.count]

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        return await run_fleet(
            devices, args.port, window=args.window, rate=args.rate or None,
            metrics=args.metrics, seconds=args.seconds, stop=stop,
        )  # fmt: skip

    print(json.dumps(asyncio.run(run())), flush=True)
    return 0


def sub_main(argv: Sequence[str]) -> int:
    """A subscriber that does nothing but count; prints {"t", "n"} every PROGRESS_EVERY_S."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    p = argparse.ArgumentParser(prog="ingest_mqtt.py _sub")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    received = 0
    subscribed = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe("devices/+/telemetry", qos=1)

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    def on_message(*_: Any) -> None:
        nonlocal received
        received += 1  # paho sends the PUBACK itself when this returns

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-bare-sub", protocol=mqtt.MQTTv5
    )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = 2000  # the gateway's ingress asks for the same window
    client.connect("127.0.0.1", args.port, clean_start=True, properties=props)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            print(json.dumps({"error": "no SUBACK within 10 s"}), flush=True)
            return 1
        print(json.dumps({"ready": True}), flush=True)
        while True:
            print(json.dumps({"t": time.monotonic(), "n": received}), flush=True)
            time.sleep(PROGRESS_EVERY_S)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        client.loop_stop()


WORKERS: dict[str, Callable[[Sequence[str]], int]] = {
    "_sim": sim_main,
    "_raw": raw_main,
    "_sub": sub_main,
}
