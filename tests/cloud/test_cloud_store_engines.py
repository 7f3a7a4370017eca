"""The cloud store's core operations on both engines (the same test, each engine its own run),
and what only PostgreSQL has: a server that can be stopped, several connections at once."""

from __future__ import annotations

import asyncio

import pytest

from cloud.storage.errors import Conflict, SchemaTooNew, StoreError, StoreUnavailable
from cloud.storage.interface import NewAlert, RefreshToken, RefreshUse, Role, UserChange
from cloud.storage.pg import PgDatabase, redact, to_pg
from cloud.storage.sql import Migration
from cloud.storage.store import SqlCloudStore
from common.alerts import AlertState
from tests.support.cloud import T0, both_engines
from tests.support.postgres import PgCluster
from tests.support.waiting import until

pytestmark = both_engines


async def test_accounts(store: SqlCloudStore) -> None:
    org = await store.ensure_org("acme", T0)
    assert await store.ensure_org("acme", T0 + 1) == org  # found, not made twice
    admin = await store.create_user("Ann@Example.com", "h1", Role.ADMIN, org.id, T0)
    viewer = await store.create_user("vic@example.com", "h2", Role.VIEWER, org.id, T0)
    with pytest.raises(Conflict):
        await store.create_user("ann@example.com", "h3", Role.VIEWER, org.id, T0)
    assert await store.user_by_email("ANN@example.com") == admin
    assert [u.email for u in await store.list_users(org.id)] == [
        "ann@example.com",
        "vic@example.com",
    ]
    change, _ = await store.update_user(org.id, admin.id, T0, role=Role.VIEWER)
    assert change is UserChange.LAST_ADMIN  # the org would have no admin left
    change, user = await store.update_user(org.id, viewer.id, T0, password_hash="h9")
    assert change is UserChange.OK and user is not None
    assert user.password_hash == "h9" and user.token_version == 1
    assert (await store.delete_user(org.id, admin.id))[0] is UserChange.LAST_ADMIN
    assert (await store.delete_user("other-org", viewer.id))[0] is UserChange.NOT_FOUND


async def test_refresh_token_reuse_revokes_the_family(store: SqlCloudStore) -> None:
    org = await store.ensure_org("acme", T0)
    user = await store.create_user("a@example.com", "h", Role.ADMIN, org.id, T0)
    await store.save_refresh_token(RefreshToken("t1", "fam", user.id, T0 + 1000))
    await store.save_refresh_token(RefreshToken("t2", "fam", user.id, T0 + 1000))
    assert (await store.consume_refresh_token("t1", T0))[0] is RefreshUse.OK
    assert (await store.consume_refresh_token("t1", T0))[0] is RefreshUse.REUSED
    assert (await store.consume_refresh_token("t2", T0))[0] is RefreshUse.REVOKED
    assert (await store.consume_refresh_token("nope", T0))[0] is RefreshUse.UNKNOWN


async def test_gateways_dashboard_and_alerts(store: SqlCloudStore) -> None:
    org = await store.ensure_org("acme", T0)
    gw = await store.create_gateway(org.id, "site-1", "digest", T0 + 60_000, T0)
    with pytest.raises(Conflict):
        await store.create_gateway(org.id, "site-1", "digest2", T0 + 60_000, T0)
    assert [g.gateway_id for g in await store.list_gateways(org.id)] == [gw.gateway_id]
    assert await store.list_gateways("other-org") == []
    await store.put_dashboard_config(org.id, {"widgets": [1, "%s ?"]}, T0)
    await store.put_dashboard_config(org.id, {"widgets": [2, "%s ?"]}, T0 + 1)
    assert await store.get_dashboard_config(org.id) == {"widgets": [2, "%s ?"]}
    alert = await store.create_alert(org.id, NewAlert("r1", "critical", "temp", 41.5, T0, "d1"))
    assert [a.id for a in await store.list_alerts(org.id)] == [alert.id]
    assert await store.get_alert("other-org", alert.id) is None
    acked = await store.set_alert_state(org.id, alert.id, AlertState.ACKNOWLEDGED, T0 + 5)
    assert acked is not None and acked.acknowledged_at == T0 + 5 and acked.value == 41.5


async def test_a_state_change_is_written_only_from_the_state_it_was_decided_on(
    store: SqlCloudStore,
) -> None:
    """A user's ack decided on "active" loses to a resolve that landed meanwhile: the alert
    stays resolved, and its history has no acknowledgement that never happened."""
    org = await store.ensure_org("acme", T0)
    alert = await store.create_alert(org.id, NewAlert("r1", "critical", "temp", 41.5, T0, "d1"))
    resolved = await store.set_alert_state(org.id, alert.id, AlertState.RESOLVED, T0 + 1, "gw")
    assert resolved is not None and resolved.state is AlertState.RESOLVED
    late = await store.set_alert_state(
        org.id, alert.id, AlertState.ACKNOWLEDGED, T0 + 2, "ops", expected=AlertState.ACTIVE
    )
    assert late is None
    now = await store.get_alert(org.id, alert.id)
    assert now is not None and now.state is AlertState.RESOLVED and now.acknowledged_at is None
    assert [e.kind for e in await store.alert_history(org.id, alert.id)] == ["raised", "resolved"]
    assert await store.set_alert_state("other-org", alert.id, AlertState.RESOLVED, T0 + 3) is None


