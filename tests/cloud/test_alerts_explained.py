"""Alerts that explain themselves and an alert list for thousands (issue 15, items 2 and 4),
over real HTTP (uvicorn on a loopback port) on both engines: a gateway's alert arrives through
signed sync with its rule and gateway; its detail shows rule, condition, where it was
evaluated and its history; the list is searched, filtered, sorted and paged in the database;
bulk acknowledge/resolve answers per alert and never touches another org's alert."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import httpx

from cloud.app.services import Services
from cloud.notify.outbox import NotificationEvent, enqueue_alert_on
from cloud.storage.interface import NewAlert, Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from common.sync_wire import AlertChange, SyncBatch
from tests.cloud.test_cloud_sync import Gw, batch, enroll, post
from tests.support.cloud import T0, add_user, bearer, both_engines, login, served

pytestmark = both_engines

GW_RULE: dict[str, Any] = {
    "id": "r-local-hot",
    "name": "Boiler too hot",
    "metric": "temp",
    "operator": ">",
    "threshold": 80.0,
    "for_seconds": 30,
    "hysteresis": 2.0,
    "severity": "critical",
    "enabled": True,
    "channels": [],
    "version": 1,
    "device_id": "d1",
}


def gw_alert(**kw: Any) -> AlertChange:
    base = AlertChange(
        change_seq=1,
        id="gw-alert-1",
        rule_id="r-local-hot",
        device_id="d1",
        metric="temp",
        severity="critical",
        state="active",
        value=84.5,
        started_at=T0 - 30_000,
        rule=GW_RULE,
    )
    return dataclasses.replace(base, **kw)


async def user(
    http: httpx.AsyncClient, store: SqlCloudStore, email: str, role: Role, org: str
) -> dict[str, str]:
    await add_user(store, email, role, org)
    return bearer(await login(http, email))


def with_alerts(b: SyncBatch, alerts: list[AlertChange], rules: Any = None) -> SyncBatch:
    """The batch carrying these alerts (and rule list), with the id that makes."""
    return SyncBatch.create(
        gateway_id=b.gateway_id,
        first_seq=b.first_seq,
        last_seq=b.last_seq,
        boot_id=b.boot_id,
        gateway_clock_ms=b.gateway_clock_ms,
        readings=b.readings,
        alerts=alerts,
        rules=rules,
    )


async def synced_gateway_alert(
    http: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> Gw:
    gw = await enroll(http, store, clock, "boiler-room", "default")
    first = batch(gw.gateway_id, 1)
    sent = dataclasses.replace(first, alerts=(gw_alert(),))
    with_rules = type(first).create(
        gateway_id=gw.gateway_id,
        first_seq=sent.first_seq,
        last_seq=sent.last_seq,
        boot_id=sent.boot_id,
        gateway_clock_ms=sent.gateway_clock_ms,
        readings=sent.readings,
        alerts=sent.alerts,
        rules=[GW_RULE],
    )
    r = await post(http, gw, with_rules)
    assert r.status_code == 200, r.text
    return gw


async def test_gateway_alert_explains_itself_and_its_rule_is_listed(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    async with served(services) as http:
        gw = await synced_gateway_alert(http, store, clock)
        op = await user(http, store, "op@example.com", Role.OPERATOR, "default")
        r = await http.get("/api/alerts/gw-alert-1", headers=op)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["rule_name"] == "Boiler too hot"
        assert doc["evaluated"] == "gateway" and doc["gateway_id"] == gw.gateway_id
        assert doc["gateway_name"] == "boiler-room"
        rule = doc["rule"]
        assert (rule["metric"], rule["operator"], rule["threshold"]) == ("temp", ">", 80.0)
        assert (rule["for_seconds"], rule["hysteresis"], rule["device_id"]) == (30, 2.0, "d1")
        assert doc["value"] == 84.5 and doc["started_at"] == T0 - 30_000
        assert [(e["kind"], e["actor"]) for e in doc["history"]] == [
            ("raised", f"gateway {gw.gateway_id}")
        ]
        # acknowledged in the cloud: by whom, when, in the history
        clock.advance(5)
        assert (await http.post("/api/alerts/gw-alert-1/ack", headers=op)).status_code == 200
        # then resolved at the gateway, reported by its next batch
        resolved = gw_alert(change_seq=2, state="resolved", resolved_at=T0 + 9_000)
        nxt = type(batch(gw.gateway_id, 6)).create(
            gateway_id=gw.gateway_id,
            first_seq=6,
            last_seq=5,
            boot_id="boot-1",
            gateway_clock_ms=T0,
            alerts=[resolved],
        )
        assert (await post(http, gw, nxt)).status_code == 200
        doc = (await http.get("/api/alerts/gw-alert-1", headers=op)).json()
        assert doc["acknowledged_by"] == "op@example.com"
        assert doc["resolved_by"] == f"gateway {gw.gateway_id}"
        assert [(e["kind"], e["actor"], e["at"]) for e in doc["history"]] == [
            ("raised", f"gateway {gw.gateway_id}", T0 - 30_000),
            ("acknowledged", "op@example.com", T0 + 5_000),
            ("resolved", f"gateway {gw.gateway_id}", T0 + 9_000),
        ]
        # filtered by the gateway it came from (and not by another one)
        by_gw = await http.get("/api/alerts", headers=op, params={"gateway": gw.gateway_id})
        assert [a["id"] for a in by_gw.json()["items"]] == ["gw-alert-1"]
        none = await http.get("/api/alerts", headers=op, params={"gateway": "elsewhere"})
        assert none.json() == {"items": [], "total": 0, "next": None}
        # the gateway's own rule, read-only beside the cloud's
        rules = (await http.get("/api/monitoring/gateway_rules", headers=op)).json()
        assert [(g["gateway_name"], g["read_only"], g["rule"]["name"]) for g in rules] == [
            ("boiler-room", True, "Boiler too hot")
        ]
        # another org sees neither the alert nor the gateway's rules
        other = await user(http, store, "other@example.com", Role.ADMIN, "other-org")
        assert (await http.get("/api/alerts/gw-alert-1", headers=other)).status_code == 404
        assert (await http.get("/api/monitoring/gateway_rules", headers=other)).json() == []


async def test_the_clouds_own_rules_held_by_a_gateway_are_not_listed_as_its_own(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    async with served(services) as http:
        gw = await enroll(http, store, clock, "site", "default")
        op = await user(http, store, "op@example.com", Role.OPERATOR, "default")
        cloud_rule = {"name": "Cloud hot", "metric": "temp", "operator": ">", "threshold": 50}
        r = await http.post("/api/monitoring/alert_rules", headers=op, json=cloud_rule)
        assert r.status_code == 200, r.text
        pushed = {**r.json(), "channels": []}  # as the gateway got it through its config
        sent = with_alerts(batch(gw.gateway_id, 1), [], rules=[pushed, GW_RULE])
        assert (await post(http, gw, sent)).status_code == 200
        listed = (await http.get("/api/monitoring/gateway_rules", headers=op)).json()
        assert [g["rule"]["id"] for g in listed] == ["r-local-hot"]
        # a later list without the local rule replaces the earlier one whole
        again = with_alerts(batch(gw.gateway_id, 6), [], rules=[pushed])
        assert (await post(http, gw, again)).status_code == 200
        assert (await http.get("/api/monitoring/gateway_rules", headers=op)).json() == []


async def test_an_older_gateways_alert_without_a_rule_is_still_stored(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    async with served(services) as http:
        gw = await enroll(http, store, clock, "old-site", "default")
        old = with_alerts(batch(gw.gateway_id, 1), [gw_alert(rule=None)])
        assert (await post(http, gw, old)).status_code == 200
        op = await user(http, store, "op@example.com", Role.VIEWER, "default")
        doc = (await http.get("/api/alerts/gw-alert-1", headers=op)).json()
        assert doc["rule_name"] is None and doc["rule"] is None
        assert doc["evaluated"] == "gateway" and doc["gateway_id"] == gw.gateway_id


async def seed(store: SqlCloudStore, org: str, n: int) -> list[str]:
    o = await store.ensure_org(org, T0)
    ids = []
    for i in range(n):
        a = await store.create_alert(
            o.id,
            NewAlert(
                rule_id=f"rule-{i % 3}",
                severity=("info", "warning", "critical")[i % 3],
                metric=("temp", "humidity")[i % 2],
                value=float(i),
                started_at=T0 + i * 1000,
                device_id=f"dev-{i:03d}",
                rule={"name": f"Rule {i % 3}", "metric": "temp"},
            ),
        )
        ids.append(a.id)
    return ids


async def test_list_is_filtered_sorted_and_paged_in_the_database(
    services: Services, store: SqlCloudStore
) -> None:
    await seed(store, "default", 25)
    async with served(services) as http:
        h = await user(http, store, "v@example.com", Role.VIEWER, "default")
        # no paging parameters: the CONTRACT's plain array, as before
        plain = (await http.get("/api/alerts", headers=h)).json()
        assert isinstance(plain, list) and len(plain) == 25
        assert plain[0]["rule_name"] == "Rule 0" or plain[0]["rule_name"].startswith("Rule")
        # newest first, 10 a page, cursor to cursor, total on every page
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 10}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/api/alerts", headers=h, params=params)).json()
            assert page["total"] == 25
            seen += [a["device_id"] for a in page["items"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == [f"dev-{i:03d}" for i in reversed(range(25))]
        # filters: severity, search, time range; sort ascending by subject
        page = (
            await http.get(
                "/api/alerts",
                headers=h,
                params={
                    "severity": "critical",
                    "q": "DEV-0",
                    "from": T0 + 5000,
                    "to": T0 + 20_000,
                    "sort": "subject",
                },
            )
        ).json()
        assert [a["device_id"] for a in page["items"]] == [
            "dev-005",
            "dev-008",
            "dev-011",
            "dev-014",
            "dev-017",
        ]
        assert page["total"] == 5 and page["next"] is None
        # severity sort, most severe first, paged without repeats
        first = (
            await http.get("/api/alerts", headers=h, params={"sort": "-severity", "limit": 9})
        ).json()
        second = (
            await http.get(
                "/api/alerts",
                headers=h,
                params={"sort": "-severity", "limit": 9, "cursor": first["next"]},
            )
        ).json()
        assert {a["severity"] for a in first["items"]} == {"critical"} | (
            {"warning"} if len(first["items"]) > 8 else set()
        )
        assert not {a["id"] for a in first["items"]} & {a["id"] for a in second["items"]}
        # a device and a state filter, and a multi-state filter
        one = (
            await http.get("/api/alerts", headers=h, params={"device": "dev-007", "limit": 5})
        ).json()
        assert [a["device_id"] for a in one["items"]] == ["dev-007"]
        both = (
            await http.get("/api/alerts", headers=h, params={"state": "active,acknowledged"})
        ).json()
        assert both["total"] == 25
        # bad input: one problem document each
        for params, status in (
            ({"sort": "colour"}, 422),
            ({"severity": "loud"}, 422),
            ({"state": "active,gone"}, 422),
            ({"limit": 0}, 422),
            ({"cursor": "garbage!!"}, 409),  # well-formed (any string), but not one of ours
            ({"sort": "metric", "cursor": first["next"]}, 409),  # another sort's cursor
            ({"from": 10**40}, 422),  # not "the database is unreachable"
            ({"cursor": _cursor(["-started_at", 10**40, "x"])}, 409),  # a forged huge value
        ):
            r = await http.get("/api/alerts", headers=h, params=params)
            assert r.status_code == status, (params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")


def _cursor(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


async def test_bulk_acknowledge_and_resolve_per_alert_and_tenant_isolated(
    services: Services, store: SqlCloudStore
) -> None:
    mine = await seed(store, "default", 4)
    theirs = await seed(store, "other-org", 1)
    async with served(services) as http:
        op = await user(http, store, "op@example.com", Role.OPERATOR, "default")
        viewer = await user(http, store, "v@example.com", Role.VIEWER, "default")
        body = {"action": "ack", "ids": [mine[0], mine[1], "no-such-alert", theirs[0]]}
        r = await http.post("/api/alert_actions", headers=viewer, json=body)
        assert r.status_code == 403
        await http.post(f"/api/alerts/{mine[1]}/resolve", headers=op)
        r = await http.post("/api/alert_actions", headers=op, json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        assert [(x["id"], x["status"], x.get("state")) for x in got["results"]] == [
            (mine[0], 200, "acknowledged"),
            (mine[1], 409, "resolved"),
            ("no-such-alert", 404, None),
            (theirs[0], 404, None),  # another org's alert: not found, not told it exists
        ]
        assert (got["changed"], got["failed"]) == (1, 3)
        other_org = (await store.ensure_org("other-org", T0)).id
        untouched = await store.get_alert(other_org, theirs[0])
        assert untouched is not None and untouched.state.value == "active"
        assert untouched.acknowledged_by is None
        assert await store.alert_history(other_org, theirs[0]) == [
            h for h in await store.alert_history(other_org, theirs[0]) if h.kind == "raised"
        ]
        r = await http.post(
            "/api/alert_actions",
            headers=op,
            json={"action": "resolve", "ids": [mine[0], mine[2], mine[3]]},
        )
        assert [x["status"] for x in r.json()["results"]] == [200, 200, 200]
        doc = (await http.get(f"/api/alerts/{mine[0]}", headers=op)).json()
        assert [(e["kind"], e["actor"]) for e in doc["history"]] == [
            ("raised", "rule"),
            ("acknowledged", "op@example.com"),
            ("resolved", "op@example.com"),
        ]
        for bad_body in (
            {"action": "explode", "ids": []},
            {"action": "ack", "ids": ["x" * 129]},  # ids are bounded (they go to the audit log)
            {"action": "ack", "ids": [""]},
        ):
            bad = await http.post("/api/alert_actions", headers=op, json=bad_body)
            assert bad.status_code == 422 and bad.headers["content-type"].startswith(
                "application/problem+json"
            )


async def test_each_delivery_attempt_is_in_the_alert_detail(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    [alert_id] = await seed(store, "default", 1)
    org = (await store.ensure_org("default", T0)).id
    assert services.notify is not None
    outbox = services.notify.outbox
    store.db.run_sync(
        lambda c: enqueue_alert_on(
            c,
            org_id=org,
            alert={"id": alert_id},
            channel_ids=["hook-1"],
            event=NotificationEvent.RAISED,
            now_ms=T0,
        )
    )
    [first] = outbox.claim_due(T0, 10)
    outbox.mark_retry(first.id, T0 + 100, T0 + 200, "ConnectError: refused")
    [second] = outbox.claim_due(T0 + 300, 10)
    outbox.mark_sent(second.id, T0 + 400)
    async with served(services) as http:
        h = await user(http, store, "v@example.com", Role.VIEWER, "default")
        doc = (await http.get(f"/api/alerts/{alert_id}", headers=h)).json()
    [n] = doc["notifications"]
    assert (n["status"], n["attempts"]) == ("sent", 2)
    assert n["attempt_log"] == [
        {"attempt": 1, "at": T0 + 100, "result": "failed, will retry",
         "error": "ConnectError: refused"},
        {"attempt": 2, "at": T0 + 400, "result": "sent", "error": None},
    ]  # fmt: skip
