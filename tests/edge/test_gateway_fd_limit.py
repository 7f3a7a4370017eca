"""`iotsphere gateway run` under systemd's default descriptor limit, attacked as in issue 11:
slowloris sockets on the HTTP and MQTT ports must not stop good devices, nor flood the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import GatewayProcess, cli_json

pytestmark = pytest.mark.timeout(120)

ATTACKER = "127.0.0.2"  # the attack's source; the good devices connect from 127.0.0.1
SLOWLORIS = 1_100


@pytest.fixture
def enough_fds_here() -> None:
    """This process holds 1,100 attack sockets: raise its own soft limit to its hard one."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SLOWLORIS + 500:
        pytest.skip(f"the hard descriptor limit here ({hard}) is too low for the attack")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.asynccontextmanager
async def slowloris(http_port: int, mqtt_port: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """Half the sockets send an HTTP header byte now and then, never the blank line; half send
    an MQTT CONNECT's first byte and nothing more."""

    async def open_one(i: int) -> asyncio.StreamWriter | None:
        port = http_port if i % 2 == 0 else mqtt_port
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
        except OSError:
            return None  # what the kernel refuses once the listen backlog is full
        writer.write(b"POST /api/v1/x/telemetry HTTP/1.1\r\nHost: g\r\n" if port == http_port
                     else b"\x10")  # fmt: skip
        return writer

    opened = [w for w in await asyncio.gather(*(open_one(i) for i in range(SLOWLORIS))) if w]

    async def trickle() -> None:
        while True:
            await asyncio.sleep(0.5)
            for writer in opened[::2]:
                if not writer.is_closing():
                    writer.write(b"X")

    trickling = asyncio.create_task(trickle())
    try:
        yield opened
    finally:
        trickling.cancel()
        for writer in opened:
            writer.close()


async def mosquitto_pub(port: int, user: str, token: str, payload: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", token,
        "-t", f"devices/{user}/telemetry", "-m", payload, "-q", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, err.decode()


def new_log_lines(log: Path, after: str) -> list[str]:
    text = log.read_text()
    return text[text.index(after) + len(after) :].splitlines()[1:]


async def test_1100_slowloris_sockets_under_ulimit_1024_do_not_stop_good_devices(
    gateway_process: GatewayProcess, data_dir: Path, enough_fds_here: None
) -> None:
    """Issue 11: under `ulimit -n 1024`, 1,100 slowloris sockets stopped HTTP and MQTT intake
    and asyncio logged a traceback per accept() attempt (493,844 in 63 s). Measured on the
    code before the caps: 20,288 tracebacks (9 MB) in 12 s, the good devices through only
    after ~9.4 s, when the 10 s header and CONNECT timeouts had freed descriptors."""
    mqtt_dev = cli_json("gateway", "device", "add", "m1", "--type", "thermo", data_dir=data_dir)
    http_dev = cli_json("gateway", "device", "add", "h1", "--type", "thermo", data_dir=data_dir)
    gateway_process.nofile = (1024, 1024)
    gateway_process.start()
    http_port, mqtt_port = gateway_process.http_port(), gateway_process.mqtt_port
    marker = "attack starts"
    with gateway_process.log.open("a") as log:
        log.write(f"{marker}\n")

    async with slowloris(http_port, mqtt_port) as attack:
        assert len(attack) > 1_000
        await asyncio.sleep(0.5)  # the gateway has taken what it takes of them
        started = time.monotonic()
        url = f"http://127.0.0.1:{http_port}/api/v1/{http_dev['token']}/telemetry"
        async with httpx.AsyncClient(timeout=10) as c:
            answer, (code, err) = await asyncio.gather(
                c.post(url, json={"temperature": 22.5}),
                mosquitto_pub(mqtt_port, "m1", mqtt_dev["token"], '{"temperature": 21.5}'),
            )
        took = time.monotonic() - started
        assert answer.status_code == 200, answer.text
        assert code == 0, err
        # well inside the 10 s timeouts: served at once, not after the attack's sockets expired
        assert took < 5, took
        status = cli_json("gateway", "status", data_dir=data_dir)

    conns = status["connections"]
    assert conns["fd_limit"] == 1024 and conns["fds_open"] < 1024 - conns["fd_reserve"]
    for name in ("mqtt", "http"):
        listener = conns[name]
        assert listener["refused_per_address"] > 0 and listener["accept_failures"] == 0
        # the attacker's share, and maybe a good device's connection not yet seen closed
        assert listener["open"] <= listener["max_connections_per_address"] + 1
    refused = conns["mqtt"]["refused_per_address"] + conns["mqtt"]["refused_max_connections"]
    assert status["mqtt_front"]["over_capacity"] == refused
    for device in ("m1", "h1"):
        rows = cli_json("gateway", "readings", "--device", device, data_dir=data_dir)
        assert len(rows) == 1
    lines = new_log_lines(gateway_process.log, marker)
    assert not [line for line in lines if "Traceback" in line or "out of system" in line]
    assert len(lines) <= 5, "\n".join(lines)
    assert gateway_process.stop() == 0


def test_the_gateway_raises_its_soft_limit_and_says_what_the_caps_need(
    gateway_process: GatewayProcess, data_dir: Path
) -> None:
    """systemd's default is soft 1,024 / hard 524,288: the gateway takes what the default caps
    need (9,344) itself; under a lower hard limit it sizes the caps to it and says so."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard descriptor limit here ({hard}) is below 4096")
    gateway_process.nofile = (1024, 4096)
    gateway_process.start()
    status = cli_json("gateway", "status", data_dir=data_dir)
    conns = status["connections"]
    assert (conns["fd_limit"], conns["fd_limit_wanted"]) == (4096, 9344)
    mqtt, http = conns["mqtt"], conns["http"]
    assert 2 * mqtt["max_connections"] + http["max_connections"] <= 4096 - conns["fd_reserve"]
    assert mqtt["max_connections"] > 1000 and http["max_connections"] > 250
    log = gateway_process.log.read_text()
    assert "need a limit of 9344 (LimitNOFILE" in log
    assert json.dumps(conns)  # plain JSON
    assert gateway_process.stop() == 0