# -- PostgreSQL only ---------------------------------------------------------------------------


@pytest.mark.engines("postgresql")
async def test_a_stopped_server_is_unavailable_and_its_return_is_seen(
    store: SqlCloudStore, pg_cluster: PgCluster
) -> None:
    org = await store.ensure_org("acme", T0)
    pg_cluster.stop()
    try:
        # the server's own reason, from a direct connection: not the pool's whole wait for a
        # free connection (5 s), which the API's 3 attempts would triple
        with pytest.raises(StoreUnavailable, match="refused"):
            await store.list_gateways(org.id)
    finally:
        pg_cluster.start()

    async def answers() -> bool:
        try:
            return await store.list_gateways(org.id) == []
        except StoreUnavailable:
            return False

    # the pool's dead connections are checked and replaced: queries work again by themselves
    assert await until(answers, timeout_s=15)


@pytest.mark.engines("postgresql")
async def test_concurrent_refresh_of_one_token_succeeds_once(store: SqlCloudStore) -> None:
    """Two workers (here: pool connections) racing to rotate one token: one wins."""
    org = await store.ensure_org("acme", T0)
    user = await store.create_user("a@example.com", "h", Role.ADMIN, org.id, T0)
    for i in range(20):
        await store.save_refresh_token(RefreshToken(f"t{i}", f"fam{i}", user.id, T0 + 1000))
        uses = await asyncio.gather(*(store.consume_refresh_token(f"t{i}", T0) for _ in range(4)))
        assert sorted(u for u, _ in uses).count(RefreshUse.OK) == 1, uses


@pytest.mark.engines("postgresql")
def test_migrations_are_applied_once_and_a_newer_schema_is_refused(pg_url: str) -> None:
    db = PgDatabase(pg_url)
    try:
        v1 = {"postgresql": [Migration(1, ("CREATE TABLE t (a INT)",))]}
        v2 = {"postgresql": [*v1["postgresql"], Migration(2, ("ALTER TABLE t ADD b INT",))]}
        assert db.migrate("x", v2) == 2
        assert db.migrate("x", v2) == 2  # nothing applied twice
        with pytest.raises(SchemaTooNew, match="version 2, newer than this release knows"):
            db.migrate("x", v1)
        with pytest.raises(StoreError, match="no PostgreSQL schema"):
            db.migrate("y", {"duckdb": []})
    finally:
        db.close()


@pytest.mark.engines("postgresql")
def test_bad_urls_and_a_down_server_give_one_line_errors(pg_cluster: PgCluster) -> None:
    nodb = pg_cluster.url("no_such_db")
    for url, expect in [
        (nodb, 'database "no_such_db" does not exist'),
        (f"postgresql://nobody:s3cret@127.0.0.1:{pg_cluster.port}/postgres", "nobody"),
        ("postgresql://127.0.0.1:1/postgres", "refused"),
    ]:
        with pytest.raises(StoreUnavailable) as info:
            PgDatabase(url, connect_timeout_s=2)
        message = str(info.value)
        assert expect in message and "\n" not in message and "s3cret" not in message


def test_placeholders_and_redaction() -> None:
    assert to_pg("SELECT '?', \"a?\", x % 2 FROM t WHERE a = ? AND b = ?") == (
        "SELECT '?', \"a?\", x %% 2 FROM t WHERE a = %s AND b = %s"
    )
    assert redact("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact("postgresql://u@h/d") == "postgresql://u@h/d"


@pytest.mark.engines("postgresql")
async def test_two_admins_demoted_at_once_leave_one(store: SqlCloudStore) -> None:
    """Each demotion alone is allowed; at once, the org must not end without an admin."""
    for round_ in range(10):
        org = await store.ensure_org(f"org-{round_}", T0)
        a, b = [
            await store.create_user(f"{n}{round_}@example.com", "h", Role.ADMIN, org.id, T0)
            for n in "ab"
        ]
        results = await asyncio.gather(
            *(store.update_user(org.id, u.id, T0, role=Role.VIEWER) for u in (a, b))
        )
        assert sorted(r for r, _ in results) == [UserChange.LAST_ADMIN, UserChange.OK]
        admins = [u for u in await store.list_users(org.id) if u.role is Role.ADMIN]
        assert len(admins) == 1


@pytest.mark.engines("postgresql")
async def test_orgs_ensured_at_once_are_one(store: SqlCloudStore) -> None:
    orgs = await asyncio.gather(*(store.ensure_org("acme", T0) for _ in range(6)))
    assert len(set(orgs)) == 1
