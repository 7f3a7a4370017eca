"""CoAP ingest benchmark: simulated devices -> gateway CoAP ingress -> DuckDB.

    .venv/bin/python bench/ingest_coap.py [--devices N] [--inflight K] [--count C] [--smoke]

Three phases on 127.0.0.1, each with fresh processes and free ports:

  ceiling  a trivial aiocoap server (this file re-run with a hidden `_trivial` argument) whose
           one resource answers 2.04 and stores nothing: the requests/s aiocoap can answer.
  CON      `iotsphere gateway run`; N devices post confirmable single-reading JSON requests,
           K outstanding each, answered only after the DuckDB commit: readings/s stored and
           request latency (send -> 2.04) p50/p99.
  NON      the same with non-confirmable requests (answers still come after the commit).

The load generator is `iotsphere sim coap --saturate` in one subprocess per device group, so it
does not share an interpreter with the server. Readings/s stored = acknowledged readings over
the load's wall time, checked against the gateway's readings_stored afterwards. A measurement,
not a test: exits 0 when the measurement worked. Output: human lines, then one JSON line
(with each phase's requests/s as a share of the ceiling's, measured in the same run).
--smoke: the same three phases with tiny sizes, in seconds (the test suite runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
IOTSPHERE = [sys.executable, "-m", "common.cli"]
SIM_PROCESSES = 2  # load generator processes (devices are split between them)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), read while it still runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cli_json(*args: str, data_dir: Path) -> Any:
    out = subprocess.run(
        [*IOTSPHERE, *args, "--json", "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    return json.loads(out.stdout)


def cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(creds: list[dict[str, str]], port: int, count: int, inflight: int, *extra: str,
             work: Path, server_pid: int, metrics: int = 1) -> dict[str, Any]:  # fmt: skip
    """The simulator in SIM_PROCESSES subprocesses; merged figures, with the server's CPU
    time per answered request (whole process, and its main thread: the event loop)."""
    cpu_before = cpu_s(server_pid), cpu_s(server_pid, server_pid)
    groups = [creds[i::SIM_PROCESSES] for i in range(SIM_PROCESSES)]
    procs = []
    for i, group in enumerate(g for g in groups if g):
        path = work / f"creds{i}.json"
        path.write_text(json.dumps(group))
        procs.append(subprocess.Popen(
            [*IOTSPHERE, "sim", "coap", "--credentials", str(path), "--port", str(port),
             "--count", str(count), "--saturate", "--inflight", str(inflight),
             "--metrics", ",".join(f"m{i}" for i in range(metrics)), "--ack-timeout", "2",
             "--json", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"simulator failed: {err[-1000:]}")
            results.append(json.loads(out))
    finally:
        for p in procs:  # on a failure or an interrupt, the other simulators too
            if p.poll() is None:
                p.terminate()
                p.wait(10)
    acked = sum(r["acked"] for r in results)
    wall = max(r["elapsed_s"] for r in results)
    cpu = cpu_s(server_pid) - cpu_before[0]
    loop_cpu = cpu_s(server_pid, server_pid) - cpu_before[1]
    return {
        "requests_per_s": round(acked / wall, 1) if wall else 0.0,
        "readings_per_request": metrics,
        "acked": acked * metrics,
        "answers": [r["answers"] for r in results],
        "timeouts": sum(r["timeouts"] for r in results),
        "retransmissions": sum(r["retransmissions"] for r in results),
        "wall_s": wall,
        "per_s": round(acked * metrics / wall, 1) if wall else 0.0,  # readings/s
        "p50_ms": max((r["latency_ms"] or {}).get("p50", 0) for r in results),
        "p99_ms": max((r["latency_ms"] or {}).get("p99", 0) for r in results),
        "server_cpu_us_per_request": round(1e6 * cpu / acked, 1) if acked else None,
        "server_loop_cpu_us_per_request": round(1e6 * loop_cpu / acked, 1) if acked else None,
    }


def gateway_phase(args: argparse.Namespace, work: Path, confirmable: bool) -> dict[str, Any]:
    data = work / ("gw-con" if confirmable else "gw-non")
    data.mkdir()
    (data / "gateway.toml").write_text("[lockout]\nmax_failures_per_address = 100000\n")
    creds = [
        cli_json("gateway", "device", "add", f"b{i}", data_dir=data) for i in range(args.devices)
    ]
    port = free_udp_port()
    log = (data / "gateway.log").open("w")
    gw = subprocess.Popen(
        [*IOTSPHERE, "gateway", "run", "--data-dir", str(data), "--bind", "127.0.0.1",
         "--mqtt-port", str(free_tcp_port()), "--coap-port", str(port), "--http-port", "0",
         "--mqtts-port", "0", "--https-port", "0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "gateway ready" not in (data / "gateway.log").read_text():
            if gw.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("gateway did not start: " + (data / "gateway.log").read_text())
            time.sleep(0.1)
        extra = () if confirmable else ("--non",)
        result = run_load(
            creds, port, args.count, args.inflight, *extra, work=work, metrics=args.metrics,
            server_pid=gw.pid,
        )  # fmt: skip
        result["gateway_peak_rss_mb"] = peak_rss_mb(gw.pid)
        status = cli_json("gateway", "status", data_dir=data)
        result["readings_stored"] = status["readings_stored"]
        result["gateway_coap"] = {k: status["coap"][k] for k in ("accepted", "unavailable")}
    finally:
        gw.terminate()
        gw.wait(timeout=60)
        log.close()
    return result


def ceiling_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    port = free_udp_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "_trivial", str(port)], cwd=REPO,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "ready"
        creds = [{"device_id": f"t{i}", "token": f"tok{i}"} for i in range(args.devices)]
        result = run_load(creds, port, args.count, args.inflight, work=work, server_pid=server.pid)
        result["server_peak_rss_mb"] = peak_rss_mb(server.pid)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def trivial_server(port: int) -> None:
    import aiocoap
    import aiocoap.resource

    class Changed(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(code=aiocoap.CHANGED)

    async def main() -> None:
        site = _PathWildcard(Changed())
        # UDP only, as the gateway: aiocoap would also bind TCP on the port, which another
        # process may hold (the port was only checked free for UDP)
        ctx = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", port), transports=["udp6"]
        )
        # The same socket receive buffer as the gateway's, so the ratio compares the work per
        # request, not how many datagrams the kernel dropped.
        from edge.ingest.coap.context import grow_receive_buffer, server_socket
        from edge.ingest.coap.ingress import RECEIVE_BUFFER_BYTES

        sock = server_socket(ctx)
        assert sock is not None
        grow_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class _PathWildcard:
    """Any /api/v1/... path goes to one resource (the token is a path segment)."""

    def __new__(cls, inner: Any) -> Any:
        import aiocoap.interfaces

        class Wild(aiocoap.interfaces.Resource):  # type: ignore[misc]
            async def needs_blockwise_assembly(self, request: Any) -> bool:
                return False

            async def render(self, request: Any) -> Any:
                return await inner.render(request)

            async def render_to_pipe(self, pipe: Any) -> None:
                pipe.add_response(await inner.render(pipe.request), is_last=True)

        return Wild()


def cpu_line(phase: dict[str, Any]) -> str:
    return (f"server CPU {phase['server_cpu_us_per_request']} us/request "
            f"(event loop {phase['server_loop_cpu_us_per_request']})")  # fmt: skip


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_trivial":
        trivial_server(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--inflight", type=int, default=64, help="outstanding per device")
    parser.add_argument("--count", type=int, default=1500, help="requests per device")
    parser.add_argument(
        "--metrics", type=int, default=1, help="readings per request (1 = a minimal sensor)"
    )
    parser.add_argument(
        "--smoke", action="store_true",
        help="seconds, tiny sizes (2 devices x 8 in flight x 300 requests): checks that the "
        "benchmark still runs, as the test suite does",
    )  # fmt: skip
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: through the finally blocks that stop every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.smoke:
        args.devices, args.inflight, args.count = 2, 8, 300
    if min(args.devices, args.inflight, args.count, args.metrics) < 1:
        parser.error("--devices, --inflight, --count and --metrics must be positive")
    work = Path(tempfile.mkdtemp(prefix="bench-coap-"))
    try:
        print(f"{args.devices} devices x {args.inflight} in flight x {args.count} requests "
              f"of {args.metrics} reading(s)")  # fmt: skip
        ceiling = ceiling_phase(args, work)
        print(f"ceiling (trivial aiocoap 2.04): {ceiling['per_s']:.0f} req/s, "
              f"p99 {ceiling['p99_ms']} ms, peak RSS {ceiling['server_peak_rss_mb']} MB, "
              f"{cpu_line(ceiling)}")  # fmt: skip
        con = gateway_phase(args, work, confirmable=True)
        print(f"CON through to DuckDB: {con['per_s']:.0f} readings/s, p50 {con['p50_ms']} ms, "
              f"p99 {con['p99_ms']} ms, stored {con['readings_stored']}, "
              f"gateway peak RSS {con['gateway_peak_rss_mb']} MB, "
              f"{con['requests_per_s']:.0f} req/s = "
              f"{100 * con['requests_per_s'] / max(ceiling['per_s'], 1):.0f}% of the ceiling, "
              f"{cpu_line(con)}")  # fmt: skip
        non = gateway_phase(args, work, confirmable=False)
        print(f"NON through to DuckDB: {non['per_s']:.0f} readings/s, p50 {non['p50_ms']} ms, "
              f"p99 {non['p99_ms']} ms, stored {non['readings_stored']}, "
              f"{cpu_line(non)}")  # fmt: skip
        share = {
            "con": round(con["requests_per_s"] / ceiling["per_s"], 3) if ceiling["per_s"] else None,
            "non": round(non["requests_per_s"] / ceiling["per_s"], 3) if ceiling["per_s"] else None,
        }
        print(
            f"NON: {non['requests_per_s']:.0f} req/s = "
            f"{100 * non['requests_per_s'] / max(ceiling['per_s'], 1):.0f}% of the ceiling"
        )
        met = con["per_s"] >= 2000 and con["requests_per_s"] >= 0.7 * ceiling["per_s"]
        target = "met" if met else "missed"
        print(f"target (>= 2,000 CON readings/s and >= 70% of the ceiling): {target}")
        settings = {k: getattr(args, k) for k in ("devices", "inflight", "count", "metrics")}
        print(json.dumps({
            "bench": "ingest_coap", "ceiling": ceiling, "con": con, "non": non,
            "share_of_ceiling": share, "target": target,
            "settings": {**settings, "smoke": args.smoke, "cores": os.cpu_count()},
        }, separators=(",", ":")))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
