"""/healthz (process up), /readyz (store answers), /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response

from cloud.api.deps import ServicesDep, problems
from cloud.api.problems import unavailable
from cloud.api.schemas import StatusOut
from cloud.app.metrics import Registry
from cloud.storage.errors import StoreError

router = APIRouter(tags=["operations"])
log = logging.getLogger("iotsphere.cloud.api")


@router.get("/healthz", response_model=StatusOut)
async def healthz() -> StatusOut:
    return StatusOut(status="ok")


@router.get("/readyz", response_model=StatusOut, responses=problems(503))
async def readyz(services: ServicesDep) -> StatusOut:
    try:
        await services.store.ping()
    except StoreError as exc:
        raise unavailable(f"store not ready: {exc}", services.settings.retry_after_s) from exc
    return StatusOut(status="ready")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(services: ServicesDep) -> Response:
    text = services.registry.render() + services.hooks.notify_stats()
    if services.notify is not None:
        try:
            counts = await asyncio.to_thread(services.notify.outbox.counts)
        except Exception as exc:  # the backlog gauge is optional; the rest still answers
            log.warning("notification backlog not available for /metrics: %s", exc)
        else:
            name = "iotsphere_notifications_backlog"
            text += f"# HELP {name} outbox rows by status\n# TYPE {name} gauge\n"
            text += "".join(f'{name}{{status="{s}"}} {n}\n' for s, n in sorted(counts.items()))
    return Response(text, media_type=Registry.CONTENT_TYPE)
