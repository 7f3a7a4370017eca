"""The gateway's private Mosquitto: configuration, dynamic-security state, process lifecycle.

DuckDB is the source of truth for device credentials. At every broker start the gateway writes
the dynamic-security file from DuckDB (the stored PBKDF2 hashes are in dynsec's own format), so
devices added while the gateway was stopped work at once and revoked ones are gone. While the
broker runs, changes go through the plugin's $CONTROL topic (edge.ingest.mqtt.dynsec).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import glob
import json
import logging
import os
import secrets
import signal
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.parent_death import parent_death_signal

log = logging.getLogger("iotsphere.broker")

MOSQUITTO = "/usr/sbin/mosquitto"
INGRESS_USER = "iotsphere-ingress"
ADMIN_USER = "iotsphere-admin"


class BrokerError(Exception):
    pass


def find_dynsec_plugin() -> str:
    for pattern in (
        "/usr/lib/*/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise BrokerError(
        "Mosquitto's dynamic-security plugin was not found; install Debian's 'mosquitto' package"
    )


@dataclass(frozen=True, slots=True)
class BrokerCredentials:
    """Per-start random passwords of the gateway's own broker users (never written in clear)."""

    ingress_password: str
    admin_password: str

    @classmethod
    def generate(cls) -> BrokerCredentials:
        return cls(secrets.token_urlsafe(24), secrets.token_urlsafe(24))


def device_role(device_id: str) -> dict[str, Any]:
    """A device may publish and subscribe only under devices/{its id}/ (subscriptions also as
    MQTT 5 shared subscriptions, which Mosquitto checks with their $share/GROUP/ prefix)."""
    topic = f"devices/{device_id}/#"
    shared = f"$share/+/{topic}"
    return {
        "rolename": f"device-{device_id}",
        "acls": [
            {"acltype": "publishClientSend", "topic": topic, "allow": True, "priority": 0},
            {"acltype": "publishClientReceive", "topic": topic, "allow": True, "priority": 0},
            *(
                {"acltype": kind, "topic": t, "allow": True, "priority": 0}
                for kind in ("subscribePattern", "unsubscribePattern")
                for t in (topic, shared)
            ),
        ],
    }


def _hashed_client(user: str, password: str, role: str) -> dict[str, Any]:
    from edge.security.credentials import hash_token  # local: keeps this module import-light

    h = hash_token(password)
    return {
        "username": user,
        "password": h.pw_hash,
        "salt": h.pw_salt,
        "iterations": h.pw_iterations,
        "roles": [{"rolename": role}],
    }


