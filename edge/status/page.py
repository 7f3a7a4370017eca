"""The gateway's local status page on the HTTP port: `GET /` and `GET /status.json`.

For an installer at a site without internet: everything comes from the gateway itself (live
counters, DuckDB, the lockout tracker), nothing from the cloud. Protected by the local password
(edge.security.local_password); without one the page says how to set it and shows nothing else.

Sessions: a random 256-bit id in a cookie (HttpOnly, SameSite=Strict, Path=/, Max-Age), held in
memory (a restart logs everyone out, which is fine for a maintenance page), bounded in number,
with an absolute expiry, and tied to the password they were opened with: setting a new password
ends every session. No Secure flag: the page is served over plain HTTP on the site LAN.
Wrong passwords count in an edge.security.lockout tracker per source address and overall, are
audited like device authentication failures, and a lockout answers 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from common.clock import Clock
from common.problem import Problem
from edge.ingest.listener import plain_address
from edge.security import local_password
from edge.security.lockout import LockoutPolicy, LockoutTracker
from edge.status.view import (
    StatusData,
    build_view,
    render_login,
    render_no_password,
    render_status,
)
from edge.storage.records import AuthFailure

log = logging.getLogger("iotsphere.status_page")

COOKIE = "iotsphere_status"
SESSION_TTL_S = 8 * 3600
MAX_SESSIONS = 64
LOGIN_USER = "status-page"  # the identity wrong passwords count against
SNAPSHOT_MAX_AGE_S = 1.0  # several open tabs polling share one store round trip a second
STATIC = Path(__file__).parent / "web"
STATIC_FILES = {"status.css": "text/css", "status.js": "text/javascript"}
SECURITY_HEADERS = {
    # No inline script or style anywhere: the page loads its two files from here and nothing
    # else, which also keeps it working without internet.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
    "Cache-Control": "no-store",
}
# Argon2 costs tens of ms and 64 MiB per verification: far fewer tries than the device limits.
LOGIN_POLICY = LockoutPolicy(
    max_failures_per_user=20, max_failures_per_address=5, window_s=300.0, cooldown_s=300.0
)

AuditSink = Callable[[AuthFailure, str | None], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StatusSource(Protocol):
    async def status_page_data(self) -> StatusData: ...


@dataclass(slots=True)
class _Session:
    expires_at: float  # monotonic
    password_tag: str


def password_tag(encoded_hash: str) -> str:
    return hashlib.sha256(encoded_hash.encode()).hexdigest()[:32]


class Sessions:
    """Session ids -> expiry and the password they belong to. Pure: time from the clock."""

    def __init__(
        self, clock: Clock, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS
    ) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._by_id: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def open(self, tag: str) -> str:
        self._expire()
        while len(self._by_id) >= self._max:
            self._by_id.popitem(last=False)  # the oldest login makes room
        sid = secrets.token_urlsafe(32)
        self._by_id[sid] = _Session(self._clock.monotonic() + self._ttl_s, tag)
        return sid

    def valid(self, sid: str | None, tag: str | None) -> bool:
        if not sid or tag is None:
            return False
        found = self._by_id.get(sid)
        if found is None:
            return False
        if found.expires_at <= self._clock.monotonic() or not hmac.compare_digest(
            found.password_tag, tag
        ):
            del self._by_id[sid]
            return False
        return True

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def _expire(self) -> None:
        now = self._clock.monotonic()
        for sid in [s for s, v in self._by_id.items() if v.expires_at <= now]:
            del self._by_id[sid]


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _problem(problem: Problem, retry_after: int | None = None) -> web.Response:
    resp = web.Response(
        status=problem.status, body=problem.to_json(), content_type="application/problem+json"
    )
    if retry_after is not None:
        resp.headers[hdrs.RETRY_AFTER] = str(retry_after)
    return resp


NOT_LOGGED_IN = Problem("unauthorized", "Not logged in", 401, "log in at / first")
NO_PASSWORD = Problem(
    "no-password",
    "No status password set",
    403,
    "run `iotsphere gateway password set` on the gateway first",
)
CROSS_SITE = Problem(
    "forbidden", "Cross-site request refused", 403, "submit the form from this page"
)


class StatusPage:
    def __init__(
        self,
        source: StatusSource,
        data_dir: Path,
        clock: Clock,
        *,
        name: str = "IoTSphere gateway",
        audit: AuditSink | None = None,
    ) -> None:
        self._source = source
        self._data_dir = data_dir
        self._clock = clock
        self._name = name
        self._audit = audit
        self.sessions = Sessions(clock)
        self._tracker = LockoutTracker(LOGIN_POLICY, clock)
        self._verify_lock = asyncio.Lock()  # one argon2 verification (64 MiB) at a time
        self._snapshot: tuple[float, dict[str, Any], str] | None = None
        self._snapshot_lock = asyncio.Lock()
        self._static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/status.json", self._status_json)
        app.router.add_get("/login", self._login_form)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/favicon.ico", self._no_icon)  # browsers ask; a 404 is log noise

    # -- helpers ------------------------------------------------------------------------------

    def _tag(self) -> str | None:
        try:
            encoded = local_password.load_hash(self._data_dir)
        except local_password.PasswordError as exc:
            log.error("status page: %s", exc)
            return None
        return None if encoded is None else password_tag(encoded)

    def _logged_in(self, request: web.Request) -> bool:
        return self.sessions.valid(request.cookies.get(COOKIE), self._tag())

    async def _view(self) -> tuple[dict[str, Any], str]:
        async with self._snapshot_lock:
            now = self._clock.monotonic()
            if self._snapshot is not None and now - self._snapshot[0] < SNAPSHOT_MAX_AGE_S:
                return self._snapshot[1], self._snapshot[2]
            data = await self._source.status_page_data()
            view = build_view(data, self._clock.now_ms())
            page = render_status(view, self._name)
            self._snapshot = (self._clock.monotonic(), view.to_dict(), page)
            return self._snapshot[1], self._snapshot[2]

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """Form posts only from this page (SameSite covers the cookie; this covers login)."""
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.host

    def _record(self, kind: str, address: str | None, reason: str, locked: str | None) -> None:
        if self._audit is None:
            return
        failure = AuthFailure(
            at=self._clock.now_ms(),
            kind=kind,
            transport="http",
            address=address,
            username=LOGIN_USER,
            client_id=None,
            reason=reason,
        )
        try:
            self._audit(failure, locked)
        except Exception:
            log.exception("status page: audit sink failed for %r", failure)

    # -- handlers ----------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        if self._tag() is None:
            return _html(render_no_password())
        if not self._logged_in(request):
            raise web.HTTPSeeOther("/login")
        _, page = await self._view()
        return _html(page)

    async def _status_json(self, request: web.Request) -> web.StreamResponse:
        if self._tag() is None:
            return _problem(NO_PASSWORD)
        if not self._logged_in(request):
            return _problem(NOT_LOGGED_IN)
        view, _ = await self._view()
        return web.json_response(view)

    async def _login_form(self, request: web.Request) -> web.StreamResponse:
        if self._tag() is None:
            return _html(render_no_password())
        if self._logged_in(request):
            raise web.HTTPSeeOther("/")
        return _html(render_login())

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return _problem(CROSS_SITE)
        try:
            encoded = local_password.load_hash(self._data_dir)
        except local_password.PasswordError:
            encoded = None
        if encoded is None:
            return _html(render_no_password(), 403)
        address = plain_address(request.remote) if request.remote else None
        decision = self._tracker.check(LOGIN_USER, address)
        if decision.locked:
            retry = max(1, math.ceil(decision.retry_after_s))
            self._record("auth_failure", address, f"locked_out ({decision.key})", None)
            resp = _html(
                render_login(f"Too many wrong passwords. Try again in {retry} seconds."), 429
            )
            resp.headers[hdrs.RETRY_AFTER] = str(retry)
            return resp
        form = await request.post()
        given = form.get("password")
        password = given if isinstance(given, str) else ""
        async with self._verify_lock:
            ok = await asyncio.to_thread(local_password.verify, encoded, password)
        if not ok:
            self._record("auth_failure", address, "wrong_password", None)
            for key in self._tracker.record_failure(LOGIN_USER, address):
                self._record("lockout", address, f"too_many_failures ({key})", key)
            return _html(render_login("Wrong password."), 401)
        self._tracker.record_success(LOGIN_USER, address)
        sid = self.sessions.open(password_tag(encoded))
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(
            COOKIE,
            sid,
            max_age=int(self.sessions.ttl_s),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,  # over HTTPS: never sent back in clear
        )
        raise resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            return _problem(CROSS_SITE)
        self.sessions.close(request.cookies.get(COOKIE))
        resp = web.HTTPSeeOther("/login")
        resp.del_cookie(COOKIE, path="/")
        raise resp

    async def _no_icon(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self._static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        resp = web.Response(body=body, content_type=STATIC_FILES[name])
        return resp

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # redirects (login, logout) carry the headers too
                exc.headers.update(SECURITY_HEADERS)
            raise
        resp.headers.update(SECURITY_HEADERS)
        return resp
