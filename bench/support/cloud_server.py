"""`iotsphere cloud serve` as a benchmark's child: started on a free 127.0.0.1 port in its own
session with its log in the work dir, waited for until /readyz answers, stopped with SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.support import BenchError, log_tail, stop_process
from bench.support.processes import ROOT
from common.ports import free_port

READY_TIMEOUT_S = 120.0


@dataclass
class Server:
    """A running `iotsphere cloud serve` child and where it answers."""

    proc: subprocess.Popen[bytes]
    log: Path
    base_url: str

    def log_tail(self, n: int = 20) -> str:
        return log_tail(self.log, n)

    def stop(self, timeout_s: float = 15.0) -> None:
        stop_process(self.proc, timeout_s)


def start_server(
    data_dir: Path,
    workdir: Path,
    database_url: str | None = None,
    workers: int = 1,
    log_name: str = "cloud.log",
    root: Path = ROOT,
) -> Server:
    """The cloud on data_dir, ready (GET /readyz answers 200); its log is workdir/log_name.
        With database_url it serves that PostgreSQL database (IOTSPHERE_DATABASE_URL, so the URL is
        in no process list) with `workers` processes; without, the embedded store, whatever the
        environment says. `root`: the checkout whose code serves (another one's for a before/after
    comparison in one run). BenchError if it exits or is not ready within READY_TIMEOUT_S."""
    port = free_port()
    log = workdir / log_name
    argv = [
        sys.executable, "-m", "common.cli", "cloud", "serve",
        "--data-dir", str(data_dir), "--bind", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if workers > 1:
        argv += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k != "IOTSPHERE_DATABASE_URL"}
    if database_url is not None:
        env["IOTSPHERE_DATABASE_URL"] = database_url
    with log.open("wb") as err:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            cwd=root,  # `python -m` imports the code of its cwd first
            start_new_session=True,  # a Ctrl-C reaches only us; we stop it in order
        )
    server = Server(proc, log, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"cloud serve exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    server.stop()
    raise BenchError(f"cloud serve not ready within {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")
