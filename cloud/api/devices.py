"""Devices, telemetry (raw or bucketed) and gateways, all scoped to the caller's org."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from cloud.api.deps import (
    AUTHED,
    PathId,
    ServicesDep,
    Viewer,
    bearer_scheme,
    current_principal,
    problems,
)
from cloud.api.device_list import ListParams
from cloud.api.events import ticket_principal
from cloud.api.problems import not_found
from cloud.api.readings_csv import csv_rows
from cloud.api.schemas import DeviceOut, GatewayOut, TelemetryOut
from cloud.api.views import (
    BUCKET_PATTERN,
    MAX_BUCKETS,
    BadQuery,
    bucket_view,
    device_status,
    device_view,
    gateway_state,
    parse_bucket,
    point_view,
    time_range,
)
from common.model import FieldError
from common.problem import Problem, ProblemError

router = APIRouter(prefix="/api", tags=["devices"])


def _bad(exc: BadQuery) -> ProblemError:
    return ProblemError(
        Problem(
            "invalid-request",
            "Invalid request",
            422,
            str(exc),
            errors=(FieldError(f"/query/{exc.param}", str(exc)),),
        )
    )


@router.get("/devices", response_model=list[DeviceOut], responses=problems(*AUTHED, 422))
async def list_devices(
    principal: Viewer, services: ServicesDep, params: ListParams, response: Response
) -> list[dict[str, Any]]:
    """Every device; or, with any of q/status/gateway/type/sort/order/limit/offset, one page
    of them, and X-Total-Count: how many matched."""
    now, threshold = services.clock.now_ms(), services.settings.online_threshold_s
    if not params.paged:
        devices = await services.store.list_devices(principal.org_id)
        return [device_view(d, now, threshold) for d in devices]
    page = await services.store.device_page(principal.org_id, params.query(services))
    response.headers["X-Total-Count"] = str(page.total)
    return [device_view(d, now, threshold) for d in page.devices]


@router.get("/devices/{device_id}", response_model=DeviceOut, responses=problems(*AUTHED, 404))
async def get_device(device_id: PathId, principal: Viewer, services: ServicesDep) -> dict[str, Any]:
    info = await services.store.get_device(principal.org_id, device_id)
    if info is None:  # also for other orgs' devices: no existence leak
        raise not_found(f"no device {device_id!r}")
    return device_view(info, services.clock.now_ms(), services.settings.online_threshold_s)


@router.get(
    "/devices/{device_id}/telemetry",
    response_model=TelemetryOut,
    response_model_exclude_unset=True,  # a point has "flags" only when a time is suspect
    responses=problems(*AUTHED, 404, 422),
)
async def telemetry(
    device_id: PathId,
    principal: Viewer,
    services: ServicesDep,
    metric: Annotated[str, Query(min_length=1, max_length=64)],
    from_ms: Annotated[
        int | None,
        Query(
            alias="from",
            ge=0,
            le=2**62,
            description="ms since the epoch (default: 24 h before `to`);"
            " not before `to`: no points",
        ),
    ] = None,
    to_ms: Annotated[
        int | None, Query(alias="to", ge=0, le=2**62, description="ms, exclusive")
    ] = None,
    bucket: Annotated[
        str | None,
        Query(
            max_length=16,
            pattern=BUCKET_PATTERN,
            description="aggregate per bucket of this width, at least 1s: e.g. 300 (seconds),"
            f" 30s, 5m, 1h, 1d, 1500ms; at most {MAX_BUCKETS} buckets (those with readings,"
            " oldest first)",
        ),
    ] = None,
) -> dict[str, Any]:
    lo, hi = time_range(services.clock.now_ms(), from_ms, to_ms)
    try:
        bucket_ms = parse_bucket(bucket) if bucket is not None else None
    except BadQuery as exc:  # not reached through the documented pattern; kept for safety
        raise _bad(exc) from exc
    store, org = services.store, principal.org_id
    if await store.get_device(org, device_id) is None:
        raise not_found(f"no device {device_id!r}")
    points: list[dict[str, Any]]
    if bucket_ms is None:
        raw = await store.telemetry_points(
            org, device_id, metric, lo, hi, services.settings.max_points
        )
        points = [point_view(p) for p in raw]
    else:
        buckets = await store.telemetry_buckets(
            org, device_id, metric, lo, hi, bucket_ms, MAX_BUCKETS
        )
        points = [bucket_view(b) for b in buckets]
    return {"device_id": device_id, "metric": metric, "bucket_ms": bucket_ms, "points": points}


@router.get(
    "/devices/{device_id}/readings.csv",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {}}, "description": "the readings, streamed"},
        **problems(*AUTHED, 404, 422),
    },
)
async def readings_csv(
    device_id: PathId,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    from_ms: Annotated[
        int | None,
        Query(alias="from", ge=0, le=2**62, description="ms since the epoch (default: to - 24 h)"),
    ] = None,
    to_ms: Annotated[
        int | None, Query(alias="to", ge=0, le=2**62, description="ms, exclusive (default: now)")
    ] = None,
    metric: Annotated[
        str | None, Query(min_length=1, max_length=64, description="one metric (default: all)")
    ] = None,
    ticket: Annotated[
        str | None,
        Query(
            max_length=4096,
            description="instead of a bearer token: POST"
            " /api/events/ticket?scope=export (for a plain download link)",
        ),
    ] = None,
) -> StreamingResponse:
    """Raw readings of [from, to) as CSV (device_id, metric, ts_ms, time_utc, value, flags),
    metric by metric, oldest first; streamed, so any range fits."""
    if credentials is not None or ticket is None:
        principal = await current_principal(services, credentials)
    else:
        principal = await ticket_principal(services, ticket, "export")
    lo, hi = time_range(services.clock.now_ms(), from_ms, to_ms)
    store, org = services.store, principal.org_id
    device = await store.get_device(org, device_id)
    if device is None:
        raise not_found(f"no device {device_id!r}")
    metrics = [metric] if metric is not None else sorted(device.latest)
    # ASCII only: a header is Latin-1, and a gateway may send ids in any script
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in device_id)
    return StreamingResponse(
        csv_rows(store, org, device_id, metrics, lo, hi),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}-{lo}-{hi}.csv"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/gateways", response_model=list[GatewayOut], responses=problems(*AUTHED))
async def list_gateways(principal: Viewer, services: ServicesDep) -> list[dict[str, Any]]:
    gateways = await services.store.list_gateways(principal.org_id)
    # enrollment and sync state (key revoked, clock skew) when the sync area is present
    sync = await services.sync.sync_info(principal.org_id) if services.sync else {}
    totals = await services.sync.batch_totals(principal.org_id) if services.sync else {}
    now, settings = services.clock.now_ms(), services.settings
    out = []
    for g in gateways:
        info = sync.get(g.gateway_id)
        last_batch, synced = totals.get(g.gateway_id, (None, 0))
        state = gateway_state(
            g.last_seen, last_batch, info.backlog if info else None, now, settings.gateway_state
        )
        out.append(
            {
                **g.to_dict(),
                **(info.to_dict() if info else {}),
                # for the dashboard's overview: the same online rule as devices
                "status": device_status(g.last_seen, now, settings.online_threshold_s),
                "state": state,  # online / lagging / offline: contact, last batch, backlog
                "last_sync_at": last_batch,
                "readings_synced": synced,
            }
        )
    return out
