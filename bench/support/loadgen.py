"""An HTTP/1.1 load generator in its own process, for the cloud API benchmark.

Why not httpx in the benchmark's process: on this 2-core box the load generator competes with
the server for the CPU. httpx's per-request Python work (request model, headers, pool) costs
several times what the server's /healthz does, so with 20 clients it measured itself as much as
the server. This generator writes one prepared request per call on a kept-alive socket
(asyncio streams) and reads the answer by Content-Length (or chunks), nothing else; it runs in
a child process so the parent's threads and garbage never land in its timings, and it reports
its own CPU beside the server's and PostgreSQL's for the same window.

Protocol: the parent writes one JSON object per line on stdin, a phase:

    {"host": "127.0.0.1", "port": 8080, "headers": {"Authorization": "Bearer ..."},
     "paths": ["/api/dashboard"], "clients": 20, "warmup": 20, "requests": 400,
     "server_pids": [123], "postgres_pid": 456}

and reads one JSON line back: the latencies' summary, requests/s over the measured window and
CPU % (100 = one core) of the server's process tree, PostgreSQL's, this generator and the rest
of the host. Every client has its own connection, opened by the warm-up (at least one request
each) and closed at the end of the phase. `paths` are taken in turn (request i asks for
paths[i % len(paths)]). A non-2xx answer ends the phase with {"error": ...}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil


class LoadError(Exception):
    pass


def percentile(sorted_ms: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    if not sorted_ms:
        return float("nan")
    rank = max(1, -(-len(sorted_ms) * p // 100))  # ceil(n * p / 100), at least 1
    return sorted_ms[int(rank) - 1]


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Status and body length of one response (the body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        n = int(lower[at + 17 : end])
        await reader.readexactly(n)
        return status, n
    if b"transfer-encoding: chunked" not in lower:
        raise LoadError("an answer with neither Content-Length nor chunks")
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF
        total += size
        if size == 0:
            return status, total


class _Tree:
    """CPU seconds of a process and its descendants; a child that ends between two marks
    takes its seconds with it (rare here: workers and backends live for the whole phase)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.roots = [psutil.Process(p) for p in pids]

    def seconds(self) -> float:
        total = 0.0
        for root in self.roots:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
        return total


def _host_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


async def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    host, port = spec["host"], int(spec["port"])
    headers = "".join(f"{k}: {v}\r\n" for k, v in spec.get("headers", {}).items())
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n".encode() for p in spec["paths"]
    ]
    clients, warmup, n = int(spec["clients"]), int(spec["warmup"]), int(spec["requests"])
    server = _Tree(spec.get("server_pids", []))
    postgres = _Tree([spec["postgres_pid"]] if spec.get("postgres_pid") else [])
    conns = [await asyncio.open_connection(host, port) for _ in range(clients)]
    samples: list[float] = []
    sizes: list[int] = []
    counter = iter(range(10**12))

    async def client(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], todo: int) -> None:
        reader, writer = conn
        for _ in range(todo):
            i = next(counter)
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            status, size = await _read_answer(reader)
            samples.append((time.perf_counter() - started) * 1000)
            sizes.append(size)
            if not 200 <= status < 300:
                raise LoadError(f"GET {spec['paths'][i % len(requests)]} answered {status}")

    def shares(total: int) -> list[int]:
        return [total // clients + (1 if k < total % clients else 0) for k in range(clients)]

    try:
        warm = zip(conns, shares(warmup), strict=True)
        await asyncio.gather(*(client(c, max(1, w)) for c, w in warm))
        samples.clear()
        sizes.clear()
        t0, s0, p0, o0, h0 = (
            time.perf_counter(), server.seconds(), postgres.seconds(), time.process_time(),
            _host_busy(),
        )  # fmt: skip
        await asyncio.gather(*(client(c, k) for c, k in zip(conns, shares(n), strict=True) if k))
        t1, s1, p1, o1, h1 = (
            time.perf_counter(), server.seconds(), postgres.seconds(), time.process_time(),
            _host_busy(),
        )  # fmt: skip
    finally:
        for _, writer in conns:
            writer.close()
    wall = t1 - t0
    ordered = sorted(samples)

    def pct(a: float, b: float) -> float:
        return round(100 * (b - a) / wall, 1)

    server_pct, postgres_pct, own_pct = pct(s0, s1), pct(p0, p1), pct(o0, o1)
    cpu = {
        "server": server_pct,
        "postgres": postgres_pct if postgres.roots else None,
        "load_generator": own_pct,
        "cores": os.cpu_count(),
        "other_processes": round(max(0.0, pct(h0, h1) - server_pct - postgres_pct - own_pct), 1),
    }
    return {
        "requests": len(ordered),
        "clients": clients,
        "p50_ms": round(percentile(ordered, 50), 2),
        "p95_ms": round(percentile(ordered, 95), 2),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(sum(ordered) / len(ordered), 2),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ordered) / wall, 1),
        "response_bytes": sizes[0] if sizes else 0,
        "cpu_percent": cpu,
    }


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            out = asyncio.run(run_phase(json.loads(line)))
        except (LoadError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


class LoadGenerator:
    """The parent's handle on a generator child: `phase(spec)` runs one phase and returns its
    figures (BenchError-free: the caller decides; an answer with "error" is returned as is)."""

    def __init__(self) -> None:
        import subprocess

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.support.loadgen"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C reaches the benchmark, which stops us
        )

    def phase(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the load generator exited ({self.proc.poll()})"}
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        import subprocess

        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # a stuck child is killed
            self.proc.kill()
            self.proc.wait()
