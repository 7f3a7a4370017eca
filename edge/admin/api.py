"""The running gateway's local admin API (127.0.0.1 only), used by the `iotsphere gateway` CLI.

Authenticated by a bearer secret in the data dir (mode 0600): whoever can read the gateway's
data can administer it, nobody else. Errors are RFC 9457 problem documents.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from common.problem import Problem
from edge.admin.backend import AdminBackend, BackendError
from edge.ingest.listener import BoundedListener, ConnectionCaps, ListenerStats
from edge.storage.store import StoreUnavailable

log = logging.getLogger("iotsphere.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Loopback only, for the CLI: a few connections at a time. Bounded like the LAN listeners so
# that even here an accept() out of descriptors backs off instead of logging a traceback each.
ADMIN_CAPS = ConnectionCaps(max_connections=32, max_per_address=32)


def _problem(status: int, title: str, detail: str = "") -> web.Response:
    doc = Problem(slug=title.lower().replace(" ", "-"), title=title, status=status, detail=detail)
    return web.Response(status=status, body=doc.to_json(), content_type="application/problem+json")


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from exc
    return max(1, min(value, 100_000))


class AdminApi:
    def __init__(self, backend: AdminBackend, secret: str) -> None:
        self._backend = backend
        self._secret = secret
        self._runner: web.AppRunner | None = None
        self._listener: BoundedListener | None = None
        self.listener_stats = ListenerStats(ADMIN_CAPS.max_connections, ADMIN_CAPS.max_per_address)
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth, self._errors])
        app.add_routes(
            [
                web.post("/admin/devices", self._add_device),
                web.get("/admin/devices", self._list_devices),
                web.post("/admin/devices/{id}/revoke", self._revoke_device),
                web.post("/admin/rules", self._add_rule),
                web.get("/admin/rules", self._list_rules),
                web.get("/admin/readings", self._readings),
                web.get("/admin/alerts", self._alerts),
                web.get("/admin/errors", self._errors_list),
                web.get("/admin/audit", self._audit),
                web.get("/admin/status", self._status),
                web.post("/admin/snapshot", self._snapshot),
            ]
        )
        return app

    async def _list_devices(self, _r: web.Request) -> web.Response:
        return _json(await self._backend.list_devices())

    async def _revoke_device(self, r: web.Request) -> web.Response:
        return _json(await self._backend.revoke_device(r.match_info["id"]))

    async def _list_rules(self, _r: web.Request) -> web.Response:
        return _json(await self._backend.list_rules())

    async def _readings(self, r: web.Request) -> web.Response:
        return _json(
            await self._backend.readings(
                r.query.get("device"), r.query.get("metric"), _int_param(r, "limit", 100)
            )
        )

    async def _alerts(self, r: web.Request) -> web.Response:
        return _json(await self._backend.alerts(r.query.get("state")))

    async def _errors_list(self, r: web.Request) -> web.Response:
        return _json(await self._backend.errors(_int_param(r, "limit", 100)))

    async def _audit(self, r: web.Request) -> web.Response:
        return _json(await self._backend.audit(_int_param(r, "limit", 100)))

    async def _status(self, _r: web.Request) -> web.Response:
        return _json(await self._backend.status())

    async def _snapshot(self, _r: web.Request) -> web.Response:
        return _json(await self._backend.snapshot_store())

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        manager = self._runner.server
        assert manager is not None
        self._listener = BoundedListener("admin API", manager, ADMIN_CAPS)
        await self._listener.start(host, port)
        self.listener_stats = self._listener.stats
        self.port = self._listener.port
        log.info("admin API on 127.0.0.1:%d", self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._secret}".encode()):
            return _problem(401, "Unauthorized", "missing or wrong admin secret")
        return await handler(request)

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BackendError as exc:
            return _problem(400, "Request refused", str(exc))
        except StoreUnavailable as exc:  # a full disk: the operator's to fix, not a crash
            status = 507 if exc.failure.disk_full else 503
            return _problem(status, "Storage unavailable", f"{exc.failure.reason}; nothing changed")
        except web.HTTPException as exc:
            return _problem(exc.status, exc.reason, exc.text or "")
        except Exception as exc:
            log.exception("admin API: %s %s failed", request.method, request.path)
            return _problem(500, "Internal error", f"{type(exc).__name__}: {exc}")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise BackendError("the request body is not JSON") from exc
        if not isinstance(body, dict):
            raise BackendError("the request body must be a JSON object")
        return body

    async def _add_device(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        device_id = body.get("device_id")
        if not isinstance(device_id, str):
            raise BackendError("device_id is required")
        oscore = body.get("oscore", False)
        if not isinstance(oscore, bool):
            raise BackendError("oscore must be true or false")
        return _json(await self._backend.add_device(device_id, body.get("type"), oscore))

    async def _add_rule(self, request: web.Request) -> web.Response:
        return _json(await self._backend.add_rule(await self._body(request)))
