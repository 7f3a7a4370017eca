"""The users of the caller's organization (admins only): list, change role, disable/enable,
delete. Every query is scoped by the caller's org: another org's user is a 404, as if it did
not exist. Disabling or deleting a user ends their access at once in this process (and
within the subject check's cache time in any other); the org's last enabled admin cannot be
deleted, disabled or demoted (409)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from cloud.api.deps import AUTHED, Admin, PathId, ServicesDep, problems
from cloud.api.problems import not_found
from cloud.api.schemas import UserOut, UserPatch
from cloud.app.admin_ops import change_user, remove_user
from cloud.app.services import Services
from cloud.security.auth import Principal
from cloud.storage.interface import User

router = APIRouter(prefix="/api/users", tags=["users"])


async def _found(services: Services, principal: Principal, user_id: str) -> User:
    user = await services.store.user_by_id(user_id)
    if user is None or user.org_id != principal.org_id:  # no existence leak across orgs
        raise not_found(f"no user {user_id!r}")
    return user


def _forget(services: Services, user_id: str) -> None:
    if services.users is not None:
        services.users.forget(user_id)


@router.get("", response_model=list[UserOut], responses=problems(*AUTHED, 403))
async def list_users(principal: Admin, services: ServicesDep) -> list[dict[str, Any]]:
    return [u.to_dict() for u in await services.store.list_users(principal.org_id)]


@router.get("/{user_id}", response_model=UserOut, responses=problems(*AUTHED, 403, 404))
async def get_user(user_id: PathId, principal: Admin, services: ServicesDep) -> dict[str, Any]:
    return (await _found(services, principal, user_id)).to_dict()


@router.patch("/{user_id}", response_model=UserOut, responses=problems(*AUTHED, 403, 404, 409, 422))
async def patch_user(
    user_id: PathId, body: UserPatch, principal: Admin, services: ServicesDep
) -> dict[str, Any]:
    user = await _found(services, principal, user_id)
    changed = await change_user(
        services.store, user, services.clock.now_ms(),
        actor=f"user:{principal.user_id}", role=body.role, disabled=body.disabled,
    )  # fmt: skip
    _forget(services, user.id)
    return changed.to_dict()


@router.delete(
    "/{user_id}",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404, 409),
)
async def delete_user(user_id: PathId, principal: Admin, services: ServicesDep) -> Response:
    user = await _found(services, principal, user_id)
    await remove_user(services.store, user, actor=f"user:{principal.user_id}")
    _forget(services, user.id)
    return Response(status_code=204)
