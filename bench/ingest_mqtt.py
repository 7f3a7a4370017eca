"""MQTT ingest benchmark: simulated devices -> managed Mosquitto -> gateway -> DuckDB.

    .venv/bin/python bench/ingest_mqtt.py [--devices N] [--rate R] [--seconds S]

Three phases, each with fresh processes, everything on 127.0.0.1 and free ports:

  A  ceiling    a plain Mosquitto (same binary, minimal config) and a bare subscriber that
                only counts what it receives on devices/+/telemetry at QoS 1, driven at full
                speed by the simulator: the msgs/s this machine can move without the gateway.
  B  saturated  the gateway as a subprocess (`iotsphere gateway run`), the same simulator at
                full speed: readings/s committed to DuckDB (delta of readings_stored over the
                steady window), gateway CPU and peak RSS, its Mosquitto separately.
  C  latency    the gateway at a fixed total rate (--rate, default 10,000 readings/s, in
                messages of --metrics readings as in B): p50/p99 publish-to-commit from the
                gateway's ingest_lag (commit time minus the reading's device ts).

The load generator is firmware_stubs.mqtt_sim.run_simulation in worker subprocesses (this
file re-run with a hidden `_sim` argument), so it does not share an interpreter with the
measuring loop. Targets are printed as met / missed for information only; this is a
measurement, not a test, and always exits 0 when the measurement itself worked.
Output: human lines, then one final JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.support import BenchError, log_tail, run_benchmark, stop_process  # noqa: E402
from edge.admin.backend import admin_secret, running_gateway_url  # noqa: E402
from edge.ingest.mqtt.broker import MOSQUITTO, free_port  # noqa: E402

# The targets for this 2-core machine, broker and load generator included, for the
# common sensor: one reading per QoS 1 message, 10 devices.
TARGET_READINGS_PER_S = 25_000
TARGET_CPU_US_PER_READING = 20.0  # gateway + its Mosquitto
TARGET_P99_MS = 100  # publish -> PUBACK, which the front writes when the commit returns
TARGET_LATENCY_RATE = 10_000
TARGET_RSS_MB = 150
TARGET_CEILING_SHARE = 0.60

FULL_SPEED_TOTAL_RATE = 100_000.0  # offered msgs/s in A and B: far above what one host sends
SAMPLE_EVERY_S = 0.25  # RSS sampling and subscriber progress period
LAG_SAMPLE_EVERY_S = 2.0  # ingest_lag covers the last 20k commits: ~2 s at 10k/s
SIM_GRACE_S = 120.0  # sims outlive their phase by at most this if the bench stalls


# --------------------------------------------------------------------------- workers
# Run in subprocesses: `ingest_mqtt.py _sim ...` and `ingest_mqtt.py _sub ...`.


def _worker_sim(argv: Sequence[str]) -> int:
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


def _worker_raw(argv: Sequence[str]) -> int:
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


def _worker_sub(argv: Sequence[str]) -> int:
    """A subscriber that does nothing but count; prints {"t", "n"} every SAMPLE_EVERY_S."""
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
            time.sleep(SAMPLE_EVERY_S)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        client.loop_stop()


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """A started subprocess; stdout JSON lines (if piped) are collected by a thread."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def collect(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def read() -> None:
            for raw in stdout:
                with suppress(ValueError):
                    self.lines.append(json.loads(raw))

        self._reader = threading.Thread(target=read, name=f"read-{self.name}", daemon=True)
        self._reader.start()

    def last(self, key: str) -> dict[str, Any] | None:
        for line in reversed(self.lines):
            if key in line:
                found: dict[str, Any] = line
                return found
        return None

    def log_tail(self, n: int = 15) -> str:
        return log_tail(self.log, n)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        stop_process(self.proc, timeout_s)
        if self._reader is not None:
            self._reader.join(2)


