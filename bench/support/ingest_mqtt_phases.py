"""The three phases of the MQTT ingest benchmark (bench/ingest_mqtt.py) and what they share:
its Settings, the simulator workers each phase starts and totals, and the figures each phase
returns. A: the ceiling (a plain Mosquitto and a bare subscriber); B and C: the gateway,
saturated and at a fixed rate."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.support import BenchError
from bench.support.gateway import running_gateway
from bench.support.mqtt_workers import worker_argv
from bench.support.processes import Child, Processes, port_open, wait_for
from bench.support.resources import ResourceWatch, cpu_mark, cpu_report, mb, sleep_until
from common.ports import free_port
from edge.ingest.mqtt.broker import MOSQUITTO

FULL_SPEED_TOTAL_RATE = 100_000.0  # offered msgs/s in A and B: far above what one host sends
LAG_SAMPLE_EVERY_S = 2.0  # ingest_lag covers the last 20k commits: ~2 s at 10k/s
SIM_GRACE_S = 120.0  # sims outlive their phase by at most this if the bench stalls


@dataclass(frozen=True)
class Settings:
    """One run, as the command line asked for it."""

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
    gateway_set: tuple[str, ...] = ()  # KEY=VALUE lines for gateway.toml's [gateway] table

    @property
    def window(self) -> float:
        return self.seconds - self.warmup


def credentials_for_plain_broker(workdir: Path, n: int) -> Path:
    # The plain broker allows anonymous clients and ignores the password.
    path = workdir / "plain-credentials.json"
    path.write_text(
        json.dumps([{"device_id": f"bench-{i:04d}", "token": "unused"} for i in range(n)])
    )
    return path


def start_sims(
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
            argv = worker_argv(
                "_raw",
                "--credentials", str(creds), "--first", str(first), "--count", str(count),
                "--port", str(port), "--rate", str(0 if saturate else per_device),
                "--metrics", str(metrics), "--window", str(s.inflight),
                "--seconds", str(s.seconds + SIM_GRACE_S),
            )  # fmt: skip
            sims.append(procs.start(f"{tag}-sim{w}", argv, pipe=True))
            first += count
            continue
        argv = worker_argv(
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


def sim_totals(sims: list[Child]) -> dict[str, Any]:
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
    wait_for("listening port", lambda: port_open(port), broker, 10)
    sub = procs.start("A-subscriber", worker_argv("_sub", "--port", str(port)), pipe=True)
    wait_for("SUBACK", lambda: sub.last("ready") is not None, sub, 15)

    watch = ResourceWatch()
    watch.watch("mosquitto", broker.proc.pid, baseline=True)
    watch.watch("subscriber", sub.proc.pid, baseline=True)
    creds = credentials_for_plain_broker(workdir, s.devices)
    sims = start_sims(procs, "A", creds, port, s, FULL_SPEED_TOTAL_RATE, s.metrics)
    for sim in sims:
        watch.watch(sim.name.split("-", 1)[1], sim.proc.pid)
    watch.start()
    t0 = time.monotonic()
    sleep_until(t0 + s.warmup)
    a, cpu_a = sub.last("n"), cpu_mark(watch)
    sleep_until(t0 + s.seconds - 0.1)
    b, cpu_b = sub.last("n"), cpu_mark(watch)
    watch.stop()
    sim_stats = sim_totals(sims)
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
        "cpu": cpu_report(cpu_a, cpu_b),
        "peak_rss_mb": {k: mb(v) for k, v in watch.peak_rss.items()},
        "start_rss_mb": {k: mb(v) for k, v in watch.start_rss.items()},
        "sim": sim_stats,
    }


def _gateway_run(
    s: Settings, procs: Processes, workdir: Path, tag: str, total_rate: float, metrics: int
) -> dict[str, Any]:
    running = running_gateway(procs, workdir, tag, s.devices, s.gateway_set)
    with running as (gw, status, mqtt_port, creds):
        first = status.get()
        assert first is not None
        broker_pid = first[1]["broker"]["pid"]
        watch = ResourceWatch()
        watch.watch("gateway", gw.proc.pid, baseline=True)
        watch.watch("gateway_mosquitto", broker_pid, baseline=True)
        sims = start_sims(procs, tag, creds, mqtt_port, s, total_rate, metrics)
        for sim in sims:
            watch.watch(sim.name.split("-", 1)[1], sim.proc.pid)
        watch.start()
        t0 = time.monotonic()
        sleep_until(t0 + s.warmup)
        a, cpu_a = status.get(), cpu_mark(watch)
        lag_samples: list[dict[str, Any]] = []
        next_lag = time.monotonic() + LAG_SAMPLE_EVERY_S
        while next_lag < t0 + s.seconds - 0.3:
            sleep_until(next_lag)
            got = status.get()
            if got is not None:
                lag_samples.append(got[1]["ingest_lag"])
            next_lag += LAG_SAMPLE_EVERY_S
        sleep_until(t0 + s.seconds - 0.1)
        b, cpu_b = status.get(), cpu_mark(watch)
        watch.sample()
        watch.stop()
        sim_stats = sim_totals(sims)
        if a is None or b is None:
            raise BenchError(f"the gateway's status did not answer:\n{gw.log_tail()}")
        (ta, sa), (tb, sb) = a, b
        dt = tb - ta
        stored = sb["readings_stored"] - sa["readings_stored"]
        commits = sb["commits"] - sa["commits"]
        ingress_b = sb.get("ingress") or {}
        # acked = committed messages: taken by the MQTT front itself (telemetry ends there)
        # or, with an external broker, by the ingress subscriber
        acked = _acked_messages(sb) - _acked_messages(sa)
        cpu = cpu_report(cpu_a, cpu_b)
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
            "broker_backlog_at_end": sim_stats.get("acked", 0) - _received_messages(sb),
            "status_answer_s": round(status.last_delay, 2),
            "store_mailbox_at_end": sb.get("store_mailbox"),
            # readings the rules actor read back from the store (its notices were skipped)
            "rules_caught_up": sb.get("rules_caught_up", 0) - sa.get("rules_caught_up", 0),
            "rules_notices_skipped": sb["rules_notices_skipped"] - sa["rules_notices_skipped"],
            "cpu": cpu,
            "cpu_us_per_reading": round(ours / 100 * dt / stored * 1e6, 1) if stored else None,
            "readings_per_commit": round(stored / commits, 1) if commits else None,
            "peak_rss_mb": {k: mb(v) for k, v in watch.peak_rss.items()},
            "start_rss_mb": {k: mb(v) for k, v in watch.start_rss.items()},
            "mqtt_front": sb.get("mqtt_front"),
            "ingress": ingress_b,
            "rejections": sb.get("rejections"),
            "sim": sim_stats,
        }


def _acked_messages(status: dict[str, Any]) -> int:
    front = (status.get("mqtt_front") or {}).get("telemetry") or {}
    return int((status.get("ingress") or {}).get("acked", 0)) + int(front.get("acked", 0))


def _received_messages(status: dict[str, Any]) -> int:
    front = (status.get("mqtt_front") or {}).get("telemetry") or {}
    return int((status.get("ingress") or {}).get("received", 0)) + int(front.get("telemetry", 0))


def phase_saturated(s: Settings, procs: Processes, workdir: Path) -> dict[str, Any]:
    return _gateway_run(s, procs, workdir, "B", FULL_SPEED_TOTAL_RATE, s.metrics)


def phase_latency(s: Settings, procs: Processes, workdir: Path) -> dict[str, Any]:
    # The same message shape as B (--metrics readings per message): the target is stated in
    # readings/s, and one reading per message would measure the load generator's ceiling.
    return _gateway_run(s, procs, workdir, "C", s.rate / s.metrics, s.metrics)
