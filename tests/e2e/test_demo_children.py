"""No process outlives its parent (issue 14): `iotsphere demo` killed with SIGKILL, where none of
its cleanup runs, leaves neither its `cloud serve` child nor the gateway's Mosquitto behind."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import IOTSPHERE, REPO
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)  # a zombie has exited, unreaped
    except psutil.NoSuchProcess:
        return False


def test_sigkilled_demo_leaves_no_child_running(tmp_path: Path) -> None:
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [*IOTSPHERE, "demo", "--data-dir", str(tmp_path / "demo"), "--rate", "2",
         "--mqtt-port", str(free_port()), "--port", str(free_port()),
         "--coap-port", "0", "--http-port", "0"],
        stdout=subprocess.DEVNULL, stderr=log, cwd=REPO,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        # the banner is printed once the cloud is up and the gateway (with Mosquitto) is ready
        wait_for(
            lambda: (
                "IoTSphere gateway demo:" in (tmp_path / "demo.log").read_text()
                or demo.poll() is not None
            ),
            "the demo to start",
            timeout_s=60,
        )
        assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
        children = psutil.Process(demo.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("cloud serve" in c for c in commands), commands
        assert any("mosquitto" in c for c in commands), commands
        demo.send_signal(signal.SIGKILL)
        demo.wait(10)
        wait_for(
            lambda: not any(_alive(c) for c in children),
            "the demo's children to exit after it was killed",
            timeout_s=30,
        )
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        log.close()
        for child in children:  # when the test failed: leave nothing behind for the next ones
            if _alive(child):
                child.kill()