class Processes:
    """Every child this run started; `stop_all` (also on Ctrl-C) ends them newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, name: str, argv: list[str], *, pipe: bool = False) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else err,
                stderr=err,
                cwd=ROOT,
                # Own session: a Ctrl-C reaches only us, and we stop children in order
                # (the gateway must stop before its broker, sims before the gateway).
                start_new_session=True,
            )
        child = Child(name, proc, log)
        if pipe:
            child.collect()
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        while self.children:
            self.children.pop().stop()


def _self(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), mode, *args]


def _wait_for(what: str, check: Callable[[], bool], child: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not child.alive():
            raise BenchError(
                f"{child.name} exited with {child.proc.returncode} before {what}:\n"
                f"{child.log_tail()}"
            )
        time.sleep(0.05)
    raise BenchError(f"{child.name}: no {what} within {timeout_s:.0f} s:\n{child.log_tail()}")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- measuring


@dataclass
class ResourceWatch:
    """Peak RSS per watched process, sampled in a thread; CPU from cpu_times deltas."""

    procs: dict[str, psutil.Process] = field(default_factory=dict)
    start_rss: dict[str, int] = field(default_factory=dict)  # before the load starts
    peak_rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int, *, baseline: bool = False) -> None:
        """baseline: record the RSS now, for a process that is up and idle (not a sim)."""
        self.procs[name] = psutil.Process(pid)
        self.peak_rss.setdefault(name, 0)
        if baseline:
            with suppress(psutil.Error):
                self.start_rss[name] = self.procs[name].memory_info().rss

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(SAMPLE_EVERY_S):
                self.sample()

        self._thread = threading.Thread(target=run, name="rss", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for name, proc in list(self.procs.items()):
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            self.peak_rss[name] = max(self.peak_rss[name], rss)

    def cpu_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            out[name] = t.user + t.system
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


@dataclass(frozen=True)
class CpuMark:
    at: float
    procs: dict[str, float]
    host_busy: float  # host CPU seconds not idle, all cores
    host_total: float


def _cpu_mark(watch: ResourceWatch) -> CpuMark:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return CpuMark(time.monotonic(), watch.cpu_seconds(), total - idle, total)


def _cpu_report(start: CpuMark, end: CpuMark) -> dict[str, Any]:
    wall = end.at - start.at
    procs = {
        name: round(100 * (end.procs[name] - start.procs[name]) / wall, 1)
        for name in start.procs
        if name in end.procs
    }
    cores = os.cpu_count() or 1
    host = 100 * (end.host_busy - start.host_busy) / max(end.host_total - start.host_total, 1e-9)
    # Whatever else ran on the host meanwhile (the measuring process included): figures
    # taken on a shared machine are only comparable when this is near 0.
    others = max(0.0, host * cores - sum(procs.values()))
    return {
        "process_percent": procs,
        "other_processes_percent": round(others, 1),
        "host_busy_percent": round(host, 1),
        "cores": cores,
    }


class GatewayStatus:
    """`iotsphere gateway status` without a new interpreter per poll: its admin API."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._client: httpx.Client | None = None
        self.last_delay = 0.0  # seconds the last answer took

    def _connect(self) -> httpx.Client | None:
        if self._client is None:
            url = running_gateway_url(self._data_dir / "run")
            if url is None:
                return None
            self._client = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {admin_secret(self._data_dir)}"},
                timeout=120.0,
            )
        return self._client

    def get(self) -> tuple[float, dict[str, Any]] | None:
        """(monotonic time of the answer, status), or None while the API is not up."""
        client = self._connect()
        if client is None:
            return None
        # The status query queues behind the readings in the store's mailbox: under load the
        # answer can take seconds. Its counts are read when the store gets to it, i.e. just
        # before the answer, so the answer's arrival time is the time of the figures.
        asked = time.monotonic()
        try:
            resp = client.get("/admin/status")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        doc: dict[str, Any] = resp.json()
        answered = time.monotonic()
        self.last_delay = answered - asked
        return answered, doc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _mb(n: int) -> float:
    return round(n / 1e6, 1)


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Settings:
    devices: int
    rate: float  # phase C, readings/s in total
    seconds: float  # per phase, warm-up included
    warmup: float
    metrics: int  # readings per message in phases A and B
    sim_procs: int
    phases: str
    keep: bool
    generator: str = "raw"  # "raw" (bench.mqtt_loadgen) or "sim" (firmware_stubs.mqtt_sim)
    inflight: int = 20  # raw generator: unacknowledged messages per device (paho's default)

    @property
    def window(self) -> float:
        return self.seconds - self.warmup


