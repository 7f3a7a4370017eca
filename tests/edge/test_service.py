"""`iotsphere gateway run` under a Type=notify unit (issue 14, item 2): READY=1 once its
listeners and broker are up, WATCHDOG=1 from its event loop, STOPPING=1 on SIGTERM, all from
the gateway's own process; and Mosquitto's log goes to the gateway's log, not a file."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import IOTSPHERE
from tests.support.notify_socket import notified_process, receive, sigterm_says_stopping
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(90)


def test_gateway_run_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = data_dir / "gateway.log"
    argv = [*IOTSPHERE, "gateway", "run", "--data-dir", str(data_dir), "--bind", "127.0.0.1",
            "--mqtt-port", str(free_port()), "--http-port", "0", "--coap-port", "0",
            "--mqtts-port", "0", "--https-port", "0"]  # fmt: skip
    with notified_process(argv, tmp_path, log) as (sock, proc):
        # from the gateway itself: Mosquitto (built with systemd support) never inherits it
        assert receive(sock, 60) == ("READY=1\nSTATUS=gateway ready", proc.pid)
        assert "gateway ready" in log.read_text()  # listeners and broker were up first
        started = time.monotonic()
        pings = [receive(sock, 5) for _ in range(3)]  # every 0.5 s: half of WATCHDOG_USEC
        assert pings == [("WATCHDOG=1", proc.pid)] * 3
        assert time.monotonic() - started < 3
        sigterm_says_stopping(sock, proc)
    # Mosquitto's own lines, through the gateway's log (journald under systemd), no file
    assert "iotsphere.broker: mosquitto: " in log.read_text()
    assert not (data_dir / "broker" / "mosquitto.log").exists()


async def test_a_broker_that_cannot_start_says_why_from_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mosquitto's error lines (now on its stderr, no log file) end up in the BrokerError."""
    from edge.ingest.mqtt import broker

    monkeypatch.setattr(broker, "find_dynsec_plugin", lambda: str(tmp_path / "missing.so"))
    mosquitto = broker.ManagedMosquitto(tmp_path / "broker", free_port())
    mosquitto.prepare([], broker.BrokerCredentials.generate())
    with pytest.raises(broker.BrokerError, match=r"exited with \d+: .*Unable to load auth plugin"):
        await mosquitto.start(ready_timeout_s=10)
