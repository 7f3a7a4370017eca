"""Sessions shared across tabs, words on the fields that caused them, and the API keys page, in
real headless Chromium on test_web_dashboard's site (a real cloud with a real gateway syncing).

The refresh token is an HttpOnly cookie, the access token lives in each page's memory, and the
tabs of one browser (one Playwright context) share the session over a BroadcastChannel.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.cloud import test_web_dashboard as web
from tests.cloud.test_web_dashboard import EDIT_SESSION, Site, Tab, expired_token
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(120)

site = web.site
browser = web.browser
tab = web.tab


def second_tab(tab: Tab) -> Any:
    """Another page of the same browser (the same context: cookies, BroadcastChannel)."""
    page = tab.context.new_page()
    page.on("console", lambda m: tab.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.console_errors.append(str(e)))
    return page


def test_a_tab_opened_by_url_is_signed_in_and_logout_signs_out_every_tab(
    tab: Tab, site: Site
) -> None:
    page = tab.page
    tab.login("/#/alerts")
    page.locator("#s-active-alerts").wait_for()
    # the refresh token is a cookie no script can read, scoped to the auth endpoints
    (refresh,) = [c for c in tab.context.cookies() if c["name"] == "iotsphere_refresh"]
    assert refresh["httpOnly"] and refresh["sameSite"] == "Strict"
    assert refresh["path"] == "/api/auth"
    assert "iotsphere_refresh" not in page.evaluate("document.cookie")
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0

    # a middle-click / a URL typed into a new tab: signed in, no login page
    other = second_tab(tab)
    other.goto(site.base + "/#/rules")
    other.locator("#new-rule").wait_for()
    assert "/login" not in other.url
    third = second_tab(tab)
    third.goto(site.base + "/#/channels")
    third.locator("h1", has_text="Notification channels").wait_for()

    # logging out in one tab logs out the others at once, and the server forgets the session
    other.click("#logout")
    other.wait_for_url("**/login?reason=logout**")
    page.wait_for_url("**/login?reason=logout**")
    third.wait_for_url("**/login?reason=logout**")
    assert "You are logged out" in page.locator("#login-reason").inner_text()
    assert [c for c in tab.context.cookies() if c["name"] == "iotsphere_refresh"] == []
    fresh = second_tab(tab)
    fresh.goto(site.base + "/#/alerts")
    fresh.wait_for_url("**/login?**")
    assert tab.console_errors == []


def test_a_login_in_one_tab_moves_a_tab_waiting_on_the_login_page_on(tab: Tab, site: Site) -> None:
    waiting = tab.page
    waiting.goto(site.base + "/#/channels")
    waiting.wait_for_url("**/login?**")
    other = second_tab(tab)
    other.goto(site.base + "/login")
    other.fill("#email", web.EMAIL)
    other.fill("#password", web.PASSWORD)
    other.click("#login-submit")
    other.wait_for_url(site.base + "/")
    waiting.wait_for_url(site.base + "/#/channels")  # where it was going, without a login
    waiting.locator("h1", has_text="Notification channels").wait_for()
    assert tab.console_errors == []


def test_logout_revokes_the_refresh_token_on_the_server(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/#/rules")
    page.locator("#new-rule").wait_for()
    (cookie,) = [c for c in tab.context.cookies() if c["name"] == "iotsphere_refresh"]
    page.click("#logout")
    page.wait_for_url("**/login?reason=logout**")
    # a copy of the cookie taken before the logout no longer refreshes
    r = site.http.post(
        f"{site.base}/api/auth/refresh", headers={"Cookie": f"iotsphere_refresh={cookie['value']}"}
    )
    assert r.status_code == 401, r.text


def test_an_access_token_refused_by_the_server_is_renewed_through_the_cookie(
    tab: Tab, site: Site
) -> None:
    """The server says the token expired (the browser thought it valid): one refresh through
    the cookie and the same request again; the user stays where they were."""
    page = tab.page
    tab.login("/#/rules")
    page.locator("#new-rule").wait_for()
    refreshes = len(tab.api_calls("POST", "/api/auth/refresh"))
    page.evaluate(EDIT_SESSION, {"access": expired_token(site)})
    page.goto(site.base + "/#/channels")
    page.locator("h1", has_text="Notification channels").wait_for()
    assert "/login" not in page.url
    assert len(tab.api_calls("POST", "/api/auth/refresh")) == refreshes + 1


def test_scripts_keep_the_json_login_and_refresh(site: Site) -> None:
    """CONTRACT.md's JSON API is unchanged for scripts: the refresh token in the body, no
    cookie set; and a browser's cookie login leaves the refresh token out of the body."""
    with httpx.Client(base_url=site.base) as http:
        body = {"email": web.EMAIL, "password": web.PASSWORD}
        r = http.post("/api/auth/login", json=body)
        assert r.status_code == 200 and "set-cookie" not in r.headers
        first = r.json()
        assert {"access_token", "refresh_token", "expires_in", "token_type"} <= first.keys()
        r = http.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert r.status_code == 200 and r.json()["refresh_token"] != first["refresh_token"]
        r = http.post("/api/auth/login", json={**body, "cookie": True})
        assert r.status_code == 200 and "refresh_token" not in r.json()
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie


# -- words on the fields that caused them -------------------------------------------------


