"""Shared fixtures: a real gateway (managed Mosquitto, DuckDB) on loopback with free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge.app.config import GatewayConfig, LockoutConfig, load_config
from edge.app.gateway import Gateway
from tests.support.ports import restartable_port

# The private PostgreSQL fixtures: pg_cluster (session), pg_url (a fresh database per test).
pytest_plugins = ["tests.support.postgres"]

REPO = Path(__file__).resolve().parent.parent
IOTSPHERE = [sys.executable, "-m", "common.cli"]


def cli(
    *args: str, data_dir: Path, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `iotsphere ...` as a user would, in a subprocess."""
    proc = subprocess.run(
        [*IOTSPHERE, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        input=input,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"iotsphere {' '.join(args)} failed: {proc.stderr}")
    return proc


def cli_json(*args: str, data_dir: Path) -> Any:
    return json.loads(cli(*args, "--json", data_dir=data_dir).stdout)


THERMO_TOML = """
[lockout]
max_failures_per_user = 10
max_failures_per_address = 1000
cooldown_s = 300

[device_types.thermo.metrics.temperature]
type = "number"
unit = "°C"
min = -40
max = 85
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "gateway.toml").write_text(THERMO_TOML)
    return d


@pytest.fixture
def gateway_config(data_dir: Path) -> GatewayConfig:
    # coap_port 0: the OS picks a free UDP port (Gateway.coap_port tells which)
    # http_port 0 likewise (Gateway.http_port)
    return local_config(data_dir, restartable_port())


def local_config(data_dir: Path, mqtt_port: int) -> GatewayConfig:
    """A gateway on loopback: this MQTT port, any free CoAP and HTTP ports, the TLS ports off
    (tests that want them set mqtts_port/https_port)."""
    return load_config(
        data_dir, bind="127.0.0.1", mqtt_port=mqtt_port, coap_port=0, http_port=0,
        mqtts_port=0, https_port=0,
    )  # fmt: skip


class GatewayProcess:
    """`iotsphere gateway run` in a subprocess, as an installer runs it."""

    def __init__(
        self, data_dir: Path, mqtt_port: int, coap_port: int = 0, http_port: int = 0
    ) -> None:
        self.data_dir = data_dir
        self.mqtt_port = mqtt_port
        self.coap_port_flag = coap_port  # 0: any free UDP port; see coap_port()
        self.http_port_flag = http_port  # 0: any free TCP port; see http_port()
        self.mqtts_port_flag = 0  # TLS ports: 0 = off
        self.https_port_flag = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "gateway.log"
        # (soft, hard) RLIMIT_NOFILE for the gateway (and so its Mosquitto); None: inherited
        self.nofile: tuple[int, int] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        # `ulimit -n` as a shell would set it (no preexec_fn: unsafe in a threaded parent)
        limit = [] if self.nofile is None else ["prlimit", "--nofile={}:{}".format(*self.nofile)]
        self.proc = subprocess.Popen(
            [
                *limit,
                *IOTSPHERE,
                "gateway",
                "run",
                "--data-dir",
                str(self.data_dir),
                "--bind",
                "127.0.0.1",
                "--mqtt-port",
                str(self.mqtt_port),
                "--coap-port",
                str(self.coap_port_flag),
                "--http-port",
                str(self.http_port_flag),
                "--mqtts-port",
                str(self.mqtts_port_flag),
                "--https-port",
                str(self.https_port_flag),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            # Its own process group with its Mosquitto: power_cut() kills both at once.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log.read_text()[-2000:]}")
            if "gateway ready" in self.log.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready: {self.log.read_text()[-2000:]}")

    def coap_port(self) -> int:
        """The CoAP port the running gateway bound (from `gateway status`)."""
        return int(cli_json("gateway", "status", data_dir=self.data_dir)["coap"]["port"])

    def http_port(self) -> int:
        """The HTTP port the running gateway bound (from `gateway status`)."""
        return int(cli_json("gateway", "status", data_dir=self.data_dir)["http"]["port"])

    def power_cut(self) -> None:
        """What a power cut does to the processes: the gateway and its Mosquitto SIGKILLed
        together (the whole process group), nothing of either gets to save anything."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.write_text(self.log.read_text().replace("gateway ready", "gateway was ready"))
        _kill_stale_broker(self.data_dir)  # in case it was not in the group

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        # the ready marker must not match the next start
        self.log.write_text(self.log.read_text().replace("gateway ready", "gateway was ready"))
        return code


@pytest.fixture
def gateway_process(data_dir: Path) -> Iterator[GatewayProcess]:
    gp = GatewayProcess(data_dir, restartable_port())
    yield gp
    if gp.proc is not None and gp.proc.poll() is None:
        gp.stop()
    _kill_stale_broker(data_dir)


def _kill_stale_broker(data_dir: Path) -> None:
    pid_file = data_dir / "broker" / "mosquitto.pid"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.fixture
async def gateway(gateway_config: GatewayConfig) -> AsyncIterator[Gateway]:
    """An in-process gateway (for tests that inspect it directly)."""
    async with running(
        replace(gateway_config, lockout=LockoutConfig(max_failures_per_address=1000))
    ) as gw:
        yield gw


@contextlib.asynccontextmanager
async def running(cfg: GatewayConfig) -> AsyncIterator[Gateway]:
    """A gateway in this process until the block ends; its start failure is raised here."""
    gw = Gateway(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    ready = asyncio.create_task(gw.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    try:
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
