"""GET /api/alerts (the CONTRACT's list, or with query parameters one page searched, filtered
and sorted in the database), GET /api/alerts/{id} (the alert with why, where and its history),
POST /api/alerts/{id}/ack|resolve and POST /api/alert_actions (operator+), all through
common/alerts' table; GET /api/monitoring/gateway_rules (the rules gateways evaluate
themselves, read-only). Paths are spelled whole: this router serves two prefixes."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from cloud.api.alert_schemas import (
    AlertDetailOut,
    AlertItemOut,
    AlertPageOut,
    BulkAlertsIn,
    BulkAlertsOut,
    GatewayRuleOut,
)
from cloud.api.deps import AUTHED, Operator, PathId, ServicesDep, Viewer, problems
from cloud.api.problems import conflict, not_found
from cloud.app.services import Services
from cloud.notify.store import alert_documents
from cloud.security.auth import Principal
from cloud.storage.alert_query import MAX_LIMIT, AlertQuery, BadCursor
from cloud.storage.interface import AlertInfo
from common.alerts import AlertEvent, AlertState, InvalidTransition, next_state
from common.model import FieldError
from common.problem import Problem, ProblemError

router = APIRouter(tags=["alerts"])
audit_log = logging.getLogger("iotsphere.cloud.audit")

_SEVERITIES = ("info", "warning", "critical")
SortParam = Literal[
    "started_at", "-started_at", "severity", "-severity", "state", "-state",
    "subject", "-subject", "metric", "-metric", "gateway", "-gateway",
]  # fmt: skip
_STATE_LIST = "^((active|acknowledged|resolved)(,(active|acknowledged|resolved))*)?$"
_SEVERITY_LIST = "^((info|warning|critical)(,(info|warning|critical))*)?$"


def _invalid(param: str, detail: str) -> ProblemError:
    return ProblemError(
        Problem("invalid-request", "Invalid request", 422, detail, [FieldError(param, detail)])
    )


def _listed(values: list[str] | None, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """`state=active,acknowledged` or `state=active&state=acknowledged`, checked."""
    out = [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]
    for v in out:
        if v not in allowed:
            raise _invalid(name, f"{name}: {v!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(out))


@router.get(
    "/api/alerts",
    response_model=list[AlertItemOut] | AlertPageOut,
    responses=problems(*AUTHED, 409, 422),
)
async def list_alerts(  # noqa: PLR0913 - one parameter per documented filter
    principal: Viewer,
    services: ServicesDep,
    state: Annotated[list[Annotated[str, Field(pattern=_STATE_LIST)]] | None, Query()] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT)] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    q: Annotated[str | None, Query(max_length=128)] = None,
    severity: Annotated[list[Annotated[str, Field(pattern=_SEVERITY_LIST)]] | None, Query()] = None,
    gateway: Annotated[str | None, Query(max_length=128)] = None,
    device: Annotated[str | None, Query(max_length=128)] = None,
    device_type: Annotated[str | None, Query(max_length=128)] = None,
    from_ms: Annotated[int | None, Query(alias="from", ge=0, le=2**62)] = None,
    to_ms: Annotated[int | None, Query(alias="to", ge=0, le=2**62)] = None,
    sort: Annotated[SortParam | None, Query()] = None,
) -> Any:
    states = _listed(state, tuple(s.value for s in AlertState), "state")
    paged = any(
        p is not None
        for p in (limit, cursor, q, severity, gateway, device, device_type, from_ms, to_ms, sort)
    )
    if not paged and len(states) <= 1:
        # the CONTRACT's list, unchanged for the clients that know only it
        wanted = frozenset(AlertState(s) for s in states) if states else None
        alerts = await services.store.list_alerts(principal.org_id, wanted)
        return await alert_documents(services.notify, alerts)
    key = (sort or "-started_at").lstrip("-")
    query = AlertQuery(
        search=q.strip() or None if q else None,
        states=states,
        severities=_listed(severity, _SEVERITIES, "severity"),
        gateway_id=gateway or None,
        device_id=device or None,
        device_type=device_type or None,
        from_ms=from_ms,
        to_ms=to_ms,
        sort=key,  # type: ignore[arg-type]  # SortParam without its "-"
        descending=(sort or "-").startswith("-"),
        limit=limit or 50,
        cursor=cursor or None,
    )
    try:
        alerts, total, nxt = await services.store.alert_page(principal.org_id, query)
    except BadCursor as exc:
        # 409, not 422: any string is a well-formed cursor; this one does not fit the query
        raise ProblemError(
            Problem("stale-cursor", "Cursor does not fit this query", 409, f"cursor: {exc}")
        ) from None
    return {"items": await alert_documents(services.notify, alerts), "total": total, "next": nxt}


# Not /api/alerts/bulk: GET /api/alerts/{alert_id} would match that path too (405 Allow: GET, POST).
@router.post(
    "/api/alert_actions", response_model=BulkAlertsOut, responses=problems(*AUTHED, 403, 422)
)
async def bulk(body: BulkAlertsIn, principal: Operator, services: ServicesDep) -> dict[str, Any]:
    """Acknowledge or resolve many alerts in one request. Each id gets its own result: 200
    changed, 404 no such alert in the caller's org (another org's alert is not found either,
    and is left untouched), 409 not allowed in its state. Each change is in the alert's
    history with who made it, and the request is one line of the audit log."""
    event = AlertEvent.ACK if body.action == "ack" else AlertEvent.RESOLVE
    actor = await _actor(services, principal)
    results: list[dict[str, Any]] = []
    for alert_id in dict.fromkeys(body.ids):  # an id twice is one change
        try:
            moved = await _move(services, principal.org_id, alert_id, event, actor)
            results.append({"id": alert_id, "status": 200, "state": moved.state.value})
        except InvalidTransition as exc:
            results.append(
                {
                    "id": alert_id,
                    "status": 409,
                    "state": exc.state.value,
                    "detail": exc.problem.detail,
                }
            )
        except ProblemError as exc:
            results.append(
                {"id": alert_id, "status": exc.problem.status, "detail": exc.problem.detail}
            )
    changed = sum(1 for r in results if r["status"] == 200)
    audit_log.info(
        "alerts bulk %s: user=%s org=%s changed=%d failed=%d ids=%r",
        body.action,
        actor,
        principal.org_id,
        changed,
        len(results) - changed,
        [r["id"] for r in results],  # repr: an id cannot forge a line
    )
    return {
        "action": body.action,
        "changed": changed,
        "failed": len(results) - changed,
        "results": results,
    }


async def _found(services: Services, org_id: str, alert_id: str) -> AlertInfo:
    alert = await services.store.get_alert(org_id, alert_id)
    if alert is None:  # other orgs' alerts too: no existence leak
        raise not_found(f"no alert {alert_id!r}")
    return alert


@router.get(
    "/api/alerts/{alert_id}", response_model=AlertDetailOut, responses=problems(*AUTHED, 404)
)
async def get_alert(alert_id: PathId, principal: Viewer, services: ServicesDep) -> dict[str, Any]:
    alert = await _found(services, principal.org_id, alert_id)
    doc = await _doc(services, alert)
    history = await services.store.alert_history(principal.org_id, alert_id)
    if not history:  # an alert from before histories were kept: what its columns say
        history = _history_from_columns(alert)
    doc["history"] = [e.to_dict() for e in history]
    doc["rule"] = dict(alert.rule) if alert.rule is not None else None
    if services.notify is not None:  # each notification's attempts, oldest first
        tried = await services.notify.delivery_attempts(alert_id)
        for n in doc.get("notifications", []):
            n["attempt_log"] = [
                {k: t[k] for k in ("attempt", "at", "result", "error")}
                for t in tried
                if t["channel_id"] == n["channel_id"] and t["event"] == n.get("event")
            ]
    doc["gateway_name"] = None
    if alert.gateway_id is not None:
        gateways = await services.store.list_gateways(principal.org_id)
        doc["gateway_name"] = next(
            (g.name for g in gateways if g.gateway_id == alert.gateway_id), None
        )
    return doc


def _history_from_columns(alert: AlertInfo) -> list[Any]:
    from cloud.storage.interface import AlertEvent as Step

    steps = [Step(alert.started_at, "raised", None)]
    if alert.acknowledged_at is not None:
        steps.append(Step(alert.acknowledged_at, "acknowledged", alert.acknowledged_by))
    if alert.resolved_at is not None:
        steps.append(Step(alert.resolved_at, "resolved", alert.resolved_by))
    return steps


async def _doc(services: Services, alert: AlertInfo) -> dict[str, Any]:
    return (await alert_documents(services.notify, [alert]))[0]


async def _actor(services: Services, principal: Principal) -> str:
    user = await services.store.user_by_id(principal.user_id)
    return user.email if user is not None else f"user {principal.user_id}"


async def _move(
    services: Services, org_id: str, alert_id: str, event: AlertEvent, actor: str
) -> AlertInfo:
    # The move is decided on the state read, and written only if the alert is still in it:
    # sync, the monitoring loop or another user may move it in between (a resolve racing an
    # ack must not leave it "acknowledged" with a resolved_at). Moved meanwhile: decide again
    # on the new state (409 when the table forbids the move from there).
    for _ in range(3):
        alert = await _found(services, org_id, alert_id)
        state = next_state(alert.state, event)  # 409 problem when the table forbids it
        now = services.clock.now_ms()
        moved = await services.store.set_alert_state(
            org_id, alert_id, state, now, actor, expected=alert.state
        )
        if moved is not None:
            return moved
    raise conflict(f"alert {alert_id!r} keeps changing; try again")


@router.post(
    "/api/alerts/{alert_id}/ack",
    response_model=AlertItemOut,
    responses=problems(*AUTHED, 403, 404, 409),
)
async def ack(alert_id: PathId, principal: Operator, services: ServicesDep) -> dict[str, Any]:
    actor = await _actor(services, principal)
    moved = await _move(services, principal.org_id, alert_id, AlertEvent.ACK, actor)
    return await _doc(services, moved)


@router.post(
    "/api/alerts/{alert_id}/resolve",
    response_model=AlertItemOut,
    responses=problems(*AUTHED, 403, 404, 409),
)
async def resolve(alert_id: PathId, principal: Operator, services: ServicesDep) -> dict[str, Any]:
    actor = await _actor(services, principal)
    moved = await _move(services, principal.org_id, alert_id, AlertEvent.RESOLVE, actor)
    return await _doc(services, moved)


@router.get(
    "/api/monitoring/gateway_rules",
    response_model=list[GatewayRuleOut],
    responses=problems(*AUTHED),
)
async def gateway_rules(principal: Viewer, services: ServicesDep) -> list[dict[str, Any]]:
    """The rules gateways evaluate on their own (added with `iotsphere gateway rule add`), as
    each last synced them: read-only here, they are changed at the gateway."""
    rules = await services.store.gateway_rules(principal.org_id)
    return [
        {
            "gateway_id": r.gateway_id,
            "gateway_name": r.gateway_name,
            "read_only": True,
            "updated_at": r.updated_at,
            "rule": dict(r.rule),
        }
        for r in rules
    ]
