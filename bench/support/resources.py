"""What the processes of a benchmark use: peak RSS sampled in a thread, CPU per process and for
the whole host between two marks (100% = one core), and the small time and unit helpers of a
measuring window."""

from __future__ import annotations

import os
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import psutil

SAMPLE_EVERY_S = 0.25  # RSS sampling period


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


def cpu_mark(watch: ResourceWatch) -> CpuMark:
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return CpuMark(time.monotonic(), watch.cpu_seconds(), total - idle, total)


def cpu_report(start: CpuMark, end: CpuMark) -> dict[str, Any]:
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


def mb(n: int) -> float:
    return round(n / 1e6, 1)


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
