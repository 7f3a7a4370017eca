"""GET /api/alerts, POST /api/alerts/{id}/ack|resolve (operator+), via common/alerts' table."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from cloud.api.deps import AUTHED, Operator, PathId, ServicesDep, Viewer, problems
from cloud.api.problems import not_found
from cloud.api.schemas import AlertOut
from cloud.app.services import Services
from cloud.notify.store import alert_documents
from cloud.storage.interface import AlertInfo
from common.alerts import AlertEvent, AlertState, next_state

router = APIRouter(prefix="/api/alerts", tags=["alerts"])


@router.get("", response_model=list[AlertOut], responses=problems(*AUTHED, 422))
async def list_alerts(
    principal: Viewer, services: ServicesDep, state: Annotated[AlertState | None, Query()] = None
) -> list[dict[str, Any]]:
    states = frozenset({state}) if state is not None else None
    alerts = await services.store.list_alerts(principal.org_id, states)
    return await alert_documents(services.notify, alerts)


async def _found(services: Services, org_id: str, alert_id: str) -> AlertInfo:
    alert = await services.store.get_alert(org_id, alert_id)
    if alert is None:  # other orgs' alerts too: no existence leak
        raise not_found(f"no alert {alert_id!r}")
    return alert


@router.get("/{alert_id}", response_model=AlertOut, responses=problems(*AUTHED, 404))
async def get_alert(alert_id: PathId, principal: Viewer, services: ServicesDep) -> dict[str, Any]:
    return await _doc(services, await _found(services, principal.org_id, alert_id))


async def _doc(services: Services, alert: AlertInfo) -> dict[str, Any]:
    return (await alert_documents(services.notify, [alert]))[0]


async def _move(services: Services, org_id: str, alert_id: str, event: AlertEvent) -> AlertInfo:
    alert = await _found(services, org_id, alert_id)
    state = next_state(alert.state, event)  # 409 problem when the table forbids it
    moved = await services.store.set_alert_state(org_id, alert_id, state, services.clock.now_ms())
    if moved is None:
        raise not_found(f"no alert {alert_id!r}")
    return moved


@router.post("/{alert_id}/ack", response_model=AlertOut, responses=problems(*AUTHED, 403, 404, 409))
async def ack(alert_id: PathId, principal: Operator, services: ServicesDep) -> dict[str, Any]:
    return await _doc(services, await _move(services, principal.org_id, alert_id, AlertEvent.ACK))


@router.post(
    "/{alert_id}/resolve", response_model=AlertOut, responses=problems(*AUTHED, 403, 404, 409)
)
async def resolve(alert_id: PathId, principal: Operator, services: ServicesDep) -> dict[str, Any]:
    moved = await _move(services, principal.org_id, alert_id, AlertEvent.RESOLVE)
    return await _doc(services, moved)
