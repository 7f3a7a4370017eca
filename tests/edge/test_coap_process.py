"""CoAP against `iotsphere gateway run` in a subprocess: libcoap's client, a fuzzer, kill -9."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import duckdb
import pytest
from aiocoap import Code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import IOTSPHERE, REPO, GatewayProcess, cli_json
from tests.support.coap import coap_client, post_datagram, udp_socket
from tests.support.ports import restartable_port

COAP_CLIENT = shutil.which("coap-client-notls") or shutil.which("coap-client")
needs_libcoap = pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap3-bin not installed")


def coap_client_post(port: int, token: str, payload: str, fmt: int, *extra: str) -> str:
    """libcoap's client: "" on success, else the error line ("4.00 {problem}") it prints on
    stderr (its own warnings are log lines starting with a date)."""
    assert COAP_CLIENT is not None
    proc = subprocess.run(
        [COAP_CLIENT, "-m", "post", "-B", "10", "-t", str(fmt), "-e", payload, *extra,
         f"coap://127.0.0.1:{port}/api/v1/{token}/telemetry"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln[:1].isdigit() and ln[1:2] == "."]
    return "\n".join(lines)


@needs_libcoap
def test_libcoap_client_json_senml_errors_and_block1(gateway_process: GatewayProcess) -> None:
    gp = gateway_process
    gp.start()
    port = gp.coap_port()
    dev = cli_json("gateway", "device", "add", "lc1", "--type", "thermo", data_dir=gp.data_dir)
    tok = dev["token"]
    assert coap_client_post(port, tok, '{"temperature": 21.5}', 50) == ""  # 2.04: no output
    senml = '[{"bn":"lc1/","bt":1764300000,"n":"temperature","v":22.5}]'
    assert coap_client_post(port, tok, senml, 110) == ""
    out = coap_client_post(port, tok, '{"temperature": 999}', 50)  # above max
    assert out.startswith("4.00 ")
    assert json.loads(out[5:])["status"] == 400
    assert coap_client_post(port, "nope", '{"temperature": 1}', 50).startswith("4.01 ")
    assert coap_client_post(port, tok, "<t/>", 41).startswith("4.15 ")
    # Block1 with 64-byte blocks
    big = json.dumps([{"ts": 1764300100000 + i, "values": {"temperature": i}} for i in range(40)])
    assert coap_client_post(port, tok, big, 50, "-b", "64") == ""
    rows = cli_json(
        "gateway", "readings", "--device", "lc1", "--limit", "100", data_dir=gp.data_dir
    )
    assert sorted(r["value"] for r in rows) == sorted([21.5, 22.5, *map(float, range(40))])
    status = cli_json("gateway", "status", data_dir=gp.data_dir)["coap"]
    assert status["accepted"] == 3 and status["rejected"] == 2 and status["unauthorized"] == 1


# -- fuzz ----------------------------------------------------------------------------------------

# The payload every fuzzed request carries: 0xff bytes are invalid in every accepted format
# (and so is every suffix of them), so whatever the mutation does, nothing may be stored.
JUNK = b"\xff" * 8


def _mutate(base: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    data = bytearray(base)
    for kind, where, value in edits:
        if not data:
            break
        pos = where % len(data)
        if kind == 0:
            data[pos] = value
        elif kind == 1:
            del data[pos:]
        else:
            data.insert(pos, value)
    return bytes(data)


edit = st.tuples(st.integers(0, 2), st.integers(0, 2000), st.integers(0, 255))
datagrams = st.one_of(
    st.binary(max_size=1400),
    st.tuples(st.integers(0, 0xFFFF), st.lists(edit, max_size=6), st.booleans()),
)


def test_fuzzed_datagrams_never_crash_stall_or_store(gateway_process: GatewayProcess) -> None:
    gp = gateway_process
    gp.start()
    port = gp.coap_port()
    dev = cli_json("gateway", "device", "add", "fz", "--type", "thermo", data_dir=gp.data_dir)
    sock = udp_socket(timeout_s=0.05)
    target = ("127.0.0.1", port)
    sent = 0

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(datagrams)
    def send(item: bytes | tuple[int, list[tuple[int, int, int]], bool]) -> None:
        nonlocal sent
        if isinstance(item, bytes):
            data = item
        else:
            mid, edits, confirmable = item
            base = post_datagram(dev["token"], b"", mid=mid, confirmable=confirmable)
            data = _mutate(base, edits) + JUNK
        sock.sendto(data, target)
        sent += 1
        try:  # drain answers so the socket buffer never fills
            while True:
                sock.recvfrom(4096)
        except (TimeoutError, BlockingIOError, ConnectionRefusedError):
            pass

    try:
        send()
    finally:
        sock.close()
    assert sent >= 200
    assert gp.proc is not None and gp.proc.poll() is None, "the gateway died"

    async def still_answers() -> Code:
        async with coap_client(port) as c:
            return (await c.post(dev["token"], b'{"temperature": 7}', 50)).code

    assert asyncio.run(still_answers()) == Code.CHANGED
    rows = cli_json("gateway", "readings", "--device", "fz", data_dir=gp.data_dir)
    assert [r["value"] for r in rows] == [7.0]  # nothing from the fuzzed requests


# -- kill -9 -------------------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_kill9_during_confirmable_stream_keeps_every_2_04(data_dir: Path, tmp_path: Path) -> None:
    """Every reading the simulator got 2.04 for is stored exactly once after a kill -9 and
    restart; the simulator resends what got no answer (as firmware does)."""
    gp = GatewayProcess(data_dir, restartable_port(), coap_port=free_udp_port())  # restarted on it
    per_device, devices = 1500, 2
    try:
        creds = [
            cli_json("gateway", "device", "add", f"k{i}", "--type", "thermo", data_dir=data_dir)
            for i in range(devices)
        ]
        (tmp_path / "creds.json").write_text(json.dumps(creds))
        acked_log = tmp_path / "acked.log"
        gp.start()
        sim = subprocess.Popen(
            [*IOTSPHERE, "sim", "coap", "--credentials", str(tmp_path / "creds.json"),
             "--port", str(gp.coap_port_flag), "--count", str(per_device), "--saturate",
             "--inflight", "32", "--metrics", "temperature", "--ack-timeout", "0.3",
             "--acked-log", str(acked_log), "--json"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _lines(acked_log) < 600:
            assert sim.poll() is None, sim.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the simulator made no progress"
            time.sleep(0.02)
        gp.stop(signal.SIGKILL)
        answered_before_kill = _acked(acked_log)
        gp.start()
        out, err = sim.communicate(timeout=120)
        assert sim.returncode == 0, err[-2000:]
        stats = json.loads(out)
        assert stats["retransmissions"] > 0  # the kill did interrupt requests in flight
        assert gp.stop() == 0
    finally:
        if gp.proc is not None and gp.proc.poll() is None:
            gp.stop()
    acked = _acked(acked_log)
    assert len(acked) == devices * per_device  # all answered 2.04 in the end
    con = duckdb.connect(str(data_dir / "gateway.duckdb"), read_only=True)
    rows = con.execute("SELECT device_id, ts, count(*) FROM readings GROUP BY ALL").fetchall()
    con.close()
    assert [r for r in rows if r[2] != 1] == []  # each stored exactly once
    stored = {(d, ts) for d, ts, _n in rows}
    assert answered_before_kill <= stored  # nothing answered before the kill was lost
    assert stored == acked


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _acked(path: Path) -> set[tuple[str, int]]:
    out = set()
    for line in path.read_text().splitlines():
        device_id, _seq, ts = line.split()
        out.add((device_id, int(ts)))
    return out
