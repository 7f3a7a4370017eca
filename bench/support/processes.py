"""The child processes of a benchmark run: start them in their own session with a log file each,
collect the JSON lines a worker prints, wait for them to come up, and stop them all (also on
Ctrl-C) newest first."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.support import BenchError, log_tail, stop_process

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository: every child's cwd


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


def wait_for(what: str, check: Callable[[], bool], child: Child, timeout_s: float) -> None:
    """Poll `check` until it holds; BenchError (with the child's log) if the child exits first
    or timeout_s passes."""
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


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
