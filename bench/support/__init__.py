"""What the benchmark scripts share: their error, the children they start and stop, and how a
run ends. A package, not a `bench/*.py` module, so `./dev.sh bench` does not run it as a
benchmark. The scripts import it after putting the repository on sys.path. Its modules hold
the rest: processes, resources (CPU, RSS), gateway, cloud_server, http_timing, and the parts of
the larger benchmarks (ingest_mqtt_phases, mqtt_workers, ingest_mqtt_report, cloud_api_report)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class BenchError(Exception):
    """The benchmark could not measure (a process did not start, a request failed): exit 1."""


def log_tail(log: Path, n: int) -> str:
    """The last n lines of a child's log ("" when it cannot be read), for an error message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, so the child stops cleanly (a gateway flushes its store); SIGKILL after
    timeout_s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_benchmark(name: str, run: Callable[[], dict[str, Any]], interrupted: str) -> int:
    """Run it and print its result as one JSON line: exit code 0. SIGTERM ends the run like
    Ctrl-C, through the finally blocks that stop every child: 130, `interrupted` on stderr.
    A BenchError: 1, with its message."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run()
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"\n{name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0
