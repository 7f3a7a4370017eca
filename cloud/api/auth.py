"""POST /api/auth/login, /api/auth/refresh, /api/auth/logout and /api/auth/password.

Two ways to hold the refresh token (docs/decisions/dashboard-sessions.md). Scripts send it in
the JSON body, as CONTRACT.md says. The dashboard logs in with `"cookie": true`: the refresh
token is then an HttpOnly, SameSite=Strict cookie on the /api/auth paths only (Secure over
TLS), which no script in the page can read and no data request carries; /refresh and /logout
without a body use it. Every tab of the browser shares it, so a tab opened by URL is signed in.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Cookie, Request, Response

from cloud.api.deps import AUTHED, ServicesDep, Viewer, problems
from cloud.api.problems import HttpProblem, forbidden, too_many, unauthorized, unavailable
from cloud.api.schemas import LoginRequest, PasswordChange, RefreshRequest, TokenResponse
from cloud.app.admin_ops import change_user
from cloud.app.services import Services
from cloud.security.auth import Principal, new_opaque_token, token_digest, verify_password
from cloud.storage.errors import StoreError
from cloud.storage.interface import RefreshToken, RefreshUse, User

router = APIRouter(prefix="/api/auth", tags=["auth"])
log = logging.getLogger("iotsphere.cloud.auth")


REFRESH_COOKIE = "iotsphere_refresh"
COOKIE_PATH = "/api/auth"  # refresh, logout (and login, password): never sent with data requests
# A hint beside it, readable by the pages and holding no secret: "a refresh cookie was set",
# so a page opened without a session goes to the login page without a refresh doomed to 401.
HINT_COOKIE = "iotsphere_signed_in"
RefreshCookie = Annotated[str | None, Cookie(alias=REFRESH_COOKIE, include_in_schema=False)]


def _set_cookie(response: Response, request: Request, token: str, max_age_s: int) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(
        REFRESH_COOKIE, token, max_age=max_age_s, path=COOKIE_PATH, httponly=True,
        secure=secure, samesite="strict",
    )  # fmt: skip
    response.set_cookie(
        HINT_COOKIE, "1", max_age=max_age_s, path="/", secure=secure, samesite="strict"
    )


def _clear_cookies(response: Response, request: Request) -> Response:
    secure = request.url.scheme == "https"
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, httponly=True, secure=secure, samesite="strict"
    )
    response.delete_cookie(HINT_COOKIE, path="/", secure=secure, samesite="strict")
    return response


def _cleared_cookie_headers(request: Request) -> list[str]:
    """The Set-Cookie headers that remove both cookies (for a problem response)."""
    cleared = _clear_cookies(Response(), request)
    return [v.decode("latin-1") for k, v in cleared.raw_headers if k == b"set-cookie"]


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


@router.post(
    "/login", response_model=TokenResponse, response_model_exclude_none=True,
    responses=problems(401, 422, 429, 503),
)  # fmt: skip
async def login(
    body: LoginRequest, request: Request, response: Response, services: ServicesDep
) -> TokenResponse:
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
    issued = await _issue(services, user, uuid.uuid4().hex)
    if body.cookie:
        assert issued.refresh_token is not None
        _set_cookie(response, request, issued.refresh_token, services.settings.refresh_ttl_s)
        issued.refresh_token = None
    return issued


@router.post(
    "/refresh", response_model=TokenResponse, response_model_exclude_none=True,
    responses=problems(401, 422, 503),
)  # fmt: skip
async def refresh(
    request: Request,
    response: Response,
    services: ServicesDep,
    cookie: RefreshCookie = None,
    body: RefreshRequest | None = None,
) -> TokenResponse:
    """The refresh token from the body (scripts), else from the cookie (the dashboard), whose
    answer sets the next one as the cookie again and leaves it out of the body."""
    from_cookie = body is None
    presented = body.refresh_token if body is not None else cookie
    try:
        if presented is None:
            raise unauthorized("no refresh token (log in first)")
        issued = await _rotate(services, presented)
    except HttpProblem as exc:
        if from_cookie:  # a dead cookie is dropped, so the browser stops sending it
            exc.cookies = _cleared_cookie_headers(request)
        raise
    if from_cookie:
        assert issued.refresh_token is not None
        _set_cookie(response, request, issued.refresh_token, services.settings.refresh_ttl_s)
        issued.refresh_token = None
    return issued


async def _rotate(services: Services, presented: str) -> TokenResponse:
    use, token = await services.store.consume_refresh_token(
        token_digest(presented), services.clock.now_ms()
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


@router.post("/logout", status_code=204, response_class=Response, responses=problems(422, 503))
async def logout(
    request: Request,
    services: ServicesDep,
    cookie: RefreshCookie = None,
    body: RefreshRequest | None = None,
) -> Response:
    """End a session: its refresh token (body, else cookie) is used up without a successor,
    so nothing can refresh it again; the cookie is removed. Unknown or spent tokens are no
    error: logging out twice is still logged out. Access tokens already issued run out by
    themselves (minutes); the dashboard drops its copies in every tab at once."""
    presented = body.refresh_token if body is not None else cookie
    if presented is not None:
        try:
            await services.store.consume_refresh_token(
                token_digest(presented), services.clock.now_ms()
            )
        except StoreError as exc:
            # the token could not be spent: say so (503), but this browser forgets it anyway,
            # so a shared computer is logged out whatever the database does
            log.error("logout: the refresh token could not be revoked: %s", exc)
            problem = unavailable(
                "the session could not be ended on the server; this browser's session cookie"
                " is removed",
                services.settings.retry_after_s,
            )
            problem.cookies = _cleared_cookie_headers(request)
            raise problem from exc
    return _clear_cookies(Response(status_code=204), request)


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