def _provision(data_dir: Path, n: int) -> Path:
    """A fresh gateway data dir with n devices; returns the credentials file for the sims.

    Same code path as `iotsphere gateway device add` on a stopped gateway (edge.admin.ops on the
    store), in-process: a CLI run per device would cost ~0.7 s each.
    """
    from edge.admin import ops
    from edge.app.config import load_config
    from edge.storage.store import GatewayStore

    data_dir.mkdir(parents=True)
    # The whole fleet connects from 127.0.0.1 at once; the default per-address lockout is
    # sized for a LAN, not for a load generator on loopback.
    (data_dir / "gateway.toml").write_text("[lockout]\nmax_failures_per_address = 100000\n")
    cfg = load_config(data_dir)
    store = GatewayStore(cfg.db_path, memory_limit=cfg.duckdb_memory_limit, threads=1)
    try:
        creds = [ops.add_device(store, f"bench-{i:04d}", None) for i in range(n)]
    finally:
        store.close()
    path = data_dir / "credentials.json"
    path.write_text(json.dumps([{"device_id": c["device_id"], "token": c["token"]} for c in creds]))
    return path


def _credentials_for_plain_broker(workdir: Path, n: int) -> Path:
    # The plain broker allows anonymous clients and ignores the password.
    path = workdir / "plain-credentials.json"
    path.write_text(
        json.dumps([{"device_id": f"bench-{i:04d}", "token": "unused"} for i in range(n)])
    )
    return path


def _start_sims(
    procs: Processes,
    tag: str,
    creds: Path,
    port: int,
    s: Settings,
    total_rate: float,
    metrics: int,
) -> list[Child]:
    """s.devices devices split over s.sim_procs processes, total_rate msgs/s offered."""
    per_device = total_rate / s.devices
    sims: list[Child] = []
    workers = min(s.sim_procs, s.devices)
    first = 0
    saturate = total_rate >= FULL_SPEED_TOTAL_RATE
    for w in range(workers):
        count = s.devices // workers + (1 if w < s.devices % workers else 0)
        if s.generator == "raw":
            argv = _self(
                "_raw",
                "--credentials", str(creds), "--first", str(first), "--count", str(count),
                "--port", str(port), "--rate", str(0 if saturate else per_device),
                "--metrics", str(metrics), "--window", str(s.inflight),
                "--seconds", str(s.seconds + SIM_GRACE_S),
            )  # fmt: skip
            sims.append(procs.start(f"{tag}-sim{w}", argv, pipe=True))
            first += count
            continue
        argv = _self(
            "_sim",
            "--credentials", str(creds),
            "--first", str(first),
            "--count", str(count),
            "--port", str(port),
            "--rate", str(per_device),
            "--metrics", str(metrics),
            # A safety stop only: the phase stops them (SIGTERM) once measured, so a slow
            # status answer at the end of the window still sees the gateway under load.
            "--seconds", str(s.seconds + SIM_GRACE_S),
            "--seed", str(w),
            *(["--saturate"] if saturate else []),
        )  # fmt: skip
        sims.append(procs.start(f"{tag}-sim{w}", argv, pipe=True))
        first += count
    return sims


def _sim_totals(sims: list[Child]) -> dict[str, Any]:
    """Stop every sim worker (they drain in-flight messages) and add up their stats."""
    for sim in sims:
        if sim.alive():
            sim.proc.send_signal(signal.SIGTERM)
    for sim in sims:
        sim.stop()
    totals: dict[str, Any] = {}
    for sim in sims:
        line = sim.last("sent")
        if line is None:
            raise BenchError(f"{sim.name} printed no stats:\n{sim.log_tail()}")
        for key, value in line.items():
            if key.endswith("_ms"):  # percentiles do not add up: the worst worker's
                totals[key] = max(totals.get(key) or 0, value or 0)
            elif isinstance(value, int | float):
                totals[key] = totals.get(key, 0) + value
    elapsed = max((sim.last("sent") or {}).get("elapsed_s", 0.0) for sim in sims)
    totals["elapsed_s"] = elapsed
    totals["acked_per_s"] = round(totals.get("acked", 0) / elapsed) if elapsed else None
    return totals


# --------------------------------------------------------------------------- phases


