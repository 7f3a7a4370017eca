"""Chaos between gateway and cloud (issue 4): while a simulator streams QoS 1 readings, the
gateway is killed with SIGKILL and restarted, the cloud is restarted (SIGKILL and SIGTERM, same
data dir and port), and a fault proxy between them drops responses after the cloud committed,
resets connections and delays requests past the gateway's timeout. Afterwards every reading
the simulator got a PUBACK for is in the cloud exactly once, in per-device order.

The cloud's readings are counted straight from its DuckDB file once it has stopped: a
duplicate row is visible there even where an API might hide it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from tests.conftest import IOTSPHERE, REPO, GatewayProcess, cli, cli_json
from tests.support.fault_proxy import Fault, FaultProxy, ThreadedFaultProxy, plan
from tests.support.ports import free_port, restartable_port

pytestmark = pytest.mark.timeout(240)

CHAOS = {Fault.PASS: 0.4, Fault.DROP_RESPONSE: 0.25, Fault.RESET: 0.2, Fault.DELAY: 0.15}
SYNC_TIMEOUT_S = 1.0
# Some delays outlast the gateway's timeout: it resends while the first copy is still coming.
DELAY_S = (0.05, 1.2)
EARLY_DECISIONS = 8
METRICS = ("temperature", "humidity")


class CloudProcess:
    """`iotsphere cloud serve` on a fixed port and data dir, restartable."""

    def __init__(self, data: Path, port: int, log: Path) -> None:
        self.data, self.port, self.log = data, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        ready_before = self.log.read_text().count("cloud ready") if self.log.exists() else 0
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [*IOTSPHERE, "cloud", "serve", "--data-dir", str(self.data),
                 "--port", str(self.port)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while self.log.read_text().count("cloud ready") <= ready_before:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "cloud not ready: " + self.log.read_text()[-3000:]
            time.sleep(0.05)
        self.starts += 1

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudProcess]:
    # restarted on the same port: one below the ephemeral range
    c = CloudProcess(tmp_path / "cloud", restartable_port(), tmp_path / "cloud.log")
    yield c
    if c.proc is not None and c.proc.poll() is None:
        c.proc.kill()
        c.proc.wait(timeout=30)


@dataclass(frozen=True)
class Chaos:
    devices: int
    per_device: int
    rate: float  # messages per second per device (each message carries len(METRICS) readings)
    events: tuple[str, ...]  # "gateway" = kill -9 + restart, "cloud" = restart, in this order
    seed: int
    batch_max_readings: int = 200  # small batches: many requests, so many faults
    drain_deadline_s: float = 120.0  # generous: a stuck sync fails, a slow one does not


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _configure_gateway(data_dir: Path, batch_max_readings: int = 200) -> None:
    with (data_dir / "gateway.toml").open("a") as toml:
        toml.write(
            "\n[gateway]\n"
            f"http_port = {free_port()}\ncoap_port = {free_port()}\n"
            "sync_tick_s = 0.1\nsync_batch_max_age_s = 0.1\n"
            f"sync_batch_max_readings = {batch_max_readings}\n"
            f"sync_timeout_s = {SYNC_TIMEOUT_S}\nsync_backoff_base_s = 0.05\n"
            "sync_backoff_max_s = 0.3\nsync_config_every_s = 1.0\n"
        )


def _add_devices(gw_data: Path, n: int) -> list[dict[str, Any]]:
    """`gateway device add` for n devices at once (through the running gateway's admin API)."""

    def add(i: int) -> subprocess.Popen[str]:
        cmd = ["gateway", "device", "add", f"chaos-{i}", "--json", "--data-dir", str(gw_data)]
        return subprocess.Popen(
            [*IOTSPHERE, *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    procs = [add(i) for i in range(n)]
    creds = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        creds.append(json.loads(out))
    return creds


def run_chaos(
    tmp_path: Path, gw: GatewayProcess, cloud: CloudProcess, chaos: Chaos
) -> dict[str, Any]:
    # The k-th batch request that reaches the cloud meets the seed's k-th decision: with every
    # kind among the first few, any run that syncs at all meets each of them.
    early = plan(chaos.seed, EARLY_DECISIONS, CHAOS, DELAY_S)
    assert {d.fault for d in early} == set(Fault), "pick a seed that plays every fault early"
    gw_data = gw.data_dir
    phases = {"begin": time.monotonic()}
    token = json.loads(
        subprocess.run(
            [*IOTSPHERE, "cloud", "gateway", "add", "chaos-site", "--data-dir", str(cloud.data)],
            capture_output=True, text=True, cwd=REPO, check=True,
        ).stdout
    )["enrollment_token"]  # fmt: skip
    cloud.start()
    proxy = ThreadedFaultProxy(FaultProxy(cloud.port, seed=chaos.seed, delay_s=DELAY_S)).start()
    sim: subprocess.Popen[str] | None = None
    try:
        # Enrollment is a one-shot CLI call: it goes through the proxy, faults off.
        cli("gateway", "enroll", "--cloud", proxy.url, "--token", token, data_dir=gw_data)
        _configure_gateway(gw_data, chaos.batch_max_readings)
        gw.start()
        creds = _add_devices(gw_data, chaos.devices)
        (tmp_path / "creds.json").write_text(json.dumps(creds))
        acked_log = tmp_path / "acked.log"
        proxy.set_weights(CHAOS)
        phases["streaming"] = time.monotonic()
        sim = subprocess.Popen(
            [*IOTSPHERE, "sim", "mqtt", "--credentials", str(tmp_path / "creds.json"),
             "--port", str(gw.mqtt_port), "--rate", str(chaos.rate),
             "--count", str(chaos.per_device), "--metrics", ",".join(METRICS),
             "--inflight", "20", "--backoff", "0.2", "--acked-log", str(acked_log), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        total = chaos.devices * chaos.per_device
        cloud_signals = [signal.SIGKILL, signal.SIGTERM]
        for i, event in enumerate(chaos.events, start=1):
            # each event once the stream has got this far: kills land mid-stream, not at
            # a moment chosen by the clock
            target = total * i // (len(chaos.events) + 1)
            deadline = time.monotonic() + 60
            while _count_lines(acked_log) < target:
                assert sim.poll() is None, "the simulator ended before the chaos did"
                assert time.monotonic() < deadline, "the simulator made no progress"
                time.sleep(0.05)
            if event == "gateway":
                gw.stop(signal.SIGKILL)
                gw.start()
            else:
                cloud.stop(cloud_signals[cloud.starts % 2])
                time.sleep(0.3)  # a moment with the cloud down behind the proxy
                cloud.start()
        phases["chaos_done"] = time.monotonic()
        out, err = sim.communicate(timeout=120)
        phases["stream_done"] = time.monotonic()
        assert sim.returncode == 0, err[-3000:]
        sim_stats = json.loads(out)
        assert sim_stats["dropped"] == 0 and sim_stats["unacked"] == 0, sim_stats

        acked: dict[str, list[int]] = {}
        for line in acked_log.read_text().splitlines():
            device_id, _seq, ts = line.split()
            acked.setdefault(device_id, []).append(int(ts))
        expected = {(d, m, ts) for d, stamps in acked.items() for ts in stamps for m in METRICS}
        # the simulator resends what was not acknowledged, so in the end all of it was
        assert sum(len(s) for s in acked.values()) == total == len(expected) // len(METRICS)

        # Drain: faults stay on; a generous deadline, not a timing assertion.
        deadline = time.monotonic() + chaos.drain_deadline_s
        while True:
            status = cli_json("gateway", "status", data_dir=gw_data)
            if (
                status["readings_stored"] >= len(expected)
                and status["sync"]["backlog_readings"] == 0
            ):
                break
            assert time.monotonic() < deadline, f"sync did not drain: {status}"
            time.sleep(0.5)
        faults = proxy.stats()
        phases["drained"] = time.monotonic()
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.communicate()
        proxy.stop()
    assert gw.stop() == 0
    assert cloud.stop() == 0

    con = duckdb.connect(str(cloud.data / "cloud.duckdb"), read_only=True)
    try:
        rows = con.execute(
            "SELECT device_id, metric, ts, count(*) FROM readings GROUP BY ALL"
        ).fetchall()
        arrival = con.execute(
            "SELECT device_id, metric, ts, cloud_received_at FROM readings"
            " ORDER BY device_id, metric, ts"
        ).fetchall()
    finally:
        con.close()
    dupes = [r for r in rows if r[3] != 1]
    assert not dupes, f"{len(dupes)} readings stored more than once, e.g. {dupes[:3]}"
    have = {(d, m, ts) for d, m, ts, _n in rows}
    missing = expected - have
    assert not missing, f"{len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:3]}"
    extra = have - expected
    assert not extra, f"{len(extra)} readings nobody sent, e.g. {sorted(extra)[:3]}"
    # Per-device order: the cloud never received a reading before an earlier one of the same
    # device and metric (sync sends in the gateway's commit order).
    out_of_order = [
        (a, b) for a, b in itertools.pairwise(arrival) if a[:2] == b[:2] and b[3] < a[3]
    ]
    assert not out_of_order, f"{len(out_of_order)} out of order, e.g. {out_of_order[:3]}"

    tracked = faults["tracked"]
    # Each kind of fault really hit sync batches, so the test cannot pass vacuously.
    assert tracked.get("drop_response_200", 0) > 0, faults  # lost after the commit
    assert tracked.get("resent_after_drop", 0) > 0, faults  # ...and the batch came again
    assert tracked.get("reset", 0) > 0, faults
    assert tracked.get("delay", 0) > 0, faults
    assert faults["all"].get("upstream_down", 0) > 0, faults  # the cloud was down behind it
    assert cloud.starts == 1 + chaos.events.count("cloud")
    steps = list(phases.items())
    took = {b[0]: round(b[1] - a[1], 1) for a, b in itertools.pairwise(steps)}
    print(
        f"chaos: phases {took}; simulator {sim_stats}; proxy {faults}"
    )  # shown with -s or on failure
    return faults


def test_sync_survives_kills_restarts_and_a_faulty_network(
    tmp_path: Path, gateway_process: GatewayProcess, cloud: CloudProcess
) -> None:
    run_chaos(
        tmp_path,
        gateway_process,
        cloud,
        Chaos(
            devices=3,
            per_device=600,
            rate=50,
            events=("gateway", "cloud", "gateway", "cloud"),
            seed=95,  # pass, drop, delay, then resets at each of the three points
        ),
    )


@pytest.mark.soak
@pytest.mark.timeout(1200)
def test_sync_chaos_soak(
    tmp_path: Path, gateway_process: GatewayProcess, cloud: CloudProcess
) -> None:
    run_chaos(
        tmp_path,
        gateway_process,
        cloud,
        Chaos(
            devices=6,
            per_device=4000,
            rate=100,
            events=("gateway", "cloud") * 6 + ("cloud", "gateway", "gateway", "cloud"),
            seed=116,
            batch_max_readings=1000,
            drain_deadline_s=600,
        ),
    )


# -- the proxy itself: each fault does what the chaos test relies on ---------------------------


async def _counting_upstream() -> tuple[asyncio.Server, list[bytes]]:
    """A minimal HTTP/1.1 keep-alive server that records every complete request body."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":")[1])
                seen.append(await reader.readexactly(length))
                body = b'{"n": %d}' % len(seen)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, seen


async def test_fault_proxy_faults_per_request_on_a_keep_alive_connection() -> None:
    server, seen = await _counting_upstream()
    proxy = FaultProxy(server.sockets[0].getsockname()[1], seed=1, delay_s=(0.01, 0.02))
    await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            for i in range(3):  # one connection, several requests
                r = await client.post("/api/v1/sync/batches", content=b"a%d" % i)
                assert r.json() == {"n": i + 1}
            assert proxy.stats()["all"]["requests"] == 3

            proxy.set_weights({Fault.DROP_RESPONSE: 1})
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/api/v1/sync/batches", content=b"lost")
            assert seen[-1] == b"lost"  # the upstream got it and answered; the client did not
            proxy.set_weights({Fault.PASS: 1})
            r = await client.post("/api/v1/sync/batches", content=b"lost")  # the resend
            assert r.status_code == 200
            assert proxy.stats()["tracked"]["resent_after_drop"] == 1

            proxy.set_weights({Fault.RESET: 1})
            for i in range(12):
                with pytest.raises(httpx.TransportError):
                    await client.post("/api/v1/sync/batches", content=b"r%d" % i)
            points = {k for k in proxy.stats()["all"] if k.startswith("reset_")}
            assert {"reset_before_forward", "reset_mid_request"} <= points

            proxy.set_weights({Fault.DELAY: 1})
            r = await client.post("/other", content=b"slow")
            assert r.json() == {"n": len(seen)} and seen[-1] == b"slow"
        stats = proxy.stats()
        assert stats["all"]["delay"] == 1 and "delay" not in stats["tracked"]
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()


async def test_fault_proxy_answers_502_while_the_upstream_is_down() -> None:
    proxy = FaultProxy(free_port(), seed=1)
    await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            r = await client.get("/healthz")
        assert r.status_code == 502
        assert proxy.stats()["all"]["upstream_down"] == 1
    finally:
        await proxy.aclose()


async def test_fault_proxy_tracked_requests_follow_the_seeds_plan() -> None:
    """The k-th tracked request meets plan()'s k-th decision whatever else came between."""
    server, _seen = await _counting_upstream()
    proxy = FaultProxy(server.sockets[0].getsockname()[1], seed=95, delay_s=(0.01, 0.02))
    proxy.set_weights(CHAOS)
    await proxy.start()
    try:
        for i in range(10):
            async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
                for path in ["/other"] * (i % 3) + ["/api/v1/sync/batches"]:
                    with contextlib.suppress(httpx.TransportError):
                        await client.post(path, content=b"x%d" % i)
        expected: dict[str, int] = {}
        for decision in plan(95, 10, CHAOS):
            expected[decision.fault.value] = expected.get(decision.fault.value, 0) + 1
        tracked = proxy.stats()["tracked"]
        assert {k: tracked.get(k, 0) for k in expected} == expected
        assert tracked["requests"] == 10
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()
