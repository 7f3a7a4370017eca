"""Timing HTTP requests with httpx: each request's latency, nearest-rank percentiles, one client
in sequence or N clients at once (requests/s), and the CPU of the server, of this process (the
load generator) and of everything else on the host over the measured window."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import psutil

from bench.support import BenchError


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, -(-len(sorted_ms) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_ms[int(rank) - 1]


def summary(samples_ms: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples_ms)
    return {
        "requests": len(ordered),
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "max_ms": round(ordered[-1], 2) if ordered else None,
        "mean_ms": round(sum(ordered) / len(ordered), 2) if ordered else None,
    }


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


async def timed(client: httpx.AsyncClient, request: Request, i: int) -> float:
    started = time.perf_counter()
    r = await request(client, i)
    await r.aread()
    elapsed = (time.perf_counter() - started) * 1000
    if r.status_code != 200:
        raise BenchError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}")
    return elapsed


@dataclass(frozen=True, slots=True)
class CpuMark:
    at: float
    server: float  # CPU seconds of the server process
    own: float  # CPU seconds of this process (the load generator)
    host_busy: float  # host CPU seconds not idle, all cores


def cpu_mark(server: psutil.Process) -> CpuMark:
    t, host = server.cpu_times(), psutil.cpu_times()
    idle = host.idle + getattr(host, "iowait", 0.0)
    return CpuMark(time.perf_counter(), t.user + t.system, time.process_time(), sum(host) - idle)


def cpu_report(a: CpuMark, b: CpuMark) -> dict[str, Any]:
    """CPU over a window, 100% = one core. `other_processes` is whatever else ran on the host:
    figures taken on a shared machine are only comparable when it is near 0."""
    wall = b.at - a.at
    server = 100 * (b.server - a.server) / wall
    own = 100 * (b.own - a.own) / wall
    host = 100 * (b.host_busy - a.host_busy) / wall
    return {
        "server": round(server, 1),
        "bench_client": round(own, 1),
        "other_processes": round(max(0.0, host - server - own), 1),
        "cores": os.cpu_count(),
    }


async def sequential(
    client: httpx.AsyncClient, request: Request, warmup: int, n: int, server: psutil.Process
) -> dict[str, Any]:
    for i in range(warmup):
        await timed(client, request, i)
    start = cpu_mark(server)
    samples = [await timed(client, request, warmup + i) for i in range(n)]
    result = summary(samples)
    result["cpu_percent"] = cpu_report(start, cpu_mark(server))
    return result


async def concurrent(
    client: httpx.AsyncClient,
    request: Request,
    clients: int,
    warmup: int,
    n: int,
    server: psutil.Process,
) -> dict[str, Any]:
    async def worker(queue: list[int], out: list[float]) -> None:
        while queue:
            i = queue.pop()
            out.append(await timed(client, request, i))

    warm_queue, warm = list(range(warmup)), list[float]()  # opens every client's connection
    await asyncio.gather(*(worker(warm_queue, warm) for _ in range(clients)))
    pending, samples = list(range(n)), list[float]()
    start = cpu_mark(server)
    await asyncio.gather(*(worker(pending, samples) for _ in range(clients)))
    end = cpu_mark(server)
    result = summary(samples)
    result["clients"] = clients
    result["wall_s"] = round(end.at - start.at, 2)
    result["requests_per_s"] = round(len(samples) / (end.at - start.at), 1)
    result["cpu_percent"] = cpu_report(start, end)
    return result
