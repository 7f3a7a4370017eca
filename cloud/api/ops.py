"""/healthz (process up), /readyz (store answers), /metrics (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cloud.api.deps import ServicesDep, problems
from cloud.api.schemas import StatusOut
from cloud.db import StoreError
from cloud.metrics import Registry
from cloud.problems import unavailable

router = APIRouter(tags=["operations"])


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
    return Response(services.registry.render(), media_type=Registry.CONTENT_TYPE)
