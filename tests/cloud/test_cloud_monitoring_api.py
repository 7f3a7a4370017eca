"""Alert rules, metrics, API keys and notification channels through the API (in-process ASGI):
roles, org isolation, validation problems, versioning."""

from __future__ import annotations

from typing import Any

import httpx

from cloud.app.services import Services
from cloud.storage.interface import NewAlert, Role
from cloud.storage.store import SqlCloudStore
from tests.support.cloud import (
    T0,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
)

pytestmark = both_engines

RULE = {"source": "model:churn-v3", "metric": "accuracy", "operator": "<", "threshold": 0.8}


async def _as(
    client: httpx.AsyncClient, store: SqlCloudStore, email: str, role: Role, org: str = "default"
) -> dict[str, str]:
    await add_user(store, email, role, org)
    return bearer(await login(client, email))


async def test_rule_crud_is_versioned_with_tombstones(
    client: httpx.AsyncClient, store: SqlCloudStore, services: Services
) -> None:
    op = await _as(client, store, "op@example.com", Role.OPERATOR)
    r = await client.post("/api/monitoring/alert_rules", headers=op, json=RULE)
    assert r.status_code == 200, r.text
    rule = r.json()
    assert rule["version"] == 1 and rule["severity"] == "warning" and rule["channels"] == []
    assert rule["name"] == "accuracy < 0.8"
    other = (
        await client.post(
            "/api/monitoring/alert_rules",
            headers=op,
            json={
                "device_type": "fridge",
                "metric": "temp",
                "operator": "nodata",
                "for_seconds": 300,
            },
        )
    ).json()
    assert other["version"] == 2 and other["threshold"] is None

    r = await client.patch(
        f"/api/monitoring/alert_rules/{rule['id']}", headers=op, json={"threshold": 0.75}
    )
    assert r.status_code == 200, r.text
    assert r.json()["threshold"] == 0.75 and r.json()["version"] == 3
    assert r.json()["source"] == "model:churn-v3"
    # a new scope replaces the old one
    r = await client.patch(
        f"/api/monitoring/alert_rules/{rule['id']}", headers=op, json={"device_id": "d1"}
    )
    assert r.json()["device_id"] == "d1" and r.json().get("source") is None

    r = await client.delete(f"/api/monitoring/alert_rules/{other['id']}", headers=op)
    assert r.status_code == 204
    assert_problem(await client.get(f"/api/monitoring/alert_rules/{other['id']}", headers=op), 404)
    assert_problem(
        await client.delete(f"/api/monitoring/alert_rules/{other['id']}", headers=op), 404
    )
    listed = (await client.get("/api/monitoring/alert_rules", headers=op)).json()
    assert [x["id"] for x in listed] == [rule["id"]]

    assert services.monitoring is not None
    org_id = (await store.user_by_email("op@example.com")).org_id  # type: ignore[union-attr]
    changes = await services.monitoring.rule_changes_since(org_id, 2)
    assert changes.version == 5
    assert [(r.id, r.version) for r in changes.rules] == [(rule["id"], 4)]
    assert changes.deleted == ((other["id"], 5),)
    r = await client.get("/api/monitoring/alert_rules/changes?since=4", headers=op)
    assert r.json() == {"version": 5, "rules": [], "deleted": [{"id": other["id"], "version": 5}]}


