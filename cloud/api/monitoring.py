"""Alert rules (seed "Alert Rule Creation") and metrics from ML models and jobs.

Rules are validated by common.rules.parse_rule, the same validator the gateway uses; the
rule's channels must be channels of the caller's org. Bodies are taken as raw JSON (and
documented in OpenAPI by hand) so that one validator reports every problem with its JSON
Pointer, instead of a framework model stopping at the first.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from starlette.convertors import StringConvertor, register_url_convertor

from cloud.api.bodies import (
    METRICS_BODY_SCHEMA,
    RULE_BASES,
    fits_some,
    json_body,
    patch_conflict,
    rule_body_schema,
)
from cloud.api.deps import (
    AUTHED,
    MetricsWriter,
    Operator,
    ServicesDep,
    Viewer,
    monitoring_of,
    notify_of,
    problems,
)
from cloud.api.problems import not_found
from cloud.api.schemas import (
    MetricPointsOut,
    MetricsAccepted,
    MetricSeriesOut,
    RuleChangesOut,
    RuleOut,
)
from cloud.api.views import time_range
from cloud.app.services import Services
from cloud.monitoring.ingest import parse_metrics
from common.model import FieldError
from common.problem import Problem, ProblemError
from common.rules import SCOPE_FIELDS, InvalidRule, Rule, parse_rule

router = APIRouter(prefix="/api/monitoring", tags=["monitoring"])


class _RuleIdConvertor(StringConvertor):
    """A rule id is any path segment but "changes": /alert_rules/changes is its own resource
    (GET only). OpenAPI matches a concrete path before a templated one, so the router does
    too: DELETE or PATCH there is a 405, not "no alert rule 'changes'"."""

    regex = "(?!changes$)[^/]+"


register_url_convertor("rule_id", _RuleIdConvertor())

RuleId = Annotated[
    str, Path(min_length=1, max_length=128, json_schema_extra={"pattern": "^(?!changes$)"})
]


async def _check_channels(services: Services, org_id: str, rule: Rule) -> None:
    """409: a well-formed rule naming channels the org does not have (the state it meets)."""
    missing = await notify_of(services).missing_channels(org_id, list(rule.channels))
    if missing:
        errors = tuple(
            FieldError(f"/channels/{i}", f"no notification channel {cid!r}")
            for i, cid in enumerate(rule.channels)
            if cid in missing
        )
        raise ProblemError(
            Problem("unknown-channel", "Conflict", 409, errors[0].message, errors=errors)
        )


@router.post(
    "/alert_rules",
    response_model=RuleOut,
    responses=problems(*AUTHED, 403, 409, 422),
    openapi_extra=json_body(rule_body_schema(post=True), "an alert rule (CONTRACT.md shape)"),
)
async def create_rule(
    principal: Operator, services: ServicesDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    rule = parse_rule(body, id=uuid.uuid4().hex, version=1)  # 422 listing every problem
    await _check_channels(services, principal.org_id, rule)
    stored = await monitoring_of(services).create_rule(
        principal.org_id, rule, services.clock.now_ms()
    )
    services.hooks.wake_monitor()
    return stored.to_dict()


@router.get("/alert_rules", response_model=list[RuleOut], responses=problems(*AUTHED))
async def list_rules(principal: Viewer, services: ServicesDep) -> list[dict[str, Any]]:
    return [r.to_dict() for r in await monitoring_of(services).list_rules(principal.org_id)]


@router.get("/alert_rules/changes", response_model=RuleChangesOut, responses=problems(*AUTHED, 422))
async def rule_changes(
    principal: Viewer,
    services: ServicesDep,
    since: Annotated[int, Query(ge=0, le=2**62, description="the version last seen")] = 0,
) -> dict[str, Any]:
    """What changed after version `since` (rules and deletions): what a gateway syncs."""
    changes = await monitoring_of(services).rule_changes_since(principal.org_id, since)
    return changes.to_dict()


async def _found(services: Services, org_id: str, rule_id: str) -> Rule:
    rule = await monitoring_of(services).get_rule(org_id, rule_id)
    if rule is None:  # also other orgs' rules: no existence leak
        raise not_found(f"no alert rule {rule_id!r}")
    return rule


@router.get(
    "/alert_rules/{rule_id:rule_id}", response_model=RuleOut, responses=problems(*AUTHED, 404)
)
async def get_rule(rule_id: RuleId, principal: Viewer, services: ServicesDep) -> dict[str, Any]:
    return (await _found(services, principal.org_id, rule_id)).to_dict()


@router.patch(
    "/alert_rules/{rule_id:rule_id}",
    response_model=RuleOut,
    responses=problems(*AUTHED, 403, 404, 409, 422),
    openapi_extra=json_body(
        rule_body_schema(post=False),
        "fields to change; null resets to the default. A patch that does not fit the stored"
        " rule (e.g. a string threshold for a '>' rule) is a 409",
    ),
)
async def patch_rule(
    rule_id: RuleId, principal: Operator, services: ServicesDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    current = await _found(services, principal.org_id, rule_id)
    if not isinstance(body, dict):
        raise InvalidRule([FieldError("", "a rule patch must be a JSON object")])
    base = current.to_dict()
    if any(body.get(f) is not None for f in SCOPE_FIELDS):
        for f in SCOPE_FIELDS:  # a new scope replaces the old one rather than adding to it
            base.pop(f, None)
    patch = {k: v for k, v in body.items() if k not in ("id", "version")}
    try:
        rule = parse_rule({**base, **patch}, id=current.id, version=current.version)
    except InvalidRule as exc:
        if not fits_some(patch, RULE_BASES, lambda d: parse_rule(d, id=current.id, version=1)):
            raise  # invalid for any rule: 422
        raise patch_conflict("rule", exc) from exc
    await _check_channels(services, principal.org_id, rule)
    stored = await monitoring_of(services).update_rule(
        principal.org_id, rule, services.clock.now_ms()
    )
    if stored is None:  # deleted meanwhile
        raise not_found(f"no alert rule {rule_id!r}")
    services.hooks.wake_monitor()
    return stored.to_dict()


@router.delete(
    "/alert_rules/{rule_id:rule_id}",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404),
)
async def delete_rule(rule_id: RuleId, principal: Operator, services: ServicesDep) -> Response:
    if not await monitoring_of(services).delete_rule(
        principal.org_id, rule_id, services.clock.now_ms()
    ):
        raise not_found(f"no alert rule {rule_id!r}")
    services.hooks.wake_monitor()  # its open alerts resolve on the next pass
    return Response(status_code=204)


# -- metrics from models and jobs --------------------------------------------------------------


@router.post(
    "/metrics",
    response_model=MetricsAccepted,
    responses=problems(400, 401, 403, 422, 503),
    openapi_extra={
        **json_body(METRICS_BODY_SCHEMA, "metric values, e.g. a model's accuracy"),
        "security": [{"HTTPBearer": []}, {"APIKeyHeader": []}],
    },
)
async def post_metrics(
    principal: MetricsWriter, services: ServicesDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    now = services.clock.now_ms()
    points = parse_metrics(body, now)  # 400 problem; nothing stored from a bad request
    stored = await monitoring_of(services).insert_metrics(principal.org_id, points, now)
    services.hooks.wake_monitor()  # judge them now, not at the next period
    return {"received": len(points), "stored": stored}


@router.get("/metrics", response_model=MetricPointsOut, responses=problems(*AUTHED, 422))
async def get_metrics(
    principal: Viewer,
    services: ServicesDep,
    source: Annotated[str, Query(min_length=1, max_length=130)],
    metric: Annotated[str, Query(min_length=1, max_length=64)],
    from_ms: Annotated[int | None, Query(alias="from", ge=0, le=2**62)] = None,
    to_ms: Annotated[int | None, Query(alias="to", ge=0, le=2**62)] = None,
) -> dict[str, Any]:
    lo, hi = time_range(services.clock.now_ms(), from_ms, to_ms)  # from >= to: no points
    points = await monitoring_of(services).metric_points(
        principal.org_id, source, metric, lo, hi, services.settings.max_points
    )
    return {
        "source": source,
        "metric": metric,
        "points": [{"ts": ts, "value": value} for ts, value in points],
    }


@router.get("/sources", response_model=list[MetricSeriesOut], responses=problems(*AUTHED))
async def list_sources(principal: Viewer, services: ServicesDep) -> list[dict[str, Any]]:
    """Every (source, metric) with values, newest value first-class: the models page's index."""
    series = await monitoring_of(services).metric_series(principal.org_id)
    return [s.to_dict() for s in series]
