"""`iotsphere gateway|cloud service install|uninstall --root DIR` (issue 14, item 2) and the
stdlib sd_notify client: what is written, what is kept, and that systemd accepts the unit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import main
from common.sd_notify import SdNotifier
from tests.conftest import REPO

UNIT = Path("etc/systemd/system/iotsphere-gateway.service")
CLOUD_UNIT = Path("etc/systemd/system/iotsphere-cloud.service")
CONFIG = Path("etc/iotsphere/gateway.toml")
DATA = Path("var/lib/iotsphere/gateway")


def _iotsphere(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an installer runs it (its path goes in ExecStart)."""
    script = Path(sys.executable).parent / "iotsphere"
    if not script.exists():
        pytest.skip(f"no console script at {script} (pip install -e .)")
    return subprocess.run(
        [str(script), *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def _verify(unit: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    # an unknown or misspelt key is only a warning on stderr; a missing ExecStart binary fails
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_install_writes_unit_config_and_data_dir_and_keeps_an_edited_config(
    tmp_path: Path,
) -> None:
    done = _iotsphere("gateway", "service", "install", "--root", str(tmp_path))
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / UNIT).read_text()
    exe = str((Path(sys.executable).parent / "iotsphere").resolve())
    assert f"ExecStart={exe} gateway run --data-dir /var/lib/iotsphere/gateway\n" in unit
    for line in ("Type=notify", "WatchdogSec=30", "User=iotsphere", "Restart=on-failure",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/iotsphere", "ProtectHome=true",
                 "NoNewPrivileges=true", "PrivateTmp=true", "ProtectKernelTunables=true",
                 "ProtectKernelModules=true", "LimitNOFILE=16384", "CapabilityBoundingSet=",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
                 "StandardOutput=journal", "StandardError=journal"):  # fmt: skip
        assert f"\n{line}\n" in unit
    assert "AmbientCapabilities" not in unit
    assert "systemctl daemon-reload && systemctl enable --now" in done.stdout
    data = tmp_path / DATA
    assert data.is_dir() and data.stat().st_mode & 0o777 == 0o750
    config = tmp_path / CONFIG
    assert config.stat().st_mode & 0o777 == 0o640
    # the gateway reads gateway.toml in its data dir: a relative link to /etc's, in any root
    assert (data / "gateway.toml").resolve() == config.resolve()
    _verify(tmp_path / UNIT)

    config.write_text("[gateway]\nmqtt_port = 883\n")  # the installer's own, privileged
    again = _iotsphere("gateway", "service", "install", "--root", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert config.read_text() == "[gateway]\nmqtt_port = 883\n"
    assert "kept" in again.stdout
    unit = (tmp_path / UNIT).read_text()
    assert "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n" in unit
    assert "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in unit
    _verify(tmp_path / UNIT)


def test_the_default_config_is_one_the_gateway_loads(tmp_path: Path) -> None:
    from edge.app.config import GatewayConfig, load_config

    assert main(["gateway", "service", "install", "--root", str(tmp_path)]) == 0
    assert load_config(tmp_path / DATA) == GatewayConfig(data_dir=tmp_path / DATA)


def test_uninstall_removes_the_unit_and_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert main(["gateway", "service", "install", "--root", root]) == 0
    (tmp_path / DATA / "gateway.duckdb").write_bytes(b"readings")
    assert main(["gateway", "service", "uninstall", "--root", root]) == 0
    assert not (tmp_path / UNIT).exists()
    assert (tmp_path / DATA / "gateway.duckdb").read_bytes() == b"readings"
    assert (tmp_path / CONFIG).exists()
    assert main(["gateway", "service", "uninstall", "--root", root, "--purge"]) == 0
    assert not (tmp_path / DATA).exists() and not (tmp_path / CONFIG).exists()


def test_cloud_install_uses_its_environment_file(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert main(["cloud", "service", "install", "--root", root]) == 0
    unit = (tmp_path / CLOUD_UNIT).read_text()
    assert " cloud serve --data-dir /var/lib/iotsphere/cloud $IOTSPHERE_ARGS\n" in unit
    assert "\nEnvironmentFile=-/etc/iotsphere/cloud.env\n" in unit
    assert (tmp_path / "var/lib/iotsphere/cloud").is_dir()
    _verify(tmp_path / CLOUD_UNIT)
    (tmp_path / "etc/iotsphere/cloud.env").write_text("IOTSPHERE_ARGS=--bind 0.0.0.0 --port 443\n")
    assert main(["cloud", "service", "install", "--root", root]) == 0
    assert "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n" in (tmp_path / CLOUD_UNIT).read_text()


def test_install_without_root_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["gateway", "service", "install"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sudo iotsphere gateway service install" in err


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_reaches_a_path_or_abstract_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"iotsphere-test-{os.getpid()}"
            sock.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            sock.bind(address)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        notifier = SdNotifier.from_env()
        assert "NOTIFY_SOCKET" not in os.environ  # children never speak for the service
        assert notifier.watchdog_s == 2.0
        notifier.ready("up")
        assert sock.recv(256) == b"READY=1\nSTATUS=up"


def test_sd_notify_without_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    notifier = SdNotifier.from_env()
    assert notifier.send("READY=1") is False and notifier.watchdog_s is None
