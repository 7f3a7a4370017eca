"""The cloud HTTP API in process (httpx ASGITransport): auth, dashboard, tenancy, telemetry."""

from __future__ import annotations

import base64
import json
import logging

import httpx
import jwt
import pytest

from cloud.app.services import Services
from cloud.app.settings import CloudSettings
from cloud.storage.interface import NewAlert, Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.support.cloud import (
    PASSWORD,
    T0,
    Outage,
    RecordingSleep,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
    reading,
)

pytestmark = both_engines


async def seed_org(store: SqlCloudStore, org: str, device: str) -> str:
    o = await store.ensure_org(org, T0)
    await store.insert_readings(
        o.id,
        f"gw-{org}",
        [
            reading(device, "temperature", T0 - 60_000, 21.5),
            reading(device, "door_open", T0 - 60_000, True),
        ],
        T0,
    )
    await store.create_alert(
        o.id, NewAlert("rule-1", "warning", "temperature", 30.5, T0 - 30_000, device_id=device)
    )
    return o.id


# -- the seed's dashboard flow ----------------------------------------------------------------


async def test_login_then_dashboard(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await add_user(store, "ann@example.com", Role.VIEWER)
    await seed_org(store, "default", "thermo-1")
    tokens = await login(client, "Ann@Example.com")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900
    r = await client.get("/api/dashboard", headers=bearer(tokens))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"config", "devices", "alerts"}
    assert body["config"]["widgets"]  # the default layout
    [device] = body["devices"]
    assert device == {
        "device_id": "thermo-1",
        "gateway_id": "gw-default",
        "type": None,
        "status": "online",
        "last_seen": T0 - 60_000 + 5,
        "latest": {"temperature": 21.5, "door_open": True},
    }
    [alert] = body["alerts"]
    assert alert["state"] == "active" and alert["value"] == 30.5
    assert alert["device_id"] == "thermo-1" and alert["notifications"] == []


