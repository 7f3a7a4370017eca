"""The running cloud's local admin API, used by `iotsphere cloud user ...` / `gateway add`.

DuckDB admits one writer process, so while `cloud serve` holds the store the CLI asks the
server to do the work. Authenticated by a bearer secret in the data dir (mode 0600, compared
in constant time): whoever can read the cloud's data may administer it, nobody else. Kept out
of the public OpenAPI document; the operations are the CLI's own (cloud.app.cli.add_user /
add_gateway), so both paths validate, default and fail alike.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from cloud.api.deps import ServicesDep
from cloud.api.problems import HttpProblem, unauthorized
from cloud.app.admin_ops import (
    DEFAULT_ORG,
    LOCAL_ADMIN_PREFIX,
    add_gateway,
    add_user,
    delete_user_by_email,
    list_users,
    local_admin_secret,
    set_user_state,
)
from cloud.app.backup import NotEmbedded, snapshot, snapshot_path
from cloud.app.services import Services
from cloud.storage.interface import Role
from common.problem import Problem

ACTOR = "cli (local admin API)"


async def require_local_secret(request: Request, services: ServicesDep) -> None:
    """401 unless `Authorization: Bearer <the data dir's local admin secret>`."""
    # Read per request (a small file): the secret a CLI just created counts at once.
    secret = await asyncio.to_thread(local_admin_secret, services.settings.data_dir)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        raise unauthorized("missing or wrong local admin secret")


router = APIRouter(
    prefix=LOCAL_ADMIN_PREFIX,
    tags=["local admin"],
    include_in_schema=False,
    # a dependency of the router is solved before the body: no secret, no validation hints
    dependencies=[Depends(require_local_secret)],
)


class UserAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str
    password: str
    role: Role = Role.VIEWER
    org: str = DEFAULT_ORG


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool | None = None
    password: str | None = None


class GatewayAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    org: str = DEFAULT_ORG


@router.post("/users", status_code=201)
async def post_user(body: UserAdd, services: ServicesDep) -> dict[str, str]:
    now = services.clock.now_ms()
    return await add_user(services.store, body.email, body.password, body.role, body.org, now)


@router.get("/users")
async def get_users(services: ServicesDep, org: str | None = None) -> list[dict[str, Any]]:
    return await list_users(services.store, org)


def _forget(services: Services, user_id: str) -> None:
    # this process's cache of token subjects: the change counts from the next request
    if services.users is not None:
        services.users.forget(user_id)


# {email:path}: an address may hold a '/', which the URL carries percent-encoded
@router.patch("/users/{email:path}")
async def patch_user(email: str, body: UserChange, services: ServicesDep) -> dict[str, Any]:
    result = await set_user_state(
        services.store, email, services.clock.now_ms(),
        actor=ACTOR, disabled=body.disabled, password=body.password,
    )  # fmt: skip
    _forget(services, result["user_id"])
    return result


@router.delete("/users/{email:path}")
async def delete_user(email: str, services: ServicesDep) -> dict[str, Any]:
    result = await delete_user_by_email(services.store, email, actor=ACTOR)
    _forget(services, result["user_id"])
    return result


@router.post("/gateways", status_code=201)
async def post_gateway(body: GatewayAdd, services: ServicesDep) -> dict[str, str]:
    ttl, now = services.settings.enrollment_ttl_s, services.clock.now_ms()
    return await add_gateway(services.store, body.name, body.org, ttl, now)


@router.post("/backup")
async def post_backup(services: ServicesDep) -> dict[str, str]:
    """`cloud backup`: a copy of the DuckDB file, made between two queries, for the CLI to pack."""
    dest = snapshot_path(services.settings.data_dir)
    try:
        await asyncio.to_thread(snapshot, getattr(services.store, "db", None), dest)
    except NotEmbedded as exc:
        raise HttpProblem(Problem("bad-request", "Bad request", 400, str(exc))) from exc
    return {"path": str(dest)}
