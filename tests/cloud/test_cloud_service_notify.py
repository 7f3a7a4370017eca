"""`iotsphere cloud serve` under a Type=notify unit (issue 14, item 2): READY=1 once it
listens, WATCHDOG=1 from its event loop, STOPPING=1 on SIGTERM, from its own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import IOTSPHERE
from tests.support.notify_socket import notified_process, receive, sigterm_says_stopping
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(90)


def test_cloud_serve_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    log = tmp_path / "cloud.log"
    argv = [*IOTSPHERE, "cloud", "serve", "--data-dir", str(tmp_path / "data"),
            "--port", str(free_port())]  # fmt: skip
    with notified_process(argv, tmp_path, log) as (sock, proc):
        assert receive(sock, 60) == ("READY=1\nSTATUS=cloud ready", proc.pid)
        assert "cloud ready" in log.read_text()
        assert receive(sock, 5) == ("WATCHDOG=1", proc.pid)
        sigterm_says_stopping(sock, proc)
