"""The receiving end of systemd's notify socket, for tests of Type=notify processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def receive(sock: socket.socket, timeout_s: float) -> tuple[str, int]:
    """One notification and the pid of its sender (SCM_CREDENTIALS: SO_PASSCRED is set)."""
    sock.settimeout(timeout_s)
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = -1
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    return data.decode(), pid


@contextlib.contextmanager
def notified_process(
    argv: list[str], tmp_path: Path, log: Path
) -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    """argv started as systemd starts a Type=notify unit with WatchdogSec=1 (NOTIFY_SOCKET, a
    socket bound here; WATCHDOG_USEC), its stderr in `log`; killed at the end if still alive."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="1000000")
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab")
        )
        try:
            yield sock, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def sigterm_says_stopping(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: STOPPING=1 from the process itself (after any watchdog pings), then exit 0."""
    proc.send_signal(signal.SIGTERM)
    while (message := receive(sock, 10))[0] == "WATCHDOG=1":
        pass
    assert message == ("STOPPING=1", proc.pid)
    assert proc.wait(30) == 0