def render_dynsec(devices: Iterable[Mapping[str, Any]], creds: BrokerCredentials) -> dict[str, Any]:
    clients = [
        _hashed_client(ADMIN_USER, creds.admin_password, "iotsphere-admin"),
        _hashed_client(INGRESS_USER, creds.ingress_password, "iotsphere-ingress"),
    ]
    roles: list[dict[str, Any]] = [
        {
            "rolename": "iotsphere-admin",
            "acls": [
                {"acltype": t, "topic": "$CONTROL/dynamic-security/#", "allow": True}
                for t in ("publishClientSend", "publishClientReceive", "subscribePattern")
            ],
        },
        {
            "rolename": "iotsphere-ingress",
            "acls": [
                {"acltype": "subscribePattern", "topic": "devices/+/telemetry", "allow": True},
                {"acltype": "publishClientReceive", "topic": "devices/#", "allow": True},
                {"acltype": "publishClientSend", "topic": "devices/#", "allow": True},
            ],
        },
    ]
    for dev in devices:
        if dev["status"] != "active":
            continue
        role = device_role(dev["device_id"])
        roles.append(role)
        clients.append(
            {
                "username": dev["device_id"],
                "password": dev["pw_hash"],
                "salt": dev["pw_salt"],
                "iterations": dev["pw_iterations"],
                "roles": [{"rolename": role["rolename"]}],
            }
        )
    return {
        "clients": clients,
        "groups": [],
        "roles": roles,
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


def render_config(broker_dir: Path, port: int, plugin: str, max_queued: int) -> str:
    return "\n".join(
        [
            "# Written by the IoTSphere gateway at every start; edits are overwritten.",
            "per_listener_settings false",
            # Mosquitto started as root switches to user 'mosquitto', which cannot write the
            # gateway's data dir: run it as whoever runs the gateway.
            f"user {getpass.getuser()}",
            "allow_anonymous false",
            f"listener {port} 127.0.0.1",
            # The MQTT front reads device PUBLISHes itself (edge.ingest.mqtt.front.telemetry): topic
            # aliases would make the broker and the front disagree on topics, and its packet
            # bound is the front's (edge.ingest.mqtt.front.stream.MAX_CLIENT_PACKET).
            "max_topic_alias 0",
            "max_packet_size 1048576",
            f"plugin {plugin}",
            f"plugin_opt_config_file {broker_dir / 'dynamic-security.json'}",
            "persistence true",
            f"persistence_location {broker_dir}/",
            "autosave_interval 60",
            # The gateway's ingress session must be able to hold hours of readings while the
            # gateway restarts; Mosquitto's default of 1000 queued messages would drop them.
            f"max_queued_messages {max_queued}",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
            f"pid_file {broker_dir / 'mosquitto.pid'}",
            # To the gateway, which logs each line (journald under systemd): no log file
            # growing on the SD card. The gateway's log lines carry the time.
            "log_dest stderr",
            "log_timestamp false",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "",
        ]
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_mosquitto(pid: int, conf: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(cmdline) and cmdline[0].endswith(b"mosquitto") and str(conf).encode() in cmdline


def stop_stale_broker(broker_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop a broker left behind by a gateway that died; True when one was stopped."""
    pid_file = broker_dir / "mosquitto.pid"
    conf = broker_dir / "mosquitto.conf"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    if not (_pid_alive(pid) and _is_our_mosquitto(pid, conf)):
        return False
    log.warning("stopping a stale Mosquitto (pid %d) left by an earlier gateway", pid)
    os.kill(pid, signal.SIGTERM)  # SIGTERM: it saves its persistence file first
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


class ManagedMosquitto:
    """One private Mosquitto process on loopback; start/stop/wait; restarts are the caller's."""

    def __init__(self, broker_dir: Path, port: int, max_queued: int = 1_000_000) -> None:
        self.dir = broker_dir
        self.port = port
        self.max_queued = max_queued
        self._proc: asyncio.subprocess.Process | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._log_tail: deque[str] = deque(maxlen=5)  # for the error of a failed start

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def prepare(self, devices: Iterable[Mapping[str, Any]], creds: BrokerCredentials) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        stop_stale_broker(self.dir)
        conf = self.dir / "mosquitto.conf"
        conf.write_text(render_config(self.dir, self.port, find_dynsec_plugin(), self.max_queued))
        dynsec = self.dir / "dynamic-security.json"
        tmp = dynsec.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(render_dynsec(devices, creds), f)
        tmp.replace(dynsec)

    async def start(self, ready_timeout_s: float = 10.0) -> None:
        if not os.access(MOSQUITTO, os.X_OK):
            raise BrokerError(f"{MOSQUITTO} not found; install Debian's 'mosquitto' package")
        self._proc = await asyncio.create_subprocess_exec(
            MOSQUITTO,
            "-c",
            str(self.dir / "mosquitto.conf"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # SIGTERM the broker if the gateway dies, even by kill -9. SIGTERM, not SIGKILL:
            # Mosquitto then writes its persistence file, so QoS 1 messages queued for the
            # gateway's session survive the gateway's crash.
            preexec_fn=parent_death_signal(signal.SIGTERM),
        )
        self._log_tail.clear()
        self._log_task = asyncio.create_task(self._forward_log(self._proc), name="mosquitto-log")
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._log_task), 2)
                raise BrokerError(
                    f"mosquitto exited with {self._proc.returncode}: "
                    f"{' / '.join(self._log_tail) or 'see ' + str(self.dir)}"
                )
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                await w.wait_closed()
                log.info("mosquitto pid %d listening on 127.0.0.1:%d", self._proc.pid, self.port)
                return
            await asyncio.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.port} in time")

    async def _forward_log(self, proc: asyncio.subprocess.Process) -> None:
        """Mosquitto's log (log_dest stderr), one gateway log line per line, until it exits."""
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._log_tail.append(line)
                say = log.warning if line.lower().startswith(("error", "warning")) else log.info
                say("mosquitto: %s", line)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            log.error("mosquitto did not stop in %.0fs; killing it", timeout_s)
            proc.kill()
            await proc.wait()
        if self._log_task is not None:  # its last lines (shutdown) reach the log
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_task, 2)
