"""The dashboard's session cookie at the API (cloud/api/auth.py): set only when the login asks
for it, HttpOnly and SameSite=Strict on /api/auth, Secure over HTTPS; refresh and logout by the
cookie; the hint cookie beside it; a dead cookie cleared in the 401's answer."""

from __future__ import annotations

import httpx

from cloud.app.asgi import create_app
from cloud.app.services import Services
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import PASSWORD, Outage, add_user

EMAIL = "cookie@example.com"
BODY = {"email": EMAIL, "password": PASSWORD, "cookie": True}


def set_cookies(r: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line, for each cookie the answer sets or clears."""
    return {line.split("=", 1)[0]: line for line in r.headers.get_list("set-cookie")}


async def test_cookie_login_refresh_and_logout(services: Services, store: SqlCloudStore) -> None:
    await add_user(store, EMAIL)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
        r = await c.post("/api/auth/login", json=BODY)
        assert r.status_code == 200 and "refresh_token" not in r.json()
        lines = set_cookies(r)
        refresh = lines["iotsphere_refresh"]
        for flag in ("HttpOnly", "Path=/api/auth", "SameSite=strict", "Max-Age=1209600"):
            assert flag in refresh, refresh
        assert "Secure" not in refresh  # plain HTTP: a Secure cookie would never come back
        hint = lines["iotsphere_signed_in"]
        assert hint.startswith("iotsphere_signed_in=1;") and "HttpOnly" not in hint
        assert "Path=/;" in hint

        r = await c.post("/api/auth/refresh")  # no body: the cookie (httpx keeps it)
        assert r.status_code == 200 and "access_token" in r.json(), r.text
        assert "refresh_token" not in r.json() and "iotsphere_refresh" in set_cookies(r)
        me = await c.get("/api/dashboard/config", headers={
            "Authorization": f"Bearer {r.json()['access_token']}"})  # fmt: skip
        assert me.status_code == 200

        r = await c.post("/api/auth/logout")
        assert r.status_code == 204
        assert "Max-Age=0" in set_cookies(r)["iotsphere_refresh"]
        assert "Max-Age=0" in set_cookies(r)["iotsphere_signed_in"]
        r = await c.post("/api/auth/refresh")
        assert r.status_code == 401
        assert (await c.post("/api/auth/logout")).status_code == 204  # twice is still out


async def test_a_refused_cookie_is_cleared_and_https_makes_it_secure(
    services: Services, store: SqlCloudStore
) -> None:
    await add_user(store, EMAIL)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="https://cloud.test") as c:
        r = await c.post("/api/auth/login", json=BODY)
        assert r.status_code == 200
        assert "Secure" in set_cookies(r)["iotsphere_refresh"]
        assert "Secure" in set_cookies(r)["iotsphere_signed_in"]
        stolen = c.cookies["iotsphere_refresh"]
        assert (await c.post("/api/auth/refresh")).status_code == 200  # rotated
        c.cookies.set("iotsphere_refresh", stolen, domain="cloud.test", path="/api/auth")
        r = await c.post("/api/auth/refresh")  # the used one again: refused and cleared
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        lines = set_cookies(r)
        assert "Max-Age=0" in lines["iotsphere_refresh"]
        assert "Max-Age=0" in lines["iotsphere_signed_in"]


async def test_logout_while_the_store_is_down_still_removes_the_cookies(
    services: Services, store: SqlCloudStore, outage: Outage
) -> None:
    """A shared computer is logged out even when the refresh token cannot be spent: the 503
    says so, and the browser's cookies are removed with it."""
    await add_user(store, EMAIL)
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
        assert (await c.post("/api/auth/login", json=BODY)).status_code == 200
        outage.begin()
        try:
            r = await c.post("/api/auth/logout")
        finally:
            outage.end()
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "could not be ended" in r.json()["detail"]
        assert "Max-Age=0" in set_cookies(r)["iotsphere_refresh"]
        assert "Max-Age=0" in set_cookies(r)["iotsphere_signed_in"]
        assert (await c.post("/api/auth/refresh")).status_code == 401  # no cookie left
