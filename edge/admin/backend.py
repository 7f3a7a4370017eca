"""One administrative interface, three implementations.

- `LocalBackend`: the gateway is stopped; the CLI opens DuckDB itself.
- `RemoteBackend`: the gateway is running; the CLI talks to its admin API on 127.0.0.1.
- the running gateway (edge.app.gateway.Gateway) implements it too; the admin API serves it.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from edge.admin import ops
from edge.app.config import GatewayConfig
from edge.storage.store import GatewayStore


class BackendError(Exception):
    """A refused request; the message is for the user."""


class AdminBackend(Protocol):
    async def add_device(
        self, device_id: str, device_type: str | None, oscore: bool = False
    ) -> dict[str, Any]: ...
    async def list_devices(self) -> list[dict[str, Any]]: ...
    async def revoke_device(self, device_id: str) -> dict[str, Any]: ...
    async def add_rule(self, body: dict[str, Any]) -> dict[str, Any]: ...
    async def list_rules(self) -> list[dict[str, Any]]: ...
    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def alerts(self, state: str | None) -> list[dict[str, Any]]: ...
    async def errors(self, limit: int) -> list[dict[str, Any]]: ...
    async def audit(self, limit: int) -> list[dict[str, Any]]: ...
    async def status(self) -> dict[str, Any]: ...
    async def snapshot_store(self) -> dict[str, Any]: ...


class LocalBackend:
    """Direct access to a stopped gateway's store."""

    def __init__(self, store: GatewayStore, cfg: GatewayConfig) -> None:
        self._store = store
        self._cfg = cfg

    async def add_device(
        self, device_id: str, device_type: str | None, oscore: bool = False
    ) -> dict[str, Any]:
        from edge.ingest.coap.oscore_contexts import OscoreError, OscoreKeystore

        try:
            result = ops.add_device(self._store, device_id, device_type)
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc
        keystore = OscoreKeystore(self._cfg.data_dir)
        try:
            if oscore:
                result["oscore"] = keystore.create(device_id).to_json()
            else:
                keystore.remove(device_id)  # a re-added device starts without one
        except OscoreError as exc:
            raise BackendError(
                f"device {device_id} added, but not its OSCORE context: {exc}; "
                "revoke it and add it again"
            ) from exc
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return self._store.devices()

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        from edge.ingest.coap.oscore_contexts import OscoreError, OscoreKeystore

        try:
            result = ops.revoke_device(self._store, device_id)
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc
        try:
            OscoreKeystore(self._cfg.data_dir).remove(device_id)
        except OscoreError as exc:
            raise BackendError(f"device {device_id} revoked, but {exc}") from exc
        return result

    async def add_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return ops.add_rule(self._store, body)
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc

    async def list_rules(self) -> list[dict[str, Any]]:
        return self._store.rules()

    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return self._store.readings(device_id=device_id, metric=metric, limit=limit)

    async def alerts(self, state: str | None) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self._store.alerts(state)]

    async def errors(self, limit: int) -> list[dict[str, Any]]:
        return self._store.rejections(limit)

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return self._store.auth_failures(limit)

    async def status(self) -> dict[str, Any]:
        return {
            "gateway": "stopped",
            "broker": "stopped",
            **ops.status(self._store),
            "disk": ops.disk_usage(self._cfg),
        }

    async def snapshot_store(self) -> dict[str, Any]:
        dest = snapshot_path(self._cfg)
        return {"path": str(dest), "schema_version": self._store.snapshot(dest)}


class RemoteBackend:
    """The running gateway's admin API, authenticated by the secret in the data dir."""

    def __init__(self, base_url: str, secret: str) -> None:
        import httpx  # only the CLI needs an HTTP client: keep it out of the gateway process

        self._httpx = httpx
        self._client = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30.0
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = await self._client.request(method, path, **kw)
        except self._httpx.HTTPError as exc:
            raise BackendError(f"the gateway's admin API did not answer: {exc}") from exc
        if resp.status_code >= 400:
            try:
                doc = resp.json()
                msg = doc.get("detail") or doc.get("title") or resp.text
            except ValueError:
                msg = resp.text
            raise BackendError(str(msg))
        return resp.json()

    async def add_device(
        self, device_id: str, device_type: str | None, oscore: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"device_id": device_id, "type": device_type}
        if oscore:
            body["oscore"] = True
        result: dict[str, Any] = await self._req("POST", "/admin/devices", json=body)
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._req("GET", "/admin/devices")
        return result

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._req("POST", f"/admin/devices/{device_id}/revoke")
        return result

    async def add_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._req("POST", "/admin/rules", json=body)
        return result

    async def list_rules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._req("GET", "/admin/rules")
        return result

    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if device_id:
            params["device"] = device_id
        if metric:
            params["metric"] = metric
        result: list[dict[str, Any]] = await self._req("GET", "/admin/readings", params=params)
        return result

    async def alerts(self, state: str | None) -> list[dict[str, Any]]:
        params = {"state": state} if state else {}
        result: list[dict[str, Any]] = await self._req("GET", "/admin/alerts", params=params)
        return result

    async def errors(self, limit: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._req(
            "GET", "/admin/errors", params={"limit": limit}
        )
        return result

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._req(
            "GET", "/admin/audit", params={"limit": limit}
        )
        return result

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._req("GET", "/admin/status")
        return result

    async def snapshot_store(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._req("POST", "/admin/snapshot")
        return result


def snapshot_path(cfg: GatewayConfig) -> Path:
    """Where a copy of the database for `gateway backup` goes: the CLI packs it, then deletes it."""
    return cfg.run_dir / f"snapshot-{secrets.token_hex(8)}.duckdb"


# -- discovery: is a gateway running on this data dir? ---------------------------------------


def admin_secret(data_dir: Path) -> str:
    """The admin API secret (created on first use, mode 0600)."""
    path = data_dir / "admin.secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret


def write_run_info(run_dir: Path, port: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "admin.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "port": port}))
    tmp.replace(run_dir / "admin.json")


def running_gateway_url(run_dir: Path) -> str | None:
    """The admin URL of a live gateway on this data dir, or None."""
    try:
        info = json.loads((run_dir / "admin.json").read_text())
        pid, port = int(info["pid"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return f"http://127.0.0.1:{port}"