def test_a_server_422_marks_the_field_in_plain_words(tab: Tab, site: Site) -> None:
    """A rule naming a notification channel deleted meanwhile (the form still lists it): the
    API's 422 names /channels/0; the form marks that channel's checkbox group with a message a
    person can act on, no raw id, no regex."""
    page = tab.page
    hook = {"name": "soon-gone", "type": "webhook", "url": f"http://127.0.0.1:{free_port()}/"}
    channel_id = site.api("POST", "/api/notification_channels", json=hook).json()["id"]
    tab.login("/#/rules/new")
    page.fill("#metric", "humidity")
    page.select_option("#operator", ">")
    page.fill("#threshold", "80")
    page.get_by_label("soon-gone (webhook)").check()
    assert site.api("DELETE", f"/api/notification_channels/{channel_id}").status_code == 204
    page.click("#rule-submit")
    error = page.locator("#channels-error")
    error.wait_for()
    assert error.inner_text() == "This notification channel no longer exists; choose another."
    box = page.get_by_label("soon-gone (webhook)")  # the field that caused it, marked
    assert box.get_attribute("aria-invalid") == "true"
    assert "channels-error" in (box.get_attribute("aria-describedby") or "").split()
    assert page.evaluate("document.activeElement.value") == channel_id
    summary = page.locator("#rule-form-error").inner_text()
    assert channel_id not in summary and "/channels" not in summary
    assert channel_id not in page.locator("main").inner_text()
    tab.shot("rule-form-server-422")


def test_client_messages_are_plain_words(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/#/rules/new")
    page.fill("#metric", "bad metric!")
    page.select_option("#operator", "<")
    page.fill("#threshold", "1")
    page.click("#rule-submit")
    error = page.locator("#metric-error")
    error.wait_for()
    text = error.inner_text()
    assert "[" not in text and "{" not in text, text  # no regex
    assert re.search(r"letters, digits", text), text
    assert page.locator("#metric").get_attribute("aria-invalid") == "true"
    assert "metric-error" in (page.locator("#metric").get_attribute("aria-describedby") or "")


def test_a_channel_refused_by_the_server_is_marked_on_its_field(tab: Tab, site: Site) -> None:
    """The browser takes http://bad host/ as a URL; the API does not (a space): its 422 for
    /url is shown on the URL field, not as a line of JSON terms."""
    page = tab.page
    tab.login("/#/channels")
    page.fill("#channel-name", "spaced")
    page.fill("#channel-target", "http://exa mple.com/hook")
    page.click("#channel-form button[type=submit], form.inline-form button[type=submit]")
    error = page.locator("#channel-target-error")
    error.wait_for()
    assert error.inner_text() == "Must not contain spaces or control characters."
    assert page.locator("#channel-target").get_attribute("aria-invalid") == "true"
    assert page.locator("#channel-name").get_attribute("aria-invalid") is None


# -- API keys ---------------------------------------------------------------------------------


def test_api_keys_are_created_shown_once_listed_and_revoked(tab: Tab, site: Site) -> None:
    page = tab.page
    tab.login("/#/models")
    page.locator("#models-api-keys").click()  # where the Models page tells jobs to use one
    page.wait_for_url("**/#/api-keys")
    # the URL changes first; the page marks its nav link when the route is shown
    expect(page.locator("[data-nav='api-keys']")).to_have_attribute("aria-current", "page")
    page.click("#api-key-create")  # no name: said on the field, nothing posted
    assert page.locator("#api-key-name").get_attribute("aria-invalid") == "true"
    assert tab.api_calls("POST", "/api/api_keys") == []
    page.fill("#api-key-name", "churn nightly job")
    page.click("#api-key-create")
    secret = page.locator("#api-key-secret")
    secret.wait_for()
    key = secret.input_value()
    assert key.startswith("isk_")
    assert "only time the key is shown" in page.locator("#s-new-key").inner_text()
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
    page.click("#api-key-copy")
    page.locator("#api-key-copy-status", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("tr", has_text="churn nightly job")
    row.wait_for()
    assert key not in row.inner_text()
    tab.shot("api-keys")

    # the key works for a job, as the Models page says
    metric = [{"source": "model:nightly", "metric": "accuracy", "value": 0.9}]
    url = f"{site.base}/api/monitoring/metrics"
    assert site.http.post(url, json=metric, headers={"X-API-Key": key}).status_code == 200
    page.click("#api-key-done")
    assert page.locator("#api-key-secret").count() == 0
    page.reload()
    row.wait_for()
    assert page.locator("#api-key-secret").count() == 0  # shown once: not after a reload
    used = row.locator("td[data-label='Last used'] time")  # the job's request just now
    assert used.count() == 1

    button = row.get_by_role("button", name="Revoke API key churn nightly job")
    button.click()  # the first click only arms it
    assert button.inner_text() == "Confirm revoke"
    assert [u for m, u in tab.requests if m == "DELETE"] == []
    button.click()
    revoked = page.locator("table", has=page.locator("caption", has_text="Revoked API keys"))
    revoked.locator("tr", has_text="churn nightly job").wait_for()
    # and the API refuses it from now on
    r = site.http.post(url, json=metric, headers={"X-API-Key": key})
    assert r.status_code == 401, r.text
    assert tab.console_errors == []