def phase_ceiling(s: Settings, procs: Processes, workdir: Path) -> dict[str, Any]:
    broker_dir = workdir / "plain-broker"
    broker_dir.mkdir()
    port = free_port()
    conf = broker_dir / "mosquitto.conf"
    # Same binary and the same queue/in-flight limits as the gateway's broker, no auth plugin.
    conf.write_text(
        "\n".join(
            [
                "per_listener_settings false",
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 1000000",
                "max_inflight_messages 1000",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "",
            ]
        )
    )
    broker = procs.start("A-mosquitto", [MOSQUITTO, "-c", str(conf)])
    _wait_for("listening port", lambda: _port_open(port), broker, 10)
    sub = procs.start("A-subscriber", _self("_sub", "--port", str(port)), pipe=True)
    _wait_for("SUBACK", lambda: sub.last("ready") is not None, sub, 15)

    watch = ResourceWatch()
    watch.watch("mosquitto", broker.proc.pid, baseline=True)
    watch.watch("subscriber", sub.proc.pid, baseline=True)
    creds = _credentials_for_plain_broker(workdir, s.devices)
    sims = _start_sims(procs, "A", creds, port, s, FULL_SPEED_TOTAL_RATE, s.metrics)
    for sim in sims:
        watch.watch(sim.name.split("-", 1)[1], sim.proc.pid)
    watch.start()
    t0 = time.monotonic()
    _sleep_until(t0 + s.warmup)
    a, cpu_a = sub.last("n"), _cpu_mark(watch)
    _sleep_until(t0 + s.seconds - 0.1)
    b, cpu_b = sub.last("n"), _cpu_mark(watch)
    watch.stop()
    sim_stats = _sim_totals(sims)
    if a is None or b is None or b["t"] <= a["t"]:
        raise BenchError(f"the bare subscriber reported no progress:\n{sub.log_tail()}")
    msgs_per_s = (b["n"] - a["n"]) / (b["t"] - a["t"])
    return {
        "msgs_per_s": round(msgs_per_s),
        # What a plain Mosquitto PUBACKs (in memory, before any disk): the peer for the
        # gateway's durable PUBACK rate. The bare subscriber limits msgs_per_s, not this.
        "puback_msgs_per_s": sim_stats.get("acked_per_s"),
        "readings_per_message": s.metrics,
        "window_s": round(b["t"] - a["t"], 2),
        "received_total": (sub.last("n") or {}).get("n"),
        "cpu": _cpu_report(cpu_a, cpu_b),
        "peak_rss_mb": {k: _mb(v) for k, v in watch.peak_rss.items()},
        "start_rss_mb": {k: _mb(v) for k, v in watch.start_rss.items()},
        "sim": sim_stats,
    }


@contextmanager
def _gateway(
    procs: Processes, workdir: Path, tag: str, s: Settings
) -> Iterator[tuple[Child, GatewayStatus, int, Path]]:
    data_dir = workdir / f"{tag}-gateway"
    creds = _provision(data_dir, s.devices)
    mqtt_port = free_port()
    argv = [
        sys.executable, "-m", "common.cli", "gateway", "run",
        "--data-dir", str(data_dir),
        "--bind", "127.0.0.1",
        "--mqtt-port", str(mqtt_port),
        "--http-port", str(free_port()),
        "--coap-port", str(free_port()),
    ]  # fmt: skip
    gw = procs.start(f"{tag}-gateway", argv)
    status = GatewayStatus(data_dir)
    try:
        _wait_for("admin API", lambda: status.get() is not None, gw, 30)
        _wait_for("MQTT front", lambda: _port_open(mqtt_port), gw, 10)
        yield gw, status, mqtt_port, creds
    finally:
        status.close()
        gw.stop(30)  # SIGTERM: the gateway flushes the store and stops its broker


