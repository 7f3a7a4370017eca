"""create_app: the cloud's ASGI application, built from already-constructed Services.

Areas plug in as routers: create_app(services, extra_routers=[notify_router, ...]). Their
problem responses are documented like ours (document_problems), their requests are counted
and logged by the same access middleware.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api import (
    alerts,
    api_keys,
    auth,
    channels,
    dashboard,
    device_types,
    devices,
    events,
    monitoring,
    ops,
    sync,
    users,
)
from cloud.api.local_admin import router as local_admin_router
from cloud.api.problems import document_problems, install
from cloud.api.webui import install_web
from cloud.app.services import ApiMetrics, Services

access_log = logging.getLogger("iotsphere.cloud.access")


class AccessMiddleware:
    """Counts and times every request by route template (bounded label set), logs one line."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app dies before answering

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            self.metrics.requests.inc(scope["method"], template, str(status))
            self.metrics.latency.observe(elapsed, template)
            client = scope.get("client")
            access_log.info(
                "request method=%s path=%s route=%s status=%d duration_ms=%.1f client=%s",
                scope["method"],
                scope["path"],
                template,
                status,
                elapsed * 1000,
                client[0] if client else "-",
            )


def create_app(
    services: Services,
    extra_routers: Iterable[APIRouter] = (),
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The API. `on_shutdown` runs after the background tasks stopped (a worker process
    closes its store there)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The monitoring loop and notification worker live exactly as long as the server.
        from cloud.app.background import Background

        background = Background(services)
        await background.start()
        try:
            yield
        finally:
            await background.stop()
            if on_shutdown is not None:
                on_shutdown()

    app = FastAPI(
        title="IoTSphere cloud aggregator",
        version="0.1.0",
        description="Dashboards, devices, telemetry and alerts of an IoTSphere organization.",
        lifespan=lifespan,
    )
    app.state.services = services
    install(app, retry_after_s=services.settings.retry_after_s)
    for router in (
        auth.router,
        dashboard.router,
        devices.router,
        events.router,
        device_types.router,
        alerts.router,
        monitoring.router,
        channels.router,
        api_keys.router,
        users.router,
        ops.router,
        sync.router,
        local_admin_router,
    ):
        app.include_router(router)
    for router in extra_routers:
        app.include_router(router)
    install_web(app)  # the dashboard pages and their static assets (cloud/api/webui.py)
    app.add_middleware(AccessMiddleware, metrics=services.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = document_problems(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