async def test_dashboard_uses_saved_config(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await add_user(store, "op@example.com", Role.OPERATOR)
    auth = bearer(await login(client, "op@example.com"))
    config = {"title": "Plant 7", "widgets": [{"type": "device_table"}]}
    r = await client.put("/api/dashboard/config", json=config, headers=auth)
    assert r.status_code == 200, r.text
    r = await client.get("/api/dashboard", headers=auth)
    assert r.json()["config"] == config


async def test_device_goes_offline_after_threshold(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock, settings: CloudSettings
) -> None:
    await add_user(store, "ann@example.com")
    await seed_org(store, "default", "thermo-1")
    auth = bearer(await login(client, "ann@example.com"))
    assert (await client.get("/api/devices", headers=auth)).json()[0]["status"] == "online"
    clock.advance(settings.online_threshold_s)
    assert (await client.get("/api/devices", headers=auth)).json()[0]["status"] == "offline"


async def test_store_down_three_attempts_then_503_then_recovery(
    client: httpx.AsyncClient,
    store: SqlCloudStore,
    sleeps: RecordingSleep,
    caplog: pytest.LogCaptureFixture,
    outage: Outage,
) -> None:
    await add_user(store, "ann@example.com")
    auth = bearer(await login(client, "ann@example.com"))
    outage.begin()  # a real one: DuckDB's connection closed, or the PostgreSQL server stopped
    caplog.set_level(logging.WARNING, logger="iotsphere.cloud")
    r = await client.get("/api/dashboard", headers=auth)
    doc = assert_problem(r, 503)
    assert int(r.headers["Retry-After"]) > 0
    assert "database" in str(doc["detail"])
    attempts = [rec for rec in caplog.records if "store query failed" in rec.getMessage()]
    assert [rec.getMessage().split("attempt=")[1][:3] for rec in attempts] == ["1/3", "2/3", "3/3"]
    down = ("ConnectionException", "closed", "Connection refused", "connection failed")
    assert all(any(word in rec.getMessage() for word in down) for rec in attempts)
    assert any(
        rec.levelno == logging.ERROR and "store error" in rec.getMessage() for rec in caplog.records
    )
    assert sleeps.delays == [0.05, 0.1]  # exponential backoff between the 3 attempts
    assert_problem(await client.get("/readyz"), 503)

    outage.end()
    assert (await client.get("/api/dashboard", headers=auth)).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


# -- tokens (RFC 8725) ------------------------------------------------------------------------


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _claims_of(client: httpx.AsyncClient) -> tuple[str, dict[str, object]]:
    token = (await login(client, "ann@example.com"))["access_token"]
    return token, jwt.decode(token, options={"verify_signature": False})


async def _assert_401(client: httpx.AsyncClient, token: str) -> None:
    r = await client.get("/api/dashboard", headers={"Authorization": f"Bearer {token}"})
    assert_problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "change",
    [
        {"nbf": T0 // 1000 + 3600},  # not valid for another hour
        {"iat": T0 // 1000 + 86_400},  # issued a day from now
        {"sub": "never-existed"},
        {"org": "another-org"},  # a real user, but not of this org
        {"nbf": "soon"},
    ],
    ids=["nbf-ahead", "iat-ahead", "unknown-sub", "wrong-org", "nbf-not-numeric"],
)
async def test_correctly_signed_tokens_with_bad_claims_401(
    client: httpx.AsyncClient,
    store: SqlCloudStore,
    services: Services,
    change: dict[str, object],
) -> None:
    """Found by an attack run: these were accepted because the signature was right."""
    await add_user(store, "ann@example.com")
    _, claims = await _claims_of(client)
    key = services.tokens.signing_key
    good = jwt.encode(claims, key, "HS256", headers={"typ": "at+jwt"})
    r = await client.get("/api/dashboard", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200  # sanity: the unchanged claims pass
    claims.update(change)
    await _assert_401(client, jwt.encode(claims, key, "HS256", headers={"typ": "at+jwt"}))


async def test_a_deleted_user_loses_access_within_seconds(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    user = await add_user(store, "ann@example.com")
    auth = bearer(await login(client, "ann@example.com"))
    assert (await client.get("/api/dashboard", headers=auth)).status_code == 200
    await store.db.run(lambda c: c.execute("DELETE FROM users WHERE id = ?", [user.id]))
    clock.advance(2.5)  # the subject check's cache: at most 2 s
    await _assert_401(client, auth["Authorization"].split()[1])


async def test_expired_token_401(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    await add_user(store, "ann@example.com")
    auth = bearer(await login(client, "ann@example.com"))
    assert (await client.get("/api/dashboard", headers=auth)).status_code == 200
    clock.advance(15 * 60)  # exactly the access-token lifetime
    await _assert_401(client, auth["Authorization"].split()[1])


async def test_past_exp_signed_with_real_key_401(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services
) -> None:
    await add_user(store, "ann@example.com")
    _, claims = await _claims_of(client)
    key = services.tokens.signing_key
    claims.update(iat=T0 // 1000 - 3600, exp=T0 // 1000 - 1)
    await _assert_401(client, jwt.encode(claims, key, "HS256", headers={"typ": "at+jwt"}))
    claims.update(exp=T0 // 1000 + 60)  # sanity: the same forgery with a live exp passes
    good = jwt.encode(claims, key, "HS256", headers={"typ": "at+jwt"})
    r = await client.get("/api/dashboard", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200


async def test_alg_none_tampered_wrong_key_and_wrong_claims_401(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services
) -> None:
    await add_user(store, "ann@example.com", Role.VIEWER)
    token, claims = await _claims_of(client)
    header, _payload, signature = token.split(".")
    await _assert_401(client, f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}.")
    tampered = dict(claims, role="admin")
    await _assert_401(client, f"{header}.{_b64(tampered)}.{signature}")
    await _assert_401(client, jwt.encode(claims, b"k" * 32, "HS256", headers={"typ": "at+jwt"}))
    key = services.tokens.signing_key
    await _assert_401(client, jwt.encode(claims, key, "HS256"))  # no typ: not an access token
    await _assert_401(
        client, jwt.encode(dict(claims, aud="other"), key, "HS256", headers={"typ": "at+jwt"})
    )
    await _assert_401(
        client, jwt.encode(dict(claims, iss="other"), key, "HS256", headers={"typ": "at+jwt"})
    )
    no_sub = {k: v for k, v in claims.items() if k != "sub"}
    await _assert_401(client, jwt.encode(no_sub, key, "HS256", headers={"typ": "at+jwt"}))
    await _assert_401(client, "not-a-jwt")
    assert_problem(await client.get("/api/dashboard"), 401)  # no token at all


async def test_refresh_rotates_and_reuse_revokes_family(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    await add_user(store, "ann@example.com")
    first = await login(client, "ann@example.com")
    r = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/api/dashboard", headers=bearer(second))).status_code == 200
    # the rotated token comes back (stolen copy): refused, and the whole family dies
    r = await client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert_problem(r, 401)
    r = await client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_problem(r, 401)
    # a fresh login starts a new family
    third = await login(client, "ann@example.com")
    r = await client.post("/api/auth/refresh", json={"refresh_token": third["refresh_token"]})
    assert r.status_code == 200


async def test_expired_refresh_token_401(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    await add_user(store, "ann@example.com")
    tokens = await login(client, "ann@example.com")
    clock.advance(14 * 24 * 3600)
    r = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert_problem(r, 401)


async def test_failed_logins_rate_limited_per_account(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock, services: object
) -> None:
    await add_user(store, "ann@example.com")
    for _ in range(5):
        r = await client.post(
            "/api/auth/login", json={"email": "ann@example.com", "password": "wrong-guess"}
        )
        assert_problem(r, 401)
    # the 6th attempt is refused before the password is checked, even the right one
    r = await client.post(
        "/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD}
    )
    assert_problem(r, 429)
    assert 0 < int(r.headers["Retry-After"]) <= 15 * 60
    clock.advance(15 * 60)
    assert (
        await client.post(
            "/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD}
        )
    ).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'iotsphere_login_failures_total{reason="bad_credentials"} 5' in metrics
    assert 'iotsphere_login_failures_total{reason="rate_limited"} 1' in metrics


async def test_failed_logins_rate_limited_per_address(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    await add_user(store, "ann@example.com")
    for i in range(5):  # spraying different accounts from one address
        r = await client.post(
            "/api/auth/login", json={"email": f"u{i}@example.com", "password": "x"}
        )
        assert_problem(r, 401)
    r = await client.post(
        "/api/auth/login", json={"email": "ann@example.com", "password": PASSWORD}
    )
    assert_problem(r, 429)


# -- roles and tenants ------------------------------------------------------------------------


async def test_viewer_cannot_write(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await add_user(store, "viewer@example.com", Role.VIEWER)
    await add_user(store, "op@example.com", Role.OPERATOR)
    org_id = (await store.ensure_org("default", T0)).id
    alert = await store.create_alert(org_id, NewAlert(None, "critical", "temperature", 99.0, T0))
    viewer = bearer(await login(client, "viewer@example.com"))
    assert_problem(await client.put("/api/dashboard/config", json={}, headers=viewer), 403)
    assert_problem(await client.post(f"/api/alerts/{alert.id}/ack", headers=viewer), 403)
    op = bearer(await login(client, "op@example.com"))
    r = await client.post(f"/api/alerts/{alert.id}/ack", headers=op)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert_problem(await client.post(f"/api/alerts/{alert.id}/ack", headers=op), 409)
    r = await client.post(f"/api/alerts/{alert.id}/resolve", headers=op)
    assert r.json()["state"] == "resolved" and r.json()["resolved_at"] == T0
    dashboard = (await client.get("/api/dashboard", headers=viewer)).json()
    assert dashboard["alerts"] == []  # resolved: no longer on the dashboard


async def test_other_orgs_objects_are_404(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await seed_org(store, "acme", "acme-dev")
    await seed_org(store, "globex", "globex-dev")
    await add_user(store, "a@acme.test", Role.ADMIN, org="acme")
    await add_user(store, "b@globex.test", Role.ADMIN, org="globex")
    acme = bearer(await login(client, "a@acme.test"))
    globex = bearer(await login(client, "b@globex.test"))
    assert (await client.get("/api/devices/acme-dev", headers=acme)).status_code == 200
    missing = assert_problem(await client.get("/api/devices/nope", headers=globex), 404)
    leaked = assert_problem(await client.get("/api/devices/acme-dev", headers=globex), 404)
    assert leaked["title"] == missing["title"]  # indistinguishable from a missing device
    r = await client.get("/api/devices/acme-dev/telemetry?metric=temperature", headers=globex)
    assert_problem(r, 404)
    assert [d["device_id"] for d in (await client.get("/api/devices", headers=globex)).json()] == [
        "globex-dev"
    ]
    acme_alert = (await client.get("/api/alerts", headers=acme)).json()[0]["id"]
    assert_problem(await client.get(f"/api/alerts/{acme_alert}", headers=globex), 404)
    assert_problem(await client.post(f"/api/alerts/{acme_alert}/ack", headers=globex), 404)
    assert [a["device_id"] for a in (await client.get("/api/alerts", headers=globex)).json()] == [
        "globex-dev"
    ]


# -- telemetry --------------------------------------------------------------------------------


async def test_telemetry_raw_and_bucketed(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await add_user(store, "ann@example.com")
    org_id = (await store.ensure_org("default", T0)).id
    offsets_s = [0, 60, 120, 299, 300, 301, 900]
    values = [1.0, 2.0, 3.0, 6.0, 10.0, 20.0, 7.0]
    batch = [
        reading("d1", "temp", T0 + s * 1000, v) for s, v in zip(offsets_s, values, strict=True)
    ]
    batch.append(reading("d1", "humidity", T0, 55.0))  # another metric: never mixed in
    assert await store.insert_readings(org_id, "gw", batch, T0) == 8
    assert await store.insert_readings(org_id, "gw", batch[:3], T0) == 0  # stored once
    auth = bearer(await login(client, "ann@example.com"))

    window = f"metric=temp&from={T0}&to={T0 + 3_600_000}"
    r = await client.get(f"/api/devices/d1/telemetry?{window}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["points"] == [
        {"ts": T0 + s * 1000, "value": v} for s, v in zip(offsets_s, values, strict=True)
    ]
    r = await client.get(f"/api/devices/d1/telemetry?{window}&bucket=5m", headers=auth)
    body = r.json()
    assert body["device_id"] == "d1" and body["metric"] == "temp" and body["bucket_ms"] == 300_000
    assert body["points"] == [
        {"ts": T0, "min": 1.0, "max": 6.0, "avg": 3.0, "count": 4},
        {"ts": T0 + 300_000, "min": 10.0, "max": 20.0, "avg": 15.0, "count": 2},
        {"ts": T0 + 900_000, "min": 7.0, "max": 7.0, "avg": 7.0, "count": 1},
    ]
    same = await client.get(f"/api/devices/d1/telemetry?{window}&bucket=300", headers=auth)
    assert same.json()["points"] == body["points"]
    # the time range is half-open [from, to)
    r = await client.get(
        f"/api/devices/d1/telemetry?metric=temp&from={T0 + 60_000}&to={T0 + 300_000}&bucket=1h",
        headers=auth,
    )
    hour = T0 // 3_600_000 * 3_600_000  # buckets align to the epoch, not to `from`
    assert r.json()["points"] == [{"ts": hour, "min": 2.0, "max": 6.0, "avg": 11 / 3, "count": 3}]
    # `from` not before `to`: an empty range, not an error (the schema cannot order them)
    for q in (f"from={T0 + 60_000}&to={T0}", f"from={T0}&to={T0}&bucket=5m"):
        r = await client.get(f"/api/devices/d1/telemetry?metric=temp&{q}", headers=auth)
        assert r.status_code == 200 and r.json()["points"] == []


async def test_telemetry_bad_queries_are_422_problems(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    await add_user(store, "ann@example.com")
    auth = bearer(await login(client, "ann@example.com"))
    base = "/api/devices/d1/telemetry"
    doc = assert_problem(await client.get(f"{base}?metric=t&bucket=5 parsecs", headers=auth), 422)
    assert [e["path"] for e in doc["errors"]] == ["/query/bucket"]  # type: ignore[attr-defined]
    assert_problem(await client.get(f"{base}?metric=t&bucket=500ms", headers=auth), 422)
    doc = assert_problem(await client.get(base, headers=auth), 422)  # metric missing
    assert {"path": "/query/metric", "message": "Field required"} in doc["errors"]  # type: ignore[operator]


async def test_gateways_listed_per_org(client: httpx.AsyncClient, store: SqlCloudStore) -> None:
    await add_user(store, "ann@example.com")
    org = await store.ensure_org("default", T0)
    other = await store.ensure_org("other", T0)
    await store.create_gateway(org.id, "site-a", "h1", T0 + 1, T0)
    await store.create_gateway(other.id, "site-b", "h2", T0 + 1, T0)
    r = await client.get("/api/gateways", headers=bearer(await login(client, "ann@example.com")))
    assert [(g["name"], g["enrolled"]) for g in r.json()] == [("site-a", False)]
    assert "enrollment_token_hash" not in r.json()[0]


# -- operations -------------------------------------------------------------------------------


async def test_every_error_is_a_problem_document(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/no/such/route"), 404)
    assert_problem(await client.delete("/api/dashboard"), 405)
    doc = assert_problem(await client.post("/api/auth/login", json={"email": "x"}), 422)
    assert {"path": "/body/password", "message": "Field required"} in doc["errors"]  # type: ignore[operator]
    assert_problem(await client.post("/api/auth/login", content=b"{not json"), 422)


async def test_health_ready_metrics_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.get("/api/dashboard")
    r = await client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert (
        'iotsphere_http_requests_total{method="GET",route="/api/dashboard",status="401"} 1'
        in r.text
    )
    assert 'iotsphere_http_request_duration_seconds_count{route="/readyz"} 1' in r.text
    spec = (await client.get("/openapi.json")).json()
    responses = spec["paths"]["/api/dashboard"]["get"]["responses"]
    assert list(responses["401"]["content"]) == ["application/problem+json"]
    assert list(responses["503"]["content"]) == ["application/problem+json"]
