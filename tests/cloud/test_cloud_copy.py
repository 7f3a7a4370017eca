"""`cloud copy`: an embedded cloud with users, an enrolled gateway, readings, rules, alerts,
channels, metrics and API keys moves into PostgreSQL; everything arrives, users stay signed in,
and the gateway's next batch is accepted without re-enrollment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from cloud.app.asgi import create_app
from cloud.app.copy_store import TargetNotEmpty, copy_cloud
from cloud.app.services import build_services, open_store
from cloud.app.settings import CloudSettings
from cloud.storage.interface import Role
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.cloud.test_cloud_sync import batch, enroll, post
from tests.support.cloud import T0, add_user, bearer, login

RULE = {"source": "model:churn", "metric": "accuracy", "operator": "<", "threshold": 0.8}


@asynccontextmanager
async def cloud_at(settings: CloudSettings, clock: ManualClock) -> AsyncIterator[httpx.AsyncClient]:
    store = open_store(settings)
    try:
        app = create_app(build_services(settings, store, clock))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
            c.store = store  # type: ignore[attr-defined]
            yield c
    finally:
        store.close()


def table_counts(store: SqlCloudStore, tables: list[str]) -> dict[str, int]:
    return {
        t: store.db.run_sync(lambda c, t=t: c.execute(f"SELECT count(*) FROM {t}").fetchall())[0][0]
        for t in tables
    }


async def test_an_embedded_cloud_moves_into_postgresql(tmp_path: Path, pg_url: str) -> None:
    clock = ManualClock(T0)
    duck = CloudSettings(data_dir=tmp_path / "cloud")
    async with cloud_at(duck, clock) as http:
        store: SqlCloudStore = http.store  # type: ignore[attr-defined]
        await add_user(store, "admin@example.com", Role.ADMIN)
        session = bearer(await login(http, "admin@example.com"))
        gw = await enroll(http, store, clock, "site-1", "default")
        assert (await post(http, gw, batch(gw.gateway_id, 1, n=5))).status_code == 200
        r = await http.post(
            "/api/notification_channels",
            headers=session,
            json={"name": "ops", "type": "webhook", "url": "http://127.0.0.1:9/hook"},
        )
        assert r.status_code in (200, 201), r.text
        r = await http.post("/api/monitoring/alert_rules", headers=session, json=RULE)
        assert r.status_code == 200, r.text
        assert (await http.post("/api/api_keys", headers=session, json={"name": "job"})).is_success
        metric = {"source": "model:churn", "metric": "accuracy", "value": 0.5, "ts": T0 - 10}
        r = await http.post("/api/monitoring/metrics", headers=session, json=[metric])
        assert r.status_code == 200, r.text
        await http.put("/api/dashboard/config", headers=session, json={"widgets": []})
        tables = [
            r[0]
            for r in store.db.run_sync(
                lambda c: c.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = 'main' AND table_name <> 'schema_versions'"
                ).fetchall()
            )
        ]
        before = table_counts(store, tables)
    assert before["readings"] == 5 and before["users"] == 1 and before["gateway_keys"] == 1

    copied = {c.table: c.rows for c in copy_cloud(duck, pg_url)}
    assert {t: copied.get(t) for t in tables} == before  # every table, every row

    pg = CloudSettings(data_dir=tmp_path / "cloud", database_url=pg_url)
    async with cloud_at(pg, clock) as http:
        # the session issued by the embedded cloud is still good: the signing key moved too
        assert (await http.get("/api/devices", headers=session)).status_code == 200
        assert (await login(http, "admin@example.com"))["access_token"]
        r = await post(http, gw, batch(gw.gateway_id, 6, ("d2",), n=5))  # no re-enrollment
        assert r.status_code == 200, r.text
        store = http.store  # type: ignore[attr-defined]
        assert table_counts(store, ["readings"]) == {"readings": 10}

    with pytest.raises(TargetNotEmpty, match="already holds a cloud"):
        copy_cloud(duck, pg_url)