async def test_invalid_rule_is_a_problem_listing_every_field(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    op = await _as(client, store, "op@example.com", Role.OPERATOR)
    r = await client.post(
        "/api/monitoring/alert_rules",
        headers=op,
        json={"metric": "bad metric!", "operator": "~", "severity": "loud", "colour": "red"},
    )
    doc = assert_problem(r, 422)
    paths = {e["path"] for e in doc["errors"]}  # type: ignore[attr-defined]
    assert {"/metric", "/operator", "/severity", "/colour"} <= paths
    # a well-formed rule naming a channel the org lacks: a conflict with what is stored
    r = await client.post(
        "/api/monitoring/alert_rules", headers=op, json={**RULE, "channels": ["nope"]}
    )
    doc = assert_problem(r, 409)
    assert doc["errors"] == [{"path": "/channels/0", "message": "no notification channel 'nope'"}]
    assert_problem(await client.post("/api/monitoring/alert_rules", headers=op, json=[1]), 422)
    assert (await client.get("/api/monitoring/alert_rules", headers=op)).json() == []


async def test_viewer_cannot_change_rules_and_orgs_are_isolated(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    viewer = await _as(client, store, "v@example.com", Role.VIEWER)
    assert_problem(await client.post("/api/monitoring/alert_rules", headers=viewer, json=RULE), 403)
    a = await _as(client, store, "a@example.com", Role.ADMIN, org="org-a")
    b = await _as(client, store, "b@example.com", Role.ADMIN, org="org-b")
    rule = (await client.post("/api/monitoring/alert_rules", headers=b, json=RULE)).json()
    b_org = (await store.user_by_email("b@example.com")).org_id  # type: ignore[union-attr]
    alert = await store.create_alert(b_org, NewAlert(rule["id"], "warning", "accuracy", 0.7, T0))
    for method, path in [
        ("GET", f"/api/monitoring/alert_rules/{rule['id']}"),
        ("DELETE", f"/api/monitoring/alert_rules/{rule['id']}"),
        ("GET", f"/api/alerts/{alert.id}"),
        ("POST", f"/api/alerts/{alert.id}/ack"),
    ]:
        assert_problem(await client.request(method, path, headers=a), 404)
    r = await client.patch(f"/api/monitoring/alert_rules/{rule['id']}", headers=a, json={})
    assert_problem(r, 404)
    assert (await client.get("/api/monitoring/alert_rules", headers=a)).json() == []
    assert (await client.get(f"/api/alerts/{alert.id}", headers=b)).status_code == 200
    # A's rule cannot point at B's channel
    ch = (
        await client.post(
            "/api/notification_channels",
            headers=b,
            json={"name": "b", "type": "email", "to": "b@example.com"},
        )
    ).json()
    r = await client.post(
        "/api/monitoring/alert_rules", headers=a, json={**RULE, "channels": [ch["id"]]}
    )
    assert_problem(r, 409)  # as a channel that does not exist
    assert_problem(await client.get(f"/api/notification_channels/{ch['id']}", headers=a), 404)


async def test_metrics_need_an_operator_or_an_api_key(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    admin = await _as(client, store, "admin@example.com", Role.ADMIN)
    viewer = await _as(client, store, "v@example.com", Role.VIEWER)
    item = {"source": "model:churn-v3", "metric": "accuracy", "value": 0.9, "ts": T0 - 10}
    assert_problem(await client.post("/api/api_keys", headers=viewer, json={"name": "x"}), 403)
    r = await client.post("/api/api_keys", headers=admin, json={"name": "nightly job"})
    assert r.status_code == 200, r.text
    key = r.json()["key"]
    assert key.startswith("isk_")
    listed = (await client.get("/api/api_keys", headers=admin)).json()
    assert [k["name"] for k in listed] == ["nightly job"] and "key" not in listed[0]

    r = await client.post("/api/monitoring/metrics", headers={"X-API-Key": key}, json=[item])
    assert r.status_code == 200 and r.json() == {"received": 1, "stored": 1}
    again = {**item, "value": 0.1}  # same (source, metric, ts): stored once
    r = await client.post(
        "/api/monitoring/metrics", headers={"Authorization": f"Bearer {key}"}, json=[again]
    )
    assert r.json() == {"received": 1, "stored": 0}
    r = await client.post("/api/monitoring/metrics", headers=admin, json=[{**item, "ts": T0 - 5}])
    assert r.json()["stored"] == 1

    for headers in ({"X-API-Key": key + "x"}, {"Authorization": "Bearer isk_wrong"}, {}):
        assert_problem(
            await client.post("/api/monitoring/metrics", headers=headers, json=[item]), 401
        )
    assert_problem(await client.post("/api/monitoring/metrics", headers=viewer, json=[item]), 403)

    r = await client.get(
        "/api/monitoring/metrics?source=model:churn-v3&metric=accuracy", headers=viewer
    )
    assert r.json()["points"] == [{"ts": T0 - 10, "value": 0.9}, {"ts": T0 - 5, "value": 0.9}]

    key_id = listed[0]["id"]
    assert (await client.delete(f"/api/api_keys/{key_id}", headers=admin)).status_code == 204
    r = await client.post("/api/monitoring/metrics", headers={"X-API-Key": key}, json=[item])
    assert_problem(r, 401)


async def test_bad_metric_items_are_a_400_and_nothing_is_stored(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    op = await _as(client, store, "op@example.com", Role.OPERATOR)
    good = {"source": "model:churn-v3", "metric": "accuracy", "value": 0.9, "ts": T0 - 10}
    bad: list[Any] = [
        good,
        {"source": "churn", "metric": "acc uracy", "value": "high", "ts": -1},
        {**good, "value": None},
        "x",
    ]
    doc = assert_problem(await client.post("/api/monitoring/metrics", headers=op, json=bad), 400)
    paths = [e["path"] for e in doc["errors"]]  # type: ignore[attr-defined]
    assert paths == ["/1/source", "/1/metric", "/1/value", "/1/ts", "/2/value", "/3"]
    assert_problem(await client.post("/api/monitoring/metrics", headers=op, json={}), 400)
    r = await client.get(
        "/api/monitoring/metrics?source=model:churn-v3&metric=accuracy", headers=op
    )
    assert r.json()["points"] == []


async def test_channels_crud_never_returns_secrets(
    client: httpx.AsyncClient, store: SqlCloudStore
) -> None:
    admin = await _as(client, store, "admin@example.com", Role.ADMIN)
    op = await _as(client, store, "op@example.com", Role.OPERATOR)
    body = {"name": "hook", "type": "webhook", "url": "https://example.com/h",
            "secret": "0123456789abcdef0123"}  # fmt: skip
    assert_problem(await client.post("/api/notification_channels", headers=op, json=body), 403)
    r = await client.post("/api/notification_channels", headers=admin, json=body)
    assert r.status_code == 200, r.text
    ch = r.json()
    assert "secret" not in ch and ch["signed"] is True
    listed = (await client.get("/api/notification_channels", headers=op)).json()
    assert listed == [ch]
    r = await client.patch(
        f"/api/notification_channels/{ch['id']}", headers=admin, json={"name": "renamed"}
    )
    assert r.json()["name"] == "renamed" and r.json()["signed"] is True
    doc = assert_problem(
        await client.post(
            "/api/notification_channels", headers=admin, json={"type": "email", "to": "nope"}
        ),
        422,
    )
    assert {e["path"] for e in doc["errors"]} == {"/name", "/to"}  # type: ignore[attr-defined]

    rule = (
        await client.post(
            "/api/monitoring/alert_rules", headers=op, json={**RULE, "channels": [ch["id"]]}
        )
    ).json()
    assert_problem(
        await client.delete(f"/api/notification_channels/{ch['id']}", headers=admin), 409
    )
    await client.delete(f"/api/monitoring/alert_rules/{rule['id']}", headers=op)
    r = await client.delete(f"/api/notification_channels/{ch['id']}", headers=admin)
    assert r.status_code == 204
    assert (await client.get("/api/notification_channels", headers=op)).json() == []
