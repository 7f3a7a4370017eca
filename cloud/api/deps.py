"""FastAPI dependencies: the services, and the calling principal (with role checks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.problems import HttpProblem, forbidden, unauthorized
from cloud.app.services import Services
from cloud.monitoring.store import MonitoringStore
from cloud.notify.store import NotifyStore
from cloud.security.auth import AuthError, Principal, token_digest
from cloud.storage.interface import Role
from common.problem import Problem

_bearer = HTTPBearer(auto_error=False, description="JWT access token from /api/auth/login")
bearer_scheme = _bearer  # for an endpoint that also takes a ticket (readings.csv)
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="an API key from POST /api/api_keys"
)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]

# An id in a URL path (device, gateway, user, channel, alert, API key): 1 to 128 characters.
PathId = Annotated[str, Path(min_length=1, max_length=128)]


async def current_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Validate the bearer token (the seed's 'Auth Service: decode and verify token')."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized("a bearer access token is required")
    try:
        principal = services.tokens.verify(credentials.credentials)
        if services.users is not None:
            principal = await services.users.current(principal)
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    return principal


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


def monitoring_of(services: Services) -> MonitoringStore:
    if services.monitoring is None:
        raise unavailable_area("monitoring")
    return services.monitoring


def notify_of(services: Services) -> NotifyStore:
    if services.notify is None:
        raise unavailable_area("notification")
    return services.notify


def unavailable_area(area: str) -> HttpProblem:
    return HttpProblem(
        Problem("not-configured", "Service unavailable", 503, f"{area} storage not configured"),
        {"Retry-After": "60"},
    )


API_KEY_PREFIX = "isk_"  # tells API keys apart from JWTs in an Authorization header


async def metrics_writer(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """An operator's JWT, or an API key (X-API-Key, or Authorization: Bearer isk_...)."""
    if credentials is not None and credentials.scheme.lower() == "bearer":
        if not credentials.credentials.startswith(API_KEY_PREFIX):
            principal = await current_principal(services, credentials)
            if not principal.may(Role.OPERATOR):
                raise forbidden("posting metrics needs the operator role or an API key")
            return principal
        api_key = credentials.credentials
    if api_key is None:
        raise unauthorized("an API key (X-API-Key) or a bearer access token is required")
    info = await monitoring_of(services).api_key_by_hash(token_digest(api_key))
    if info is None:
        raise unauthorized("unknown or revoked API key")
    await monitoring_of(services).touch_api_key(info, services.clock.now_ms())
    return Principal(f"api_key:{info.id}", info.org_id, Role.OPERATOR)


MetricsWriter = Annotated[Principal, Depends(metrics_writer)]
