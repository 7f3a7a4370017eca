"""GET /api/dashboard (the seed's flow) and the per-org dashboard configuration."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Hashable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from cloud.api.dashboard_data import assemble, default_config
from cloud.api.deps import AUTHED, Operator, ServicesDep, Viewer, problems
from cloud.api.device_list import ListParams
from cloud.api.problems import HttpProblem
from cloud.api.schemas import DashboardOut
from common.problem import Problem

router = APIRouter(prefix="/api/dashboard", tags=["dashboard"])

MAX_CONFIG_BYTES = 64 * 1024


class SingleFlight:
    """Concurrent identical requests share one computation: a pushed change makes every open
    overview of an org refetch at once (50 pages: 50 identical queries on one DuckDB
    connection); those that arrive while the first is computing take its answer. Nothing is
    kept after it completes, so no answer is older than the request that joined it, by more
    than one computation."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[str]] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[str]]) -> str:
        task = self._running.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(compute())
            self._running[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, done: asyncio.Task[str]) -> None:
        if self._running.get(key) is done:
            del self._running[key]


_flights = SingleFlight()


@router.get("", response_model=DashboardOut, responses=problems(*AUTHED, 422))
async def dashboard(principal: Viewer, services: ServicesDep, params: ListParams) -> Response:
    """With any device list parameter (q, status, gateway, type, sort, order, limit, offset)
    `devices` is one page and `devices_page` says how many matched; else every device."""
    # Serialised directly: FastAPI's re-validation of 1,000 devices against DashboardOut cost
    # 12-30 ms per request; the schema still documents the shape (and the API tests check it).
    query = params.query(services) if params.paged else None
    key = (id(services), principal.org_id, params)  # the answer depends on nothing else
    body = await _flights.run(key, lambda: assemble(services, principal.org_id, query))
    return Response(body, media_type="application/json")


@router.get("/config", response_model=dict[str, Any], responses=problems(*AUTHED))
async def get_config(principal: Viewer, services: ServicesDep) -> dict[str, Any]:
    config = await services.store.get_dashboard_config(principal.org_id)
    return config if config is not None else default_config(services.settings.online_threshold_s)


@router.put("/config", response_model=dict[str, Any], responses=problems(*AUTHED, 403, 413, 422))
async def put_config(
    principal: Operator, services: ServicesDep, config: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise HttpProblem(
            Problem("too-large", "Payload too large", 413, "dashboard config over 64 KiB")
        )
    await services.store.put_dashboard_config(principal.org_id, config, services.clock.now_ms())
    return config
