"""API keys for ML jobs that post metrics (admin only). The key is shown once, at creation;
the store keeps its SHA-256 digest (a 256-bit random key needs no salt or slow hash)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Response

from cloud.api.deps import (
    API_KEY_PREFIX,
    AUTHED,
    Admin,
    PathId,
    ServicesDep,
    monitoring_of,
    problems,
)
from cloud.api.problems import not_found
from cloud.api.schemas import ApiKeyCreated, ApiKeyOut, ApiKeyRequest
from cloud.security.auth import token_digest

router = APIRouter(prefix="/api/api_keys", tags=["api keys"])


@router.post("", response_model=ApiKeyCreated, responses=problems(*AUTHED, 403, 422))
async def create_api_key(
    request: ApiKeyRequest, principal: Admin, services: ServicesDep
) -> dict[str, Any]:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    info = await monitoring_of(services).create_api_key(
        principal.org_id, request.name, token_digest(key), principal.user_id,
        services.clock.now_ms(),
    )  # fmt: skip
    return {**info.to_dict(), "key": key}


@router.get("", response_model=list[ApiKeyOut], responses=problems(*AUTHED, 403))
async def list_api_keys(principal: Admin, services: ServicesDep) -> list[dict[str, Any]]:
    return [k.to_dict() for k in await monitoring_of(services).list_api_keys(principal.org_id)]


@router.delete(
    "/{key_id}", status_code=204, response_class=Response, responses=problems(*AUTHED, 403, 404)
)
async def revoke_api_key(
    key_id: PathId,
    principal: Admin,
    services: ServicesDep,
) -> Response:
    if not await monitoring_of(services).revoke_api_key(
        principal.org_id, key_id, services.clock.now_ms()
    ):
        raise not_found(f"no API key {key_id!r}")
    return Response(status_code=204)