def _gateway_run(
    s: Settings, procs: Processes, workdir: Path, tag: str, total_rate: float, metrics: int
) -> dict[str, Any]:
    with _gateway(procs, workdir, tag, s) as (gw, status, mqtt_port, creds):
        first = status.get()
        assert first is not None
        broker_pid = first[1]["broker"]["pid"]
        watch = ResourceWatch()
        watch.watch("gateway", gw.proc.pid, baseline=True)
        watch.watch("gateway_mosquitto", broker_pid, baseline=True)
        sims = _start_sims(procs, tag, creds, mqtt_port, s, total_rate, metrics)
        for sim in sims:
            watch.watch(sim.name.split("-", 1)[1], sim.proc.pid)
        watch.start()
        t0 = time.monotonic()
        _sleep_until(t0 + s.warmup)
        a, cpu_a = status.get(), _cpu_mark(watch)
        lag_samples: list[dict[str, Any]] = []
        next_lag = time.monotonic() + LAG_SAMPLE_EVERY_S
        while next_lag < t0 + s.seconds - 0.3:
            _sleep_until(next_lag)
            got = status.get()
            if got is not None:
                lag_samples.append(got[1]["ingest_lag"])
            next_lag += LAG_SAMPLE_EVERY_S
        _sleep_until(t0 + s.seconds - 0.1)
        b, cpu_b = status.get(), _cpu_mark(watch)
        watch.sample()
        watch.stop()
        sim_stats = _sim_totals(sims)
        if a is None or b is None:
            raise BenchError(f"the gateway's status did not answer:\n{gw.log_tail()}")
        (ta, sa), (tb, sb) = a, b
        dt = tb - ta
        stored = sb["readings_stored"] - sa["readings_stored"]
        ingress_b = sb.get("ingress") or {}
        # acked = committed messages: taken by the MQTT front itself (telemetry ends there)
        # or, with an external broker, by the ingress subscriber
        acked = _acked(sb) - _acked(sa)
        cpu = _cpu_report(cpu_a, cpu_b)
        ours = sum(cpu["process_percent"].get(k, 0.0) for k in ("gateway", "gateway_mosquitto"))
        p99s = [x["p99_ms"] for x in lag_samples if x.get("p99_ms") is not None]
        return {
            "readings_per_s": round(stored / dt),
            "msgs_per_s": round(acked / dt),
            "readings_per_message": metrics,
            "readings_per_message_measured": round(stored / acked, 3) if acked else None,
            "window_s": round(dt, 2),
            "ingest_lag_at_end": sb["ingest_lag"],
            "ingest_lag_p99_worst_ms": max(p99s) if p99s else None,
            # About what the broker had PUBACKed to the sims but not yet delivered to the
            # gateway (the sims' total includes the last moments before they stopped).
            "broker_backlog_at_end": sim_stats.get("acked", 0) - _received(sb),
            "status_answer_s": round(status.last_delay, 2),
            "store_mailbox_at_end": sb.get("store_mailbox"),
            "cpu": cpu,
            "cpu_us_per_reading": round(ours / 100 * dt / stored * 1e6, 1) if stored else None,
            "peak_rss_mb": {k: _mb(v) for k, v in watch.peak_rss.items()},
            "start_rss_mb": {k: _mb(v) for k, v in watch.start_rss.items()},
            "mqtt_front": sb.get("mqtt_front"),
            "ingress": ingress_b,
            "rejections": sb.get("rejections"),
            "sim": sim_stats,
        }


def _acked(status: dict[str, Any]) -> int:
    front = (status.get("mqtt_front") or {}).get("telemetry") or {}
    return int((status.get("ingress") or {}).get("acked", 0)) + int(front.get("acked", 0))


def _received(status: dict[str, Any]) -> int:
    front = (status.get("mqtt_front") or {}).get("telemetry") or {}
    return int((status.get("ingress") or {}).get("received", 0)) + int(front.get("telemetry", 0))


def phase_saturated(s: Settings, procs: Processes, workdir: Path) -> dict[str, Any]:
    return _gateway_run(s, procs, workdir, "B", FULL_SPEED_TOTAL_RATE, s.metrics)


def phase_latency(s: Settings, procs: Processes, workdir: Path) -> dict[str, Any]:
    # The same message shape as B (--metrics readings per message): the target is stated in
    # readings/s, and one reading per message would measure the load generator's ceiling.
    return _gateway_run(s, procs, workdir, "C", s.rate / s.metrics, s.metrics)


