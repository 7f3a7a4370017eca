"""A gateway under measurement: a fresh data dir with N provisioned devices, `iotsphere gateway
run` as a child on free 127.0.0.1 ports, and its status read from the admin API (no CLI process
per poll)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.support.processes import Child, Processes, port_open, wait_for
from common.ports import free_port
from edge.admin.backend import admin_secret, running_gateway_url


class GatewayStatus:
    """`iotsphere gateway status` without a new interpreter per poll: its admin API."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._client: httpx.Client | None = None
        self.last_delay = 0.0  # seconds the last answer took

    def _connect(self) -> httpx.Client | None:
        if self._client is None:
            url = running_gateway_url(self._data_dir / "run")
            if url is None:
                return None
            self._client = httpx.Client(
                base_url=url,
                headers={"Authorization": f"Bearer {admin_secret(self._data_dir)}"},
                timeout=120.0,
            )
        return self._client

    def get(self) -> tuple[float, dict[str, Any]] | None:
        """(monotonic time of the answer, status), or None while the API is not up."""
        client = self._connect()
        if client is None:
            return None
        # The status query queues behind the readings in the store's mailbox: under load the
        # answer can take seconds. Its counts are read when the store gets to it, i.e. just
        # before the answer, so the answer's arrival time is the time of the figures.
        asked = time.monotonic()
        try:
            resp = client.get("/admin/status")
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        doc: dict[str, Any] = resp.json()
        answered = time.monotonic()
        self.last_delay = answered - asked
        return answered, doc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def provision(data_dir: Path, n: int, settings: Sequence[str] = ()) -> Path:
    """A fresh gateway data dir with n devices; returns the credentials file for the sims.

    Same code path as `iotsphere gateway device add` on a stopped gateway (edge.admin.ops on the
    store), in-process: a CLI run per device would cost ~0.7 s each. `settings`: KEY=VALUE
    lines for the [gateway] table of its gateway.toml.
    """
    from edge.admin import ops
    from edge.app.config import load_config
    from edge.storage.store import GatewayStore

    data_dir.mkdir(parents=True)
    # The whole fleet connects from 127.0.0.1 at once; the default per-address lockout is
    # sized for a LAN, not for a load generator on loopback.
    gateway = "".join(f"{line}\n" for line in settings)
    (data_dir / "gateway.toml").write_text(
        f"[gateway]\n{gateway}[lockout]\nmax_failures_per_address = 100000\n"
    )
    cfg = load_config(data_dir)
    store = GatewayStore(cfg.db_path, memory_limit=cfg.duckdb_memory_limit, threads=1)
    try:
        creds = [ops.add_device(store, f"bench-{i:04d}", None) for i in range(n)]
    finally:
        store.close()
    path = data_dir / "credentials.json"
    path.write_text(json.dumps([{"device_id": c["device_id"], "token": c["token"]} for c in creds]))
    return path


@contextmanager
def running_gateway(
    procs: Processes, workdir: Path, tag: str, devices: int, settings: Sequence[str] = ()
) -> Iterator[tuple[Child, GatewayStatus, int, Path]]:
    """A provisioned gateway, up (admin API and MQTT front answering): (its child, its status,
    its MQTT port, the devices' credentials file). Stopped with SIGTERM on exit."""
    data_dir = workdir / f"{tag}-gateway"
    creds = provision(data_dir, devices, settings)
    mqtt_port = free_port()
    argv = [
        sys.executable, "-m", "common.cli", "gateway", "run",
        "--data-dir", str(data_dir),
        "--bind", "127.0.0.1",
        "--mqtt-port", str(mqtt_port),
        "--http-port", str(free_port()),
        "--coap-port", str(free_port()),
        "--mqtts-port", "0", "--https-port", "0",  # TLS off: benchmarks never share 8883/8443
    ]  # fmt: skip
    gw = procs.start(f"{tag}-gateway", argv)
    status = GatewayStatus(data_dir)
    try:
        wait_for("admin API", lambda: status.get() is not None, gw, 30)
        wait_for("MQTT front", lambda: port_open(mqtt_port), gw, 10)
        yield gw, status, mqtt_port, creds
    finally:
        status.close()
        gw.stop(30)  # SIGTERM: the gateway flushes the store and stops its broker
