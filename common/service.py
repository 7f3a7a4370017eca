"""`iotsphere gateway|cloud service install|uninstall`: a systemd unit and what it needs.

install (as root): the system user `iotsphere` (home /var/lib/iotsphere, no login shell), the
data dir /var/lib/iotsphere/SIDE (0750, owned by it), a commented default config in
/etc/iotsphere (never overwritten), the unit /etc/systemd/system/iotsphere-SIDE.service
(Type=notify with a watchdog: common/sd_notify.py; hardened; logs to journald), then
`systemctl daemon-reload` and `enable --now` when systemd runs (else it says what to run).
`--root DIR` writes the files under DIR and touches neither users nor systemd (tests, images).
uninstall removes the unit and keeps data and config unless --purge.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.cli import CliError

USER = "iotsphere"
HOME = Path("/var/lib/iotsphere")
CONFIG_DIR = Path("/etc/iotsphere")
UNIT_DIR = Path("/etc/systemd/system")
NOFILE = 16384  # docs/decisions/listener-caps.md: the default caps' 9,344 and room to spare
WATCHDOG_S = 30  # the processes ping every 15 s from their event loop


@dataclass(frozen=True)
class ServiceSide:
    name: str  # "gateway" | "cloud": the unit is iotsphere-{name}.service
    description: str
    command: tuple[str, ...]  # after the executable, e.g. ("gateway", "run")
    config_name: str  # in /etc/iotsphere
    default_config: str
    # True: the process reads the config from its data dir, where a symlink points at it;
    # False: it is the unit's EnvironmentFile= (and $IOTSPHERE_ARGS adds flags)
    config_in_data_dir: bool
    # the installed config (a path under --root) -> whether it sets a port below 1024
    privileged_ports: Callable[[Path, Path], bool]

    @property
    def unit_name(self) -> str:
        return f"iotsphere-{self.name}.service"

    @property
    def data_dir(self) -> Path:
        return HOME / self.name


def under(root: Path, path: Path) -> Path:
    """`path` (absolute) inside `root`."""
    return root / path.relative_to("/")


def executable() -> list[str]:
    """How to start this very `iotsphere`: its script, else this Python with -m common.cli."""
    script = Path(sys.argv[0])
    if script.name == "iotsphere" and os.access(script, os.X_OK):
        return [str(script.resolve())]
    return [os.path.abspath(sys.executable), "-m", "common.cli"]


def _quote(word: str) -> str:
    return f'"{word}"' if any(c in word for c in " \t\"'\\$%") else word


_HOMES = ("/home/", "/root/", "/run/user/")


def render_unit(side: ServiceSide, exe: list[str], *, privileged: bool) -> str:
    """The unit file. Hardening: read-only system, writes only under /var/lib/iotsphere, no
    capabilities (unless a configured port is below 1024), IP and unix sockets only."""
    args = [*exe, *side.command, "--data-dir", str(side.data_dir)]
    env_file = []
    if not side.config_in_data_dir:
        env_file = [f"EnvironmentFile=-{CONFIG_DIR / side.config_name}"]
        args.append("$IOTSPHERE_ARGS")  # systemd splits it into words; unset: nothing
    caps = (
        ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
        if privileged
        else ["CapabilityBoundingSet="]
    )
    # A venv in a home directory stays reachable (read-only); /opt/iotsphere is the better home.
    protect_home = "read-only" if exe[0].startswith(_HOMES) else "true"
    lines = [
        f"# Written by `iotsphere {side.name} service install`; "
        f"`iotsphere {side.name} service uninstall` removes it.",
        "[Unit]",
        f"Description={side.description}",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={' '.join(_quote(a) if a != '$IOTSPHERE_ARGS' else a for a in args)}",
        *env_file,
        f"Environment=IOTSPHERE_DATA_DIR={side.data_dir}",
        f"User={USER}",
        f"Group={USER}",
        "UMask=0027",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=120",
        "TimeoutStopSec=60",
        f"WatchdogSec={WATCHDOG_S}",
        f"LimitNOFILE={NOFILE}",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier=iotsphere-{side.name}",
        "ProtectSystem=strict",
        f"ReadWritePaths={HOME}",
        f"ProtectHome={protect_home}",
        "PrivateTmp=true",
        "PrivateDevices=true",
        "NoNewPrivileges=true",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectKernelLogs=true",
        "ProtectControlGroups=true",
        "ProtectClock=true",
        "ProtectHostname=true",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=true",
        "RestrictRealtime=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        *caps,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _say(message: str) -> None:
    print(message)


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CliError(f"{cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise CliError(f"`{' '.join(cmd)}` failed: {detail[-1] if detail else done.returncode}")


def _ensure_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        _run(["useradd", "--system", "--user-group", "--home-dir", str(HOME), "--no-create-home",
              "--shell", nologin, "--comment", "IoTSphere services", USER])  # fmt: skip
        _say(f"created the system user {USER}")
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


def _check_root(root: Path | None, side: ServiceSide, action: str) -> None:
    if root is None and os.geteuid() != 0:
        raise CliError(
            f"`service {action}` must run as root: sudo iotsphere {side.name} service {action}"
            " (or --root DIR to write the files under DIR)"
        )


def _make_dir(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if owner is not None:
        os.chown(path, *owner)


def _write_config(side: ServiceSide, base: Path, owner: tuple[int, int] | None) -> Path:
    """The default config, unless one exists; the gateway's data dir gets a symlink to it."""
    config = under(base, CONFIG_DIR / side.config_name)
    _make_dir(config.parent, 0o755, None)
    if config.exists():
        _say(f"kept {config} (not overwritten)")
    else:
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(side.default_config)
        if owner is not None:
            os.chown(config, 0, owner[1])  # root's, readable by the service's group only
        _say(f"wrote {config}")
    if side.config_in_data_dir:
        link = under(base, side.data_dir / side.config_name)
        if link.is_symlink() or not link.exists():
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(config, link.parent))
        else:
            _say(f"note: {link} exists and is what the {side.name} reads, not {config}")
    return config


