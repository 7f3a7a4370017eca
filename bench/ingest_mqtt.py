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
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

# The phases, their worker processes and the report are in bench/support/ (ingest_mqtt_phases,
# mqtt_workers, ingest_mqtt_report); this script parses the command line and runs them in order.
from bench.support import BenchError, run_benchmark  # noqa: E402
from bench.support.ingest_mqtt_phases import (  # noqa: E402
    Settings,
    phase_ceiling,
    phase_latency,
    phase_saturated,
)
from bench.support.ingest_mqtt_report import (  # noqa: E402
    phase_titles,
    print_phase,
    print_targets,
    targets,
)
from bench.support.mqtt_workers import WORKERS  # noqa: E402
from bench.support.processes import Processes  # noqa: E402


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
    titles = phase_titles(s)
    keep = s.keep
    try:
        for letter, key, fn in phases:
            if letter not in s.phases:
                continue
            print(f"\n[{letter}] running {key} phase ...", flush=True)
            result[key] = fn(s, procs, workdir)
            procs.stop_all()
            print_phase(titles[key], result[key])
    except BenchError:
        keep = True  # the logs in it say why
        raise
    finally:
        procs.stop_all()
        if keep:
            print(f"\nwork dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["targets"] = targets(result, s)
    result["settings"] = {
        "devices": s.devices,
        "sim_procs": s.sim_procs,
        "seconds": s.seconds,
        "warmup": s.warmup,
        "readings_per_message_ab": s.metrics,
        "latency_rate": s.rate,
        "cores": os.cpu_count(),
    }
    print_targets(result["targets"])
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
        "--gateway-set", action="append", default=[], metavar="KEY=VALUE",
        help="a [gateway] setting of gateway.toml for phases B and C, e.g. commit_delay_us=2000"
        " (repeatable; VALUE in TOML)",
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
    if any("=" not in kv for kv in a.gateway_set):
        p.error("--gateway-set takes KEY=VALUE")
    return Settings(
        a.devices, a.rate, a.seconds, warmup, a.metrics, a.sim_procs, a.phases, a.keep,
        a.generator, a.inflight, tuple(a.gateway_set),
    )  # fmt: skip


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in WORKERS:  # a worker process of a phase (bench/support/mqtt_workers.py)
        return WORKERS[argv[0]](argv[1:])
    settings = _parse(argv)
    return run_benchmark(
        "ingest_mqtt", lambda: run(settings), "interrupted; all benchmark processes stopped"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