# --------------------------------------------------------------------------- report


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def _targets(result: dict[str, Any], s: Settings) -> dict[str, Any]:
    a, b, c = result.get("ceiling"), result.get("saturated"), result.get("latency")
    out: dict[str, Any] = {}
    if b is not None:
        out["readings_per_s"] = {
            "target": f">= {TARGET_READINGS_PER_S}",
            "value": b["readings_per_s"],
            "met": b["readings_per_s"] >= TARGET_READINGS_PER_S,
        }
    if b is not None and b.get("cpu_us_per_reading") is not None:
        out["cpu_us_per_reading"] = {
            "target": f"<= {TARGET_CPU_US_PER_READING:g} (gateway + its Mosquitto)",
            "value": b["cpu_us_per_reading"],
            "met": b["cpu_us_per_reading"] <= TARGET_CPU_US_PER_READING,
        }
    if c is not None:
        p99 = c["ingest_lag_at_end"].get("p99_ms")
        out["p99_ms_at_rate"] = {
            "target": f"<= {TARGET_P99_MS} at {TARGET_LATENCY_RATE} readings/s",
            "rate_offered": s.rate,
            "rate_stored": c["readings_per_s"],
            "value": p99,
            "met": (
                None
                if p99 is None or s.rate != TARGET_LATENCY_RATE
                else p99 <= TARGET_P99_MS and c["readings_per_s"] >= 0.95 * s.rate
            ),
        }
    rss = [r["peak_rss_mb"]["gateway"] for r in (b, c) if r is not None]
    if rss:
        out["gateway_rss_mb"] = {
            "target": f"<= {TARGET_RSS_MB}",
            "value": max(rss),
            "met": max(rss) <= TARGET_RSS_MB,
        }
    if a is not None and b is not None and a["msgs_per_s"]:
        share = b["msgs_per_s"] / a["msgs_per_s"]
        out["share_of_ceiling"] = {
            "target": f">= {TARGET_CEILING_SHARE:.0%}",
            "value": round(share, 3),
            "met": share >= TARGET_CEILING_SHARE,
        }
        if a.get("puback_msgs_per_s"):
            out["share_of_plain_puback"] = {
                "target": "information: plain Mosquitto PUBACKs from memory",
                "value": round(b["msgs_per_s"] / a["puback_msgs_per_s"], 3),
                "met": None,
            }
    return out


def _print_phase(title: str, r: dict[str, Any]) -> None:
    print(f"\n{title}")
    for key in ("msgs_per_s", "puback_msgs_per_s", "readings_per_s", "readings_per_message",
                "readings_per_message_measured", "window_s", "cpu_us_per_reading"):  # fmt: skip
        if key in r:
            print(f"  {key:32} {r[key]}")
    if "ingest_lag_at_end" in r:
        lag = r["ingest_lag_at_end"]
        print(
            f"  {'publish->commit (last commits)':32} p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} "
            f"ms, max {lag['max_ms']} ms over {lag['samples']} messages"
        )
        print(f"  {'worst p99 during window':32} {r['ingest_lag_p99_worst_ms']} ms")
        print(f"  {'broker backlog at end (msgs)':32} {r['broker_backlog_at_end']}")
        print(f"  {'last status answer took':32} {r['status_answer_s']} s")
    cpu = r["cpu"]
    procs = ", ".join(f"{k} {v}%" for k, v in cpu["process_percent"].items())
    print(f"  {'CPU (100% = one core)':32} {procs}")
    print(
        f"  {'host busy':32} {cpu['host_busy_percent']}% of {cpu['cores']} cores; "
        f"other processes {cpu['other_processes_percent']}%"
    )
    idle = r["start_rss_mb"]
    rss = ", ".join(
        f"{k} {v} MB" + (f" (idle {idle[k]})" if k in idle else "")
        for k, v in r["peak_rss_mb"].items()
    )
    print(f"  {'peak RSS':32} {rss}")
    sim = r["sim"]
    print(
        f"  {'publish->PUBACK (generator)':32} p50 {sim.get('puback_p50_ms')} ms, "
        f"p99 {sim.get('puback_p99_ms')} ms; paced sends held back by the window "
        f"{sim.get('late')}\n"
        f"  {'simulator':32} acked {sim.get('acked')} ({sim.get('acked_per_s')} msgs/s avg), "
        f"dropped unsent {sim.get('dropped')}, errors {sim.get('errors')}, "
        f"reconnects {sim.get('reconnects')}"
    )


