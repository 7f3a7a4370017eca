"""POST /api/auth/login, /api/auth/refresh and /api/auth/password."""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import APIRouter, Request

from cloud.api.deps import AUTHED, ServicesDep, Viewer, problems
from cloud.api.problems import forbidden, too_many, unauthorized
from cloud.api.schemas import LoginRequest, PasswordChange, RefreshRequest, TokenResponse
from cloud.app.admin_ops import change_user
from cloud.app.services import Services
from cloud.security.auth import Principal, new_opaque_token, token_digest, verify_password
from cloud.storage.interface import RefreshToken, RefreshUse, User

router = APIRouter(prefix="/api/auth", tags=["auth"])
log = logging.getLogger("iotsphere.cloud.auth")


async def _issue(services: Services, user: User, family_id: str) -> TokenResponse:
    refresh = new_opaque_token()
    expires_at = services.clock.now_ms() + services.settings.refresh_ttl_s * 1000
    await services.store.save_refresh_token(
        RefreshToken(token_digest(refresh), family_id, user.id, expires_at, user.token_version)
    )
    access = services.tokens.issue(Principal(user.id, user.org_id, user.role, user.token_version))
    return TokenResponse(
        access_token=access,
        token_type="bearer",
        expires_in=services.tokens.ttl_s,
        refresh_token=refresh,
    )


@router.post("/login", response_model=TokenResponse, responses=problems(401, 422, 429, 503))
async def login(body: LoginRequest, request: Request, services: ServicesDep) -> TokenResponse:
    email = body.email.strip().lower()
    address = request.client.host if request.client else "unknown"
    keys = (f"user:{email}", f"addr:{address}")
    wait = await services.limiter.retry_after(*keys)
    if wait is not None:
        services.metrics.login_failures.inc("rate_limited")
        log.warning("login throttled: email=%s address=%s retry_after=%.0fs", email, address, wait)
        raise too_many("too many failed logins; try again later", wait)
    user = await services.store.user_by_email(email)
    # argon2 costs tens of ms of CPU: off the event loop
    ok = await asyncio.to_thread(
        verify_password, user.password_hash if user else None, body.password
    )
    # a disabled user gets the wrong password's answer: nobody learns which accounts exist
    if user is None or not ok or user.disabled:
        await services.limiter.record_failure(*keys)
        services.metrics.login_failures.inc("bad_credentials")
        log.warning("login failed: email=%s address=%s", email, address)
        raise unauthorized("wrong e-mail or password")
    await services.limiter.reset(keys[0])
    log.info("login: user=%s org=%s address=%s", user.id, user.org_id, address)
    return await _issue(services, user, uuid.uuid4().hex)


@router.post("/refresh", response_model=TokenResponse, responses=problems(401, 422, 503))
async def refresh(body: RefreshRequest, services: ServicesDep) -> TokenResponse:
    use, token = await services.store.consume_refresh_token(
        token_digest(body.refresh_token), services.clock.now_ms()
    )
    if use is RefreshUse.REUSED:
        assert token is not None
        log.warning(
            "refresh token reused: family %s revoked (user %s)", token.family_id, token.user_id
        )
        raise unauthorized("refresh token already used; log in again")
    if use is not RefreshUse.OK or token is None:
        raise unauthorized(f"refresh token {use.value}")
    user = await services.store.user_by_id(token.user_id)
    if user is None or user.disabled or user.token_version != token.token_version:
        raise unauthorized("refresh token revoked")
    return await _issue(services, user, token.family_id)


@router.post("/password", response_model=TokenResponse, responses=problems(*AUTHED, 403, 422, 429))
async def change_password(
    body: PasswordChange, principal: Viewer, request: Request, services: ServicesDep
) -> TokenResponse:
    """Change one's own password. Every other session of the user ends (their access tokens
    are refused, their refresh tokens revoked); the answer is a new session for this one.
    A wrong current password is a 403 and counts as a failed login."""
    user = await services.store.user_by_id(principal.user_id)
    if user is None:
        raise unauthorized("the token's user does not exist (any more)")
    address = request.client.host if request.client else "unknown"
    keys = (f"user:{user.email}", f"addr:{address}")
    wait = await services.limiter.retry_after(*keys)
    if wait is not None:
        services.metrics.login_failures.inc("rate_limited")
        raise too_many("too many failed attempts; try again later", wait)
    ok = await asyncio.to_thread(verify_password, user.password_hash, body.current_password)
    if not ok:
        await services.limiter.record_failure(*keys)
        services.metrics.login_failures.inc("bad_credentials")
        log.warning("password change refused: user=%s address=%s", user.id, address)
        raise forbidden("the current password is wrong")
    changed = await change_user(
        services.store, user, services.clock.now_ms(),
        actor=f"user:{user.id}", password=body.new_password,
    )  # fmt: skip
    if services.users is not None:
        services.users.forget(user.id)
    return await _issue(services, changed, uuid.uuid4().hex)
