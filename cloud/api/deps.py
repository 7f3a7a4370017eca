"""FastAPI dependencies: the services, and the calling principal (with role checks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.auth import AuthError, Principal
from cloud.problems import forbidden, unauthorized
from cloud.services import Services
from cloud.store import Role

_bearer = HTTPBearer(auto_error=False, description="JWT access token from /api/auth/login")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Validate the bearer token (the seed's 'Auth Service: decode and verify token')."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("a bearer access token is required")
    try:
        return services.tokens.verify(credentials.credentials)
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting principals with at least `role` (viewer < operator < admin)."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.may(role):
            raise forbidden(f"this action needs the {role.value} role")
        return principal

    return check


Viewer = Annotated[Principal, Depends(current_principal)]
Operator = Annotated[Principal, Depends(require(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


def problems(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses` for error codes; their content is set by document_problems()."""
    return {code: {"description": "problem document (RFC 9457)"} for code in codes}


AUTHED = (401, 503)