def install(side: ServiceSide, root: Path | None) -> int:
    _check_root(root, side, "install")
    base = root or Path("/")
    owner = _ensure_user() if root is None else None
    _make_dir(under(base, HOME), 0o750, owner)
    data = under(base, side.data_dir)
    _make_dir(data, 0o750, owner)
    _say(f"data in {data}")
    config = _write_config(side, base, owner)
    exe = executable()
    if exe[0].startswith(_HOMES):
        _say(
            f"warning: {exe[0]} is in a home directory; the user {USER} must be able to read"
            " it (a venv in /opt/iotsphere avoids this)"
        )
    unit = under(base, UNIT_DIR / side.unit_name)
    unit.parent.mkdir(parents=True, exist_ok=True)
    text = render_unit(side, exe, privileged=side.privileged_ports(base, config))
    unit.write_text(text)
    unit.chmod(0o644)
    _say(f"wrote {unit}")
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", side.unit_name]]
    if root is None and _systemd_running():
        for cmd in commands:
            _run(cmd)
        _say(f"started {side.unit_name}; its log: journalctl -u {side.unit_name}")
    else:
        _say(f"systemd is not managing this system; on the target run: "
             f"{' && '.join(' '.join(c) for c in commands)}")  # fmt: skip
    return 0


def uninstall(side: ServiceSide, root: Path | None, purge: bool) -> int:
    _check_root(root, side, "uninstall")
    base = root or Path("/")
    live = root is None and _systemd_running()
    unit = under(base, UNIT_DIR / side.unit_name)
    if live and unit.exists():
        _run(["systemctl", "disable", "--now", side.unit_name])
    if unit.exists():
        unit.unlink()
        _say(f"removed {unit}")
    else:
        _say(f"{unit} was not installed")
    if live:
        _run(["systemctl", "daemon-reload"])
    data, config = under(base, side.data_dir), under(base, CONFIG_DIR / side.config_name)
    if not purge:
        _say(f"kept {data} and {config} (--purge removes them)")
        return 0
    shutil.rmtree(data, ignore_errors=True)
    config.unlink(missing_ok=True)
    _say(f"removed {data} and {config}")
    for empty in (under(base, CONFIG_DIR), under(base, HOME)):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only when the other side left nothing there
    others = list(under(base, UNIT_DIR).glob("iotsphere-*.service"))
    if root is None and not others:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            return 0
        _run(["userdel", USER])
        _say(f"removed the system user {USER}")
    return 0


def register_service(sub: argparse._SubParsersAction, side: ServiceSide) -> None:  # type: ignore[type-arg]
    """`iotsphere SIDE service install|uninstall`, added to the side's subcommands."""
    service = sub.add_parser("service", help=f"install the {side.name} as a systemd service")
    ssub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    root_help = "write the files under DIR instead of /; no user, no systemctl"
    inst = ssub.add_parser(
        "install",
        help=f"system user, {side.data_dir}, {CONFIG_DIR / side.config_name}, "
        f"{UNIT_DIR / side.unit_name}, enabled and started (as root)",
    )
    inst.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    inst.set_defaults(handler=lambda args: install(side, args.root))
    uninst = ssub.add_parser("uninstall", help="stop and remove the unit; keeps data and config")
    uninst.add_argument("--root", type=Path, metavar="DIR", help=root_help)
    uninst.add_argument("--purge", action="store_true", help="also remove data and config")
    uninst.set_defaults(handler=lambda args: uninstall(side, args.root, args.purge))
