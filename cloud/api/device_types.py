"""Device types defined centrally: metrics with their type, unit and range. Every gateway of
the org receives them with its configuration (GET /api/v1/sync/config) and validates its
devices' readings against them, also while offline. A type in a gateway's own gateway.toml
of the same name wins there (the installer's explicit override)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Response

from cloud.api.bodies import DEVICE_TYPE_BODY_SCHEMA, json_body
from cloud.api.deps import AUTHED, Operator, ServicesDep, Viewer, problems
from cloud.api.problems import not_found
from cloud.api.sync import sync_of
from common.model import FieldError
from common.problem import Problem, ProblemError
from common.validation import device_type_from_dict

router = APIRouter(prefix="/api", tags=["devices"])

TypeName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def _validated(name: str, body: Any) -> dict[str, Any]:
    """The body as stored (name excluded), or a 400 naming what is wrong."""
    if not isinstance(body, dict):
        raise ProblemError(
            Problem("invalid-device-type", "Invalid device type", 400, "must be a JSON object")
        )
    spec = {k: v for k, v in body.items() if k != "name"}
    try:
        device_type_from_dict({"name": name, **spec})
    except (ValueError, OverflowError) as exc:  # Overflow: a bound of hundreds of digits
        raise ProblemError(
            Problem(
                "invalid-device-type",
                "Invalid device type",
                400,
                str(exc),
                (FieldError("", str(exc)),),
            )
        ) from exc
    return spec


@router.get("/device_types", responses=problems(*AUTHED))
async def list_device_types(principal: Viewer, services: ServicesDep) -> list[dict[str, Any]]:
    store, _ = sync_of(services)
    return await store.device_types(principal.org_id)


@router.put(
    "/device_types/{name}",
    responses=problems(*AUTHED, 400, 403),
    openapi_extra=json_body(DEVICE_TYPE_BODY_SCHEMA, "the device type (the path names it)"),
)
async def put_device_type(
    name: TypeName,
    principal: Operator,
    services: ServicesDep,
    body: Annotated[Any, Body()],
) -> dict[str, Any]:
    """Create or replace a type: {"metrics": {m: {"type", "unit", "min", "max"}},
    "allow_undeclared": bool}."""
    store, _ = sync_of(services)
    spec = _validated(name, body)
    await store.put_device_type(principal.org_id, name, spec, services.clock.now_ms())
    return {"name": name, **spec}


@router.delete(
    "/device_types/{name}",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404),
)
async def delete_device_type(
    name: TypeName, principal: Operator, services: ServicesDep
) -> Response:
    store, _ = sync_of(services)
    if not await store.delete_device_type(principal.org_id, name):
        raise not_found(f"no device type {name!r}")
    return Response(status_code=204)
