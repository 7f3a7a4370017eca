"""What schemathesis `--checks all` found in the cloud API, each as a plain test (in process,
httpx ASGI): a 405's Allow names every method, bodies that are not JSON are a documented 400,
the documented patterns are the ones enforced, a patch that does not fit the stored object is
a 409, and numbers no float holds are refused instead of breaking things."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from cloud.api.bodies import rule_body_schema
from cloud.app.services import Services
from cloud.notify.channels import EMAIL_PATTERN, URL_PATTERN
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import (
    add_user,
    assert_problem,
    bearer,
    login,
)

RULES = "/api/monitoring/alert_rules"
CHANNELS = "/api/notification_channels"


async def admin(client: httpx.AsyncClient, store: SqlCloudStore) -> dict[str, str]:
    await add_user(store, "root@example.com", Role.ADMIN)
    return bearer(await login(client, "root@example.com"))


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/monitoring/metrics", "GET, POST"),  # reported: `Allow: POST` only
        ("/api/monitoring/alert_rules/x", "DELETE, GET, PATCH"),
        ("/api/notification_channels", "GET, POST"),
        ("/api/users/x", "DELETE, GET, PATCH"),
        ("/api/dashboard/config", "GET, PUT"),
    ],
)
async def test_405_allow_names_every_method_of_the_path(
    client: httpx.AsyncClient, path: str, allow: str
) -> None:
    r = await client.request("OPTIONS", path)
    assert_problem(r, 405)
    assert r.headers["Allow"] == allow


async def test_a_concrete_path_is_not_taken_for_a_template(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    """/alert_rules/changes is GET only; DELETE there reached delete_rule('changes') and
    its Allow named the {rule_id} methods, where OpenAPI matches the concrete path first."""
    auth = await admin(client, store)
    for method in ("DELETE", "PATCH", "OPTIONS"):
        r = await client.request(method, f"{RULES}/changes", headers=auth, json={})
        assert_problem(r, 405)
        assert r.headers["Allow"] == "GET"
    assert (await client.get(f"{RULES}/changes", headers=auth)).status_code == 200
    assert_problem(await client.delete(f"{RULES}/change", headers=auth), 404)  # an id


async def test_a_body_that_is_not_json_is_a_documented_400(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    for method, path in [
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/refresh"),
        ("POST", "/api/api_keys"),
        ("PUT", "/api/dashboard/config"),
        ("PATCH", f"{RULES}/x"),
    ]:
        r = await client.request(
            method, path, content=b"\xff\xfe{", headers={**auth, "Content-Type": "application/json"}
        )
        assert_problem(r, 400)
    spec = (await client.get("/openapi.json")).json()
    for item in spec["paths"].values():
        for operation in item.values():
            if "requestBody" in operation:
                assert "400" in operation["responses"], operation["operationId"]


async def test_patching_a_rule_with_what_another_kind_of_rule_takes_is_409(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    rule = (
        await client.post(
            RULES, headers=auth, json={"metric": "t", "operator": ">", "threshold": 30}
        )
    ).json()
    # valid for an == rule, not for this > rule: the stored rule decides -> 409
    r = await client.patch(f"{RULES}/{rule['id']}", headers=auth, json={"threshold": "open"})
    doc = assert_problem(r, 409)
    assert doc["errors"] == [  # type: ignore[comparison-overlap]
        {"path": "/threshold", "message": "must be a finite number for operator '>'"}
    ]
    # invalid for every rule -> 422
    for patch in (
        {"operator": ">", "threshold": "open"},
        {"operator": "nodata", "for_seconds": None},
        {"device_id": "d1", "source": "model:x"},
        {"metric": None},
        {"colour": "red"},
    ):
        assert_problem(await client.patch(f"{RULES}/{rule['id']}", headers=auth, json=patch), 422)
    r = await client.patch(
        f"{RULES}/{rule['id']}", headers=auth, json={"operator": "==", "threshold": "open"}
    )
    assert r.status_code == 200 and r.json()["threshold"] == "open"


async def test_rule_numbers_no_float_holds_are_refused(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services
) -> None:
    """A for_seconds of 1e308 was stored, then broke every monitoring pass of the org
    (OverflowError: its ms are infinite); a 400-digit threshold was a 500."""
    auth = await admin(client, store)
    for body in (
        {"metric": "t", "operator": "nodata", "for_seconds": 1.7e308},
        {"metric": "t", "operator": ">", "threshold": 10**400},
        {"metric": "t", "operator": "==", "threshold": -(10**400)},
        {"metric": "t", "operator": ">", "threshold": 1, "hysteresis": 10**400},
    ):
        assert_problem(await client.post(RULES, headers=auth, json=body), 422)
    assert (await client.get(RULES, headers=auth)).json() == []
    schema = rule_body_schema(post=True)
    assert schema["properties"]["for_seconds"]["anyOf"][0]["maximum"] == 1e9


async def test_channel_fields_are_the_documented_patterns(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    # `re.match` with `$` let a final newline through: a CR/LF in "to" is a header injection
    for to in ("ops@example.com\n", "ops@example.com\r\nBcc: x@evil.test"):
        assert not re.fullmatch(EMAIL_PATTERN, to)
        body = {"name": "ops", "type": "email", "to": to}
        assert_problem(await client.post(CHANNELS, headers=auth, json=body), 422)
    for url, ok in [
        ("https://hooks.example.com:8443/x?y=1#z", True),
        ("http://user:pw@[2001:db8::1]/hook", True),
        ("http://[zz]/hook", False),  # urlsplit refuses it; the pattern now does too
        ("http://example.com:/hook", False),
        ("http://example.com/caf\u00e9", False),
        ("ftp://example.com/", False),
    ]:
        assert bool(re.fullmatch(URL_PATTERN, url)) is ok, url
        r = await client.post(
            CHANNELS, headers=auth, json={"name": "h", "type": "webhook", "url": url}
        )
        assert r.status_code == (200 if ok else 422), (url, r.text)


async def test_patching_a_channel_with_another_kinds_field_is_409(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    body = {"name": "ops", "type": "email", "to": "ops@example.com"}
    channel = (await client.post(CHANNELS, headers=auth, json=body)).json()
    at = f"{CHANNELS}/{channel['id']}"
    doc = assert_problem(await client.patch(at, headers=auth, json={"url": "http://h/"}), 409)
    assert doc["errors"] == [  # type: ignore[comparison-overlap]
        {"path": "/url", "message": "only webhook channels have a URL"}
    ]
    # the new type without its address: fits a webhook, not this email channel
    assert_problem(await client.patch(at, headers=auth, json={"type": "webhook"}), 409)
    for patch in ({"type": "email", "url": "http://h/"}, {"name": ""}, {"type": "sms"}):
        assert_problem(await client.patch(at, headers=auth, json=patch), 422)
    r = await client.patch(at, headers=auth, json={"type": "webhook", "url": "http://h/"})
    assert r.status_code == 200 and r.json()["type"] == "webhook"


async def test_metrics_take_what_their_schema_says(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    url = "/api/monitoring/metrics"

    def item(**fields: Any) -> list[dict[str, Any]]:
        return [{"source": "model:m", "metric": "acc", "value": 0.5, **fields}]

    r = await client.post(url, headers=auth, json=item(ts=1.7e12))  # an integer to JSON Schema
    assert r.status_code == 200, r.text
    for bad in (item(ts=0), item(value=10**400), item(extra=1), item(ts=2**53)):
        assert_problem(await client.post(url, headers=auth, json=bad), 400)
    # from after to: no points, not an error
    r = await client.get(
        f"{url}?source=model:m&metric=acc&from=1700000000001&to=1700000000000", headers=auth
    )
    assert r.status_code == 200 and r.json()["points"] == []


async def test_enrollment_key_and_device_type_bounds(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    auth = await admin(client, store)
    r = await client.post(
        "/api/v1/gateways/enroll", json={"enrollment_token": "t", "public_key": "A" * 43 + "="}
    )
    assert_problem(r, 401)  # well-formed, but no such token
    for key in ("0", "A" * 44, "A" * 42 + "=="):
        r = await client.post(
            "/api/v1/gateways/enroll", json={"enrollment_token": "t", "public_key": key}
        )
        assert_problem(r, 422)
    r = await client.put(
        "/api/device_types/fridge",
        headers=auth,
        json={"metrics": {"t": {"type": "number", "min": 10**400}}},
    )
    assert_problem(r, 400)  # was a 500: no float holds the bound
    r = await client.put(
        "/api/device_types/fridge",
        headers=auth,
        json={"metrics": {"t": {"type": "number", "min": 5, "max": 1}}},
    )
    assert_problem(r, 400)  # min above max: documented, the one rule JSON Schema cannot state
