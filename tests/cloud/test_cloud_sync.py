"""The cloud's gateway side: enrollment, signed idempotent batches, configuration pull.

In-process ASGI for most; the batch path once more over a real uvicorn socket."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cloud.api.sync
import cloud.sync.store
from cloud.app.admin_ops import add_gateway
from cloud.app.services import Services
from cloud.storage.errors import StoreError
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from common.gateway_auth import RequestSigner, generate_private_key, public_key_b64
from common.model import ReadingFlag
from common.sync_wire import (
    AlertChange,
    AuthEvent,
    ClockEpoch,
    DeviceRecord,
    ReadingColumns,
    SyncBatch,
    decode_ack,
    encode_batch,
)
from tests.support.cloud import (
    T0,
    add_user,
    assert_problem,
    bearer,
    both_engines,
    login,
    served,
)

pytestmark = both_engines
BATCHES = "/api/v1/sync/batches"


@dataclass
class Gw:
    gateway_id: str
    signer: RequestSigner
    key: Ed25519PrivateKey


async def enroll(
    http: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock, name: str, org: str
) -> Gw:
    added = await add_gateway(store, name, org, 3600, clock.now_ms())
    key = generate_private_key()
    r = await http.post(
        "/api/v1/gateways/enroll",
        json={"enrollment_token": added["enrollment_token"], "public_key": public_key_b64(key)},
    )
    assert r.status_code == 200, r.text
    assert r.json()["gateway_id"] == added["gateway_id"]
    return Gw(added["gateway_id"], RequestSigner(added["gateway_id"], key, clock), key)


def batch(gw: str, first: int, devices: tuple[str, ...] = ("d1",), n: int = 5) -> SyncBatch:
    rows = [(first + i, devices[i % len(devices)], T0 - 60_000 + i * 1000) for i in range(n)]
    return SyncBatch.create(
        gateway_id=gw,
        first_seq=first,
        last_seq=first + n - 1,
        boot_id="boot-1",
        gateway_clock_ms=T0,
        readings=ReadingColumns(
            seq=tuple(s for s, _, _ in rows),
            device_id=tuple(d for _, d, _ in rows),
            metric=tuple("temp" for _ in rows),
            ts=tuple(t for _, _, t in rows),
            received_at=tuple(t + 7 for _, _, t in rows),
            value=tuple(20.0 + s / 100 for s, _, _ in rows),
            flags=tuple(0 for _ in rows),
            dev_seq=tuple(None for _ in rows),
        ),
        counters={"validation_errors": 3},
        auth_events=(AuthEvent(T0 - 5000, "auth_failure", "mqtt", "bad password", "10.0.0.9"),),
    )


def signed(gw: Gw, b: SyncBatch) -> tuple[bytes, dict[str, str]]:
    body, ctype, cenc = encode_batch(b)
    headers = gw.signer.headers("POST", BATCHES, body)
    return body, {**headers, "Content-Type": ctype, "Content-Encoding": cenc}


async def post(http: httpx.AsyncClient, gw: Gw, b: SyncBatch) -> httpx.Response:
    body, headers = signed(gw, b)
    return await http.post(BATCHES, content=body, headers=headers)


async def get_config(http: httpx.AsyncClient, gw: Gw, since: int) -> dict[str, Any]:
    target = f"/api/v1/sync/config?since={since}"
    r = await http.get(target, headers=gw.signer.headers("GET", target))
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def count(store: SqlCloudStore, table: str) -> int:
    rows = await store.db.run(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchall())
    return int(rows[0][0])


async def admin(http: httpx.AsyncClient, store: SqlCloudStore, org: str = "default") -> Any:
    await add_user(store, f"admin@{org}.example.com", Role.ADMIN, org)
    return bearer(await login(http, f"admin@{org}.example.com"))


# -- enrollment ------------------------------------------------------------------------------


async def test_enrollment_token_is_one_time_and_expires(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    added = await add_gateway(store, "site-a", "default", 3600, clock.now_ms())
    key = public_key_b64(generate_private_key())
    doc = {"enrollment_token": added["enrollment_token"], "public_key": key, "name": "x"}
    r = await client.post("/api/v1/gateways/enroll", json=doc)
    assert r.status_code == 200, r.text
    assert r.json() == {"gateway_id": added["gateway_id"], "org": "default", "cloud_time_ms": T0}
    # a second use, even with another key, is refused and changes nothing
    other = public_key_b64(generate_private_key())
    assert_problem(
        await client.post("/api/v1/gateways/enroll", json={**doc, "public_key": other}), 409
    )
    stored = await store.db.run(
        lambda c: c.execute("SELECT public_key FROM gateway_keys").fetchall()
    )
    assert stored == [(key,)]

    late = await add_gateway(store, "site-b", "default", 3600, clock.now_ms())
    clock.advance(3601)
    r = await client.post(
        "/api/v1/gateways/enroll",
        json={"enrollment_token": late["enrollment_token"], "public_key": key},
    )
    assert "expired" in str(assert_problem(r, 401)["detail"])
    r = await client.post(
        "/api/v1/gateways/enroll", json={"enrollment_token": "guess", "public_key": key}
    )
    assert_problem(r, 401)
    r = await client.post(
        "/api/v1/gateways/enroll",
        json={"enrollment_token": late["enrollment_token"], "public_key": "AAAA"},
    )
    assert_problem(r, 422)
    assert await count(store, "gateway_keys") == 1

    tokens = await admin(client, store)
    listed = {g["name"]: g for g in (await client.get("/api/gateways", headers=tokens)).json()}
    assert listed["site-a"]["enrolled"] and not listed["site-b"]["enrolled"]
    assert listed["site-a"]["revoked"] is False


async def test_failed_enrollments_are_rate_limited_per_address(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    added = await add_gateway(store, "site-a", "default", 3600, clock.now_ms())
    key = public_key_b64(generate_private_key())
    for _ in range(10):
        r = await client.post(
            "/api/v1/gateways/enroll", json={"enrollment_token": "guess", "public_key": key}
        )
        assert_problem(r, 401)
    good = {"enrollment_token": added["enrollment_token"], "public_key": key}
    r = await client.post("/api/v1/gateways/enroll", json=good)
    assert_problem(r, 429)
    assert int(r.headers["retry-after"]) > 0
    clock.advance(15 * 60 + 1)
    assert (await client.post("/api/v1/gateways/enroll", json=good)).status_code == 200


# -- batches ---------------------------------------------------------------------------------


async def test_signed_batches_over_a_socket_are_stored_once(
    services: Services, store: SqlCloudStore, clock: ManualClock
) -> None:
    async with served(services) as http:
        gw = await enroll(http, store, clock, "site-a", "default")
        b = batch(gw.gateway_id, 1, n=20)
        acks = []
        for _ in range(4):  # the first send and 3 resends (each with a fresh token)
            r = await post(http, gw, b)
            assert r.status_code == 200, r.text
            acks.append(r.content)
        assert len(set(acks)) == 1
        ack = decode_ack(acks[0])
        assert (ack.batch_id, ack.first_seq, ack.last_seq) == (b.batch_id, 1, 20)
        assert (ack.stored, ack.duplicates) == (20, 0)
        assert await count(store, "readings") == 20
        assert await count(store, "sync_batches") == 1
        assert await count(store, "gateway_auth_events") == 1

        tokens = await admin(http, store)
        r = await http.get(
            "/api/devices/d1/telemetry",
            params={"metric": "temp", "from": T0 - 120_000},
            headers=tokens,
        )
        assert r.status_code == 200, r.text
        points = r.json()["points"]
        assert [p["ts"] for p in points] == [T0 - 60_000 + i * 1000 for i in range(20)]
        assert points[0]["value"] == pytest.approx(20.01)

        # a batch overlapping stored readings stores only the new ones
        r = await post(http, gw, batch(gw.gateway_id, 1, n=25))
        assert (decode_ack(r.content).stored, decode_ack(r.content).duplicates) == (5, 20)
        assert await count(store, "readings") == 25
        # a signed GET with a query string: the signature covers path and query as sent
        config = await get_config(http, gw, 0)
        assert config["version"] == 0 and config["rules"] == []


async def test_tampered_replayed_unsigned_and_foreign_requests_store_nothing(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    other = await enroll(client, store, clock, "site-b", "default")
    body, headers = signed(gw, batch(gw.gateway_id, 1))

    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x01
    assert_problem(await client.post(BATCHES, content=bytes(flipped), headers=headers), 401)
    no_auth = {k: v for k, v in headers.items() if k != "Authorization"}
    assert_problem(await client.post(BATCHES, content=body, headers=no_auth), 401)
    # signed by another gateway's key while claiming to be this one
    impostor = RequestSigner(gw.gateway_id, other.key, clock)
    forged = impostor.headers("POST", BATCHES, body)["Authorization"]
    assert_problem(
        await client.post(BATCHES, content=body, headers={**headers, "Authorization": forged}),
        401,
    )
    assert await count(store, "readings") == 0

    # a batch for gateway A sent (validly signed) by gateway B
    b_body, b_headers = signed(other, batch(gw.gateway_id, 1))
    assert_problem(await client.post(BATCHES, content=b_body, headers=b_headers), 403)
    assert await count(store, "readings") == 0

    r = await client.post(BATCHES, content=body, headers=headers)
    assert r.status_code == 200, r.text
    # the captured request, sent again as is: its token was used
    assert_problem(await client.post(BATCHES, content=body, headers=headers), 401)
    assert await count(store, "readings") == 5
    assert await count(store, "sync_batches") == 1

    # wrong content type / garbage body, validly signed
    garbage = b"\x00not cbor"
    h = {**gw.signer.headers("POST", BATCHES, garbage), "Content-Type": "text/plain"}
    assert_problem(await client.post(BATCHES, content=garbage, headers=h), 415)
    h = {**gw.signer.headers("POST", BATCHES, garbage), "Content-Type": "application/cbor"}
    assert_problem(await client.post(BATCHES, content=garbage, headers=h), 400)


async def test_a_revoked_gateway_is_refused(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    assert (await post(client, gw, batch(gw.gateway_id, 1))).status_code == 200
    tokens = await admin(client, store)
    r = await client.post(f"/api/gateways/{gw.gateway_id}/revoke", headers=tokens)
    assert r.status_code == 204, r.text
    assert_problem(await post(client, gw, batch(gw.gateway_id, 6)), 401)
    target = "/api/v1/sync/config?since=0"
    assert_problem(await client.get(target, headers=gw.signer.headers("GET", target)), 401)
    assert await count(store, "readings") == 5
    listed = (await client.get("/api/gateways", headers=tokens)).json()
    assert listed[0]["revoked"] is True
    # another org's admin cannot revoke it (no existence leak either)
    other = await admin(client, store, "acme")
    assert_problem(await client.post(f"/api/gateways/{gw.gateway_id}/revoke", headers=other), 404)


async def test_a_device_of_another_org_rejects_the_whole_batch(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    theirs = await enroll(client, store, clock, "their-site", "acme")
    assert (await post(client, theirs, batch(theirs.gateway_id, 1, ("d1",)))).status_code == 200
    ours = await enroll(client, store, clock, "our-site", "default")
    r = await post(client, ours, batch(ours.gateway_id, 1, ("d2", "d1")))
    assert assert_problem(r, 403)["devices"] == ["d1"]
    assert await count(store, "readings") == 5  # only acme's
    tokens = await admin(client, store)
    assert (await client.get("/api/devices", headers=tokens)).json() == []
    assert await count(store, "sync_batches") == 1


async def test_a_failure_mid_batch_applies_nothing(
    client: httpx.AsyncClient,
    store: SqlCloudStore,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    alert = AlertChange(1, "a1", "r1", "d1", "temp", "critical", "active", 30.0, T0 - 1000)
    b = SyncBatch.create(**{**_fields(batch(gw.gateway_id, 1)), "alerts": (alert,)})

    def boom(*_args: object) -> None:
        raise StoreError("disk gone")  # after the readings went in

    monkeypatch.setattr(cloud.sync.store, "_upsert_alert", boom)
    assert_problem(await post(client, gw, b), 503)
    for table in ("readings", "devices", "sync_batches", "gateway_counters", "alerts"):
        assert await count(store, table) == 0, table
    monkeypatch.undo()
    r = await post(client, gw, b)
    assert r.status_code == 200, r.text
    assert decode_ack(r.content).stored == 5
    assert await count(store, "alerts") == 1


def _fields(b: SyncBatch) -> dict[str, Any]:
    return {
        "gateway_id": b.gateway_id,
        "first_seq": b.first_seq,
        "last_seq": b.last_seq,
        "boot_id": b.boot_id,
        "gateway_clock_ms": b.gateway_clock_ms,
        "readings": b.readings,
        "counters": b.counters,
        "auth_events": b.auth_events,
    }


# -- alerts and configuration ----------------------------------------------------------------


async def test_gateway_alerts_and_cloud_acks_round_trip(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    active = AlertChange(1, "a1", "r1", "d1", "temp", "critical", "active", 30.5, T0 - 1000)
    b = SyncBatch.create(**{**_fields(batch(gw.gateway_id, 1)), "alerts": (active,)})
    assert (await post(client, gw, b)).status_code == 200
    tokens = await admin(client, store)
    alerts = (await client.get("/api/alerts", headers=tokens)).json()
    assert [(a["id"], a["state"], a["device_id"]) for a in alerts] == [("a1", "active", "d1")]
    assert (await get_config(client, gw, 0))["alert_acks"] == []

    r = await client.post("/api/alerts/a1/ack", headers=tokens)
    assert r.status_code == 200, r.text
    config = await get_config(client, gw, 0)
    assert config["alert_acks"] == ["a1"]
    assert config["alert_changes"][0]["state"] == "acknowledged"

    # the gateway applied it and reports the acknowledged state: nothing left to push
    acked = AlertChange(
        2, "a1", "r1", "d1", "temp", "critical", "acknowledged", 30.5, T0 - 1000, T0
    )
    b2 = SyncBatch.create(**{**_fields(batch(gw.gateway_id, 6)), "alerts": (acked,)})
    assert (await post(client, gw, b2)).status_code == 200
    assert (await get_config(client, gw, 0))["alert_acks"] == []
    # a stale "active" never moves the cloud's alert back
    b3 = SyncBatch.create(**{**_fields(batch(gw.gateway_id, 11)), "alerts": (active,)})
    assert (await post(client, gw, b3)).status_code == 200
    assert (await client.get("/api/alerts/a1", headers=tokens)).json()["state"] == "acknowledged"


async def test_config_carries_rules_in_scope_and_their_deletion(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    other = await enroll(client, store, clock, "site-b", "default")
    assert (await post(client, gw, batch(gw.gateway_id, 1, ("d1",)))).status_code == 200
    assert (await post(client, other, batch(other.gateway_id, 1, ("d9",)))).status_code == 200
    tokens = await admin(client, store)

    async def rule(**scope: Any) -> dict[str, Any]:
        doc = {"metric": "temp", "operator": ">", "threshold": 30, **scope}
        r = await client.post("/api/monitoring/alert_rules", headers=tokens, json=doc)
        assert r.status_code == 200, r.text
        created: dict[str, Any] = r.json()
        return created

    mine = await rule(device_id="d1")
    typed = await rule(device_type="thermo")
    anywhere = await rule()
    theirs = await rule(device_id="d9")
    model = await rule(source="model:x")

    config = await get_config(client, gw, 0)
    assert config["version"] == 5
    assert {r["id"] for r in config["rules"]} == {mine["id"], typed["id"], anywhere["id"]}
    sent = next(r for r in config["rules"] if r["id"] == mine["id"])
    assert sent == {k: v for k, v in mine.items() if v is not None}  # CONTRACT rule shape
    assert config["revoked_devices"] == []
    assert {r["id"] for r in (await get_config(client, other, 0))["rules"]} == {
        typed["id"],
        anywhere["id"],
        theirs["id"],
    }
    assert (await get_config(client, gw, 5))["rules"] == []

    r = await client.delete(f"/api/monitoring/alert_rules/{mine['id']}", headers=tokens)
    assert r.status_code in (200, 204), r.text
    config = await get_config(client, gw, 5)
    assert config["version"] == 6
    assert config["rules"] == [{"id": mine["id"], "deleted": True, "version": 6}]
    assert model["id"] not in {r["id"] for r in (await get_config(client, gw, 0))["rules"]}

    listed = (await client.get("/api/gateways", headers=tokens)).json()
    assert {g["name"]: g["config_version"] for g in listed}["site-a"] == 0  # the last asked


async def test_clock_skew_is_recorded_and_shown(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    ahead = ManualClock(T0 + 6 * 60_000)  # 6 minutes ahead: within the leeway, but flagged
    skewed = Gw(gw.gateway_id, RequestSigner(gw.gateway_id, gw.key, ahead), gw.key)
    assert (await post(client, skewed, batch(gw.gateway_id, 1))).status_code == 200
    tokens = await admin(client, store)
    (listed,) = (await client.get("/api/gateways", headers=tokens)).json()
    assert listed["clock_skewed"] is True
    assert listed["clock_skew_ms"] == 6 * 60_000
    assert listed["last_seen"] == T0
    assert (await post(client, gw, batch(gw.gateway_id, 6))).status_code == 200
    (listed,) = (await client.get("/api/gateways", headers=tokens)).json()
    assert listed["clock_skewed"] is False


async def test_readings_keep_their_clocks_and_suspect_ones_are_flagged(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    ahead = ManualClock(T0 + 6 * 60_000)  # the gateway's clock is 6 minutes fast today
    skewed = Gw(gw.gateway_id, RequestSigner(gw.gateway_id, gw.key, ahead), gw.key)
    unsynced = int(ReadingFlag.GATEWAY_CLOCK_UNSYNCED)
    b = dataclasses.replace(
        batch(gw.gateway_id, 1, n=4),
        # readings 1-2 from a boot without NTP; 3-4 from the current, unmeasured epoch
        epochs=(
            ClockEpoch(1, "boot-0", T0 - 100_000, unsynced),
            ClockEpoch(3, "boot-1", T0 - 200_000, 0),
        ),
    )
    assert (await post(client, skewed, b)).status_code == 200
    rows = await store.db.run(
        lambda c: c.execute(
            "SELECT ts, flags, gateway_boot_id, gateway_mono_ms, gateway_received_at,"
            " cloud_received_at FROM readings ORDER BY ts"
        ).fetchall()
    )
    skew = int(ReadingFlag.GATEWAY_CLOCK_SKEWED)
    assert [r[1] for r in rows] == [unsynced, unsynced, skew, skew]
    assert [r[2] for r in rows] == ["boot-0", "boot-0", "boot-1", "boot-1"]
    assert [r[3] for r in rows] == [
        r[4] - (T0 - 100_000) if i < 2 else r[4] - (T0 - 200_000) for i, r in enumerate(rows)
    ]
    assert all(r[5] == clock.now_ms() for r in rows)  # cloud receive time kept beside
    tokens = await admin(client, store)
    r = await client.get(
        "/api/devices/d1/telemetry",
        params={"metric": "temp", "from": T0 - 120_000, "to": T0},
        headers=tokens,
    )
    points = r.json()["points"]
    assert points[0]["flags"] == ["GATEWAY_CLOCK_UNSYNCED"]
    assert points[-1]["flags"] == ["GATEWAY_CLOCK_SKEWED"]


async def test_a_gateway_device_list_shows_devices_with_their_types_before_any_reading(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    listed = SyncBatch.create(
        gateway_id=gw.gateway_id,
        first_seq=1,
        last_seq=0,
        boot_id="boot-1",
        gateway_clock_ms=T0,
        devices=(DeviceRecord("t1", "thermo", "active"), DeviceRecord("t2", None, "active")),
    )
    assert (await post(client, gw, listed)).status_code == 200
    tokens = await admin(client, store)
    devices = {d["device_id"]: d for d in (await client.get("/api/devices", headers=tokens)).json()}
    assert devices["t1"]["type"] == "thermo" and devices["t1"]["gateway_id"] == gw.gateway_id
    assert set(devices) == {"t1", "t2"}


async def test_a_device_revoked_in_the_cloud_is_in_its_gateway_config(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    other = await enroll(client, store, clock, "site-b", "default")
    first = batch(gw.gateway_id, 1, devices=("d1", "d2"))
    assert (await post(client, gw, first)).status_code == 200
    tokens = await admin(client, store)
    await add_user(store, "viewer@default.example.com", Role.VIEWER, "default")
    viewer = bearer(await login(client, "viewer@default.example.com"))
    assert (await client.post("/api/devices/d1/revoke", headers=viewer)).status_code == 403
    assert (await client.post("/api/devices/nope/revoke", headers=tokens)).status_code == 404
    assert (await client.post("/api/devices/d1/revoke", headers=tokens)).status_code == 204
    assert (await client.post("/api/devices/d1/revoke", headers=tokens)).status_code == 204
    assert (await get_config(client, gw, 0))["revoked_devices"] == ["d1"]
    assert (await get_config(client, other, 0))["revoked_devices"] == []
    # a device list the gateway sent before it applied the revocation does not undo it
    stale = SyncBatch.create(
        gateway_id=gw.gateway_id,
        first_seq=6,
        last_seq=5,
        boot_id="boot-1",
        gateway_clock_ms=T0,
        devices=(DeviceRecord("d1", None, "active"), DeviceRecord("d2", None, "active")),
    )
    assert (await post(client, gw, stale)).status_code == 200
    assert (await get_config(client, gw, 0))["revoked_devices"] == ["d1"]


async def test_device_types_defined_in_the_cloud_go_to_every_gateway(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    tokens = await admin(client, store)
    thermo = {"metrics": {"temperature": {"type": "number", "unit": "°C", "min": -40, "max": 85}}}
    r = await client.put("/api/device_types/thermo", json=thermo, headers=tokens)
    assert r.status_code == 200 and r.json() == {"name": "thermo", **thermo}
    bad = {"metrics": {"temperature": {"type": "colour"}}}
    r = await client.put("/api/device_types/broken", json=bad, headers=tokens)
    assert_problem(r, 400)
    assert "temperature" in r.json()["detail"]
    await add_user(store, "viewer@default.example.com", Role.VIEWER, "default")
    viewer = bearer(await login(client, "viewer@default.example.com"))
    assert (await client.put("/api/device_types/x", json={}, headers=viewer)).status_code == 403
    listed = (await client.get("/api/device_types", headers=viewer)).json()
    assert listed == [{"name": "thermo", **thermo}]
    assert (await get_config(client, gw, 0))["device_types"] == listed
    assert (await client.delete("/api/device_types/thermo", headers=tokens)).status_code == 204
    assert (await client.delete("/api/device_types/thermo", headers=tokens)).status_code == 404
    assert (await get_config(client, gw, 0))["device_types"] == []


async def test_the_gateway_backlog_its_newest_batch_reported_is_listed(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock
) -> None:
    gw = await enroll(client, store, clock, "site-a", "default")
    tokens = await admin(client, store)
    (listed,) = (await client.get("/api/gateways", headers=tokens)).json()
    assert listed["backlog_readings"] is None  # nothing reported yet
    b = dataclasses.replace(batch(gw.gateway_id, 1), backlog=1234)
    assert (await post(client, gw, b)).status_code == 200
    (listed,) = (await client.get("/api/gateways", headers=tokens)).json()
    assert listed["backlog_readings"] == 1234


async def test_a_pipelined_batch_is_applied_only_after_the_one_it_follows(
    client: httpx.AsyncClient, store: SqlCloudStore, clock: ManualClock, engine: str
) -> None:
    gw = await enroll(client, store, clock, "site-p", "default")
    first = batch(gw.gateway_id, 1, n=5)
    second = dataclasses.replace(batch(gw.gateway_id, 6, n=5), follows=first.batch_id)
    # the second arrives first (another connection won the race): it waits for the first
    early = asyncio.create_task(post(client, gw, second))
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not early.done() and await count(store, "readings") == 0
    assert (await post(client, gw, first)).status_code == 200
    r = await early
    assert r.status_code == 200, r.text
    # in insertion order: DuckDB's row ids; PostgreSQL's inserting transaction ids (the second
    # began only once the first was stored)
    by = "rowid" if engine == "duckdb" else "CAST(CAST(xmin AS TEXT) AS BIGINT)"
    order = await store.db.run(
        lambda c: c.execute(f"SELECT batch_id FROM sync_batches ORDER BY {by}").fetchall()
    )
    assert [o[0] for o in order] == [first.batch_id, second.batch_id]
    # following a stored batch costs no wait (e.g. a pipelined batch resent later)
    assert (await post(client, gw, second)).content == r.content


async def test_a_batch_following_one_never_stored_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    store: SqlCloudStore,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cloud.api.sync, "FOLLOWS_WAIT_S", 0.05)
    gw = await enroll(client, store, clock, "site-q", "default")
    orphan = dataclasses.replace(batch(gw.gateway_id, 6, n=5), follows="never-sent")
    r = await post(client, gw, orphan)
    assert_problem(r, 409)
    assert "never-sent" in r.json()["detail"]
    assert await count(store, "readings") == 0 and await count(store, "sync_batches") == 0
    # on its own (as the gateway resends it after a 409) it is stored
    alone = dataclasses.replace(orphan, follows=None)
    assert (await post(client, gw, alone)).status_code == 200
    assert await count(store, "readings") == 5