def run(s: Settings) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="iotsphere-bench-"))
    procs = Processes(workdir)
    result: dict[str, Any] = {"bench": "ingest_mqtt"}
    print(
        f"ingest_mqtt: {s.devices} devices in {s.sim_procs} simulator processes, QoS 1, "
        f"{s.seconds:g} s per phase ({s.warmup:g} s warm-up), "
        f"{s.metrics} reading(s) per message, {s.rate:g} readings/s in C; "
        f"work dir {workdir}",
        flush=True,
    )
    phases: list[tuple[str, str, Callable[[Settings, Processes, Path], dict[str, Any]]]] = [
        ("A", "ceiling", phase_ceiling),
        ("B", "saturated", phase_saturated),
        ("C", "latency", phase_latency),
    ]
    titles = {
        "ceiling": "A. ceiling: plain Mosquitto + bare subscriber, simulator at full speed",
        "saturated": "B. gateway saturated: simulator at full speed",
        "latency": f"C. gateway at {s.rate:g} readings/s ({s.metrics} readings per message)",
    }
    keep = s.keep
    try:
        for letter, key, fn in phases:
            if letter not in s.phases:
                continue
            print(f"\n[{letter}] running {key} phase ...", flush=True)
            result[key] = fn(s, procs, workdir)
            procs.stop_all()
            _print_phase(titles[key], result[key])
    except BenchError:
        keep = True  # the logs in it say why
        raise
    finally:
        procs.stop_all()
        if keep:
            print(f"\nwork dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["targets"] = _targets(result, s)
    result["settings"] = {
        "devices": s.devices,
        "sim_procs": s.sim_procs,
        "seconds": s.seconds,
        "warmup": s.warmup,
        "readings_per_message_ab": s.metrics,
        "latency_rate": s.rate,
        "cores": os.cpu_count(),
    }
    print("\ntargets (information only; nothing is asserted)")
    for name, t in result["targets"].items():
        print(f"  {name:20} {t['value']!s:>10}  target {t['target']:40} {_verdict(t['met'])}")
    return result


def _parse(argv: Sequence[str]) -> Settings:
    p = argparse.ArgumentParser(
        prog="ingest_mqtt.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--devices", type=int, default=10, help="simulated devices (default 10)")
    p.add_argument(
        "--rate", type=float, default=10_000.0,
        help="phase C: total readings/s = msgs/s, spread over the devices (default 10000)",
    )  # fmt: skip
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    p.add_argument(
        "--warmup", type=float, default=None,
        help="seconds at the start of each phase not measured (default: a quarter, max 5)",
    )  # fmt: skip
    p.add_argument(
        "--metrics", type=int, default=1,
        help="readings per message in every phase (default 1, the common sensor)",
    )  # fmt: skip
    p.add_argument(
        "--sim-procs", type=int, default=2,
        help="simulator processes sharing the devices (default 2)",
    )  # fmt: skip
    p.add_argument("--phases", default="ABC", help="which phases to run (default ABC)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, DuckDB)")
    p.add_argument(
        "--generator", choices=("raw", "sim"), default="raw",
        help="load generator: raw (bench/mqtt_loadgen.py, default) or sim (iotsphere sim mqtt)",
    )  # fmt: skip
    p.add_argument(
        "--inflight", type=int, default=20,
        help="raw generator: unacknowledged messages per device (default 20, as paho)",
    )  # fmt: skip
    p.add_argument(
        "--smoke", action="store_true",
        help="seconds, tiny sizes: checks that the benchmark still runs (the test suite's)",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.smoke:
        a.devices, a.rate, a.seconds, a.warmup, a.sim_procs = 2, 200.0, 3.0, 1.0, 1
    warmup = a.warmup if a.warmup is not None else min(5.0, a.seconds / 4)
    if a.devices < 1 or a.rate <= 0 or a.metrics < 1 or a.sim_procs < 1:
        p.error("--devices, --rate, --metrics and --sim-procs must be positive")
    if not 0 <= warmup < a.seconds - 1:
        p.error("--warmup must leave at least one second of --seconds to measure")
    if not set(a.phases) <= set("ABC") or not a.phases:
        p.error("--phases takes letters from ABC")
    return Settings(
        a.devices, a.rate, a.seconds, warmup, a.metrics, a.sim_procs, a.phases, a.keep,
        a.generator, a.inflight,
    )  # fmt: skip


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "_sim":
        return _worker_sim(argv[1:])
    if argv and argv[0] == "_raw":
        return _worker_raw(argv[1:])
    if argv and argv[0] == "_sub":
        return _worker_sub(argv[1:])
    settings = _parse(argv)
    return run_benchmark(
        "ingest_mqtt", lambda: run(settings), "interrupted; all benchmark processes stopped"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
