"""A plain Mosquitto (password file, no dynsec) on a free loopback port, for tests of MQTT
pieces that run without the gateway: the front, our MQTT client, the simulator."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.support.ports import restartable_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class PlainBroker:
    """start()/stop(kill=...) may be called repeatedly; the port stays the same."""

    def __init__(
        self, workdir: Path, users: Mapping[str, str], *, open_access: bool = False
    ) -> None:
        if not Path(MOSQUITTO).exists() or not shutil.which("mosquitto_passwd"):
            raise RuntimeError("mosquitto and mosquitto_passwd are required (./dev.sh setup)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = restartable_port()
        passwd = workdir / "passwd"
        for index, (user, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                ["mosquitto_passwd", "-b", *create, str(passwd), user, password],
                check=True,
                capture_output=True,
            )
        access = (
            "allow_anonymous true\n"
            if open_access  # accepts any username and password: a misconfigured broker
            else f"allow_anonymous false\npassword_file {passwd}\n"
        )
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} {self.host}\n{access}persistence false\n"
            # Started as root, Mosquitto would switch to user 'mosquitto', which cannot read
            # pytest's private tmp dir.
            f"user {getpass.getuser()}\n"
        )
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port)):
                return
            time.sleep(0.01)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def running_broker(workdir: Path, users: Mapping[str, str]) -> Iterator[PlainBroker]:
    broker = PlainBroker(workdir, users)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
