"""The running cloud's local admin API, used by `iotsphere cloud user add` / `gateway add`.

DuckDB admits one writer process, so while `cloud serve` holds the store the CLI asks the
server to do the work. Authenticated by a bearer secret in the data dir (mode 0600, compared
in constant time): whoever can read the cloud's data may administer it, nobody else. Kept out
of the public OpenAPI document; the operations are the CLI's own (cloud.cli.add_user /
add_gateway), so both paths validate, default and fail alike.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from cloud.admin_ops import (
    DEFAULT_ORG,
    LOCAL_ADMIN_PREFIX,
    add_gateway,
    add_user,
    local_admin_secret,
)
from cloud.api.deps import ServicesDep
from cloud.problems import unauthorized
from cloud.store import Role


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


class GatewayAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    org: str = DEFAULT_ORG


@router.post("/users", status_code=201)
async def post_user(body: UserAdd, services: ServicesDep) -> dict[str, str]:
    now = services.clock.now_ms()
    return await add_user(services.store, body.email, body.password, body.role, body.org, now)


@router.post("/gateways", status_code=201)
async def post_gateway(body: GatewayAdd, services: ServicesDep) -> dict[str, str]:
    ttl, now = services.settings.enrollment_ttl_s, services.clock.now_ms()
    return await add_gateway(services.store, body.name, body.org, ttl, now)
