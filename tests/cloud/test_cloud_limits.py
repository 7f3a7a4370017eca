"""Failed-attempt limits and the signing key shared through the database: what every worker
(on any host) must agree on. Both engines; "two workers" are two stores on one database."""

from __future__ import annotations

import pytest

from cloud.app.services import open_store
from cloud.app.settings import CloudSettings, LoginLimits
from cloud.security.store import JWT_KEY, FailureLimiter, SecurityStore
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.support.cloud import T0, both_engines

pytestmark = both_engines
LIMITS = LoginLimits(max_failures=3, window_s=60)


async def test_sliding_window_and_reset(store: SqlCloudStore) -> None:
    clock = ManualClock(T0)
    limiter = FailureLimiter(SecurityStore(store.db), "login", LIMITS, clock)
    for _ in range(3):
        assert await limiter.retry_after("user:a", "addr:x") is None
        await limiter.record_failure("user:a", "addr:x")
        clock.advance(10)
    assert await limiter.retry_after("user:a") == pytest.approx(30)  # first leaves at t=60
    assert await limiter.retry_after("user:b", "addr:x") == pytest.approx(30)
    assert await limiter.retry_after("user:b", "addr:y") is None
    clock.advance(30)
    assert await limiter.retry_after("user:a") is None
    await limiter.record_failure("user:a")
    assert await limiter.retry_after("user:a") == pytest.approx(10)
    await limiter.reset("user:a")
    assert await limiter.retry_after("user:a") is None


async def test_scopes_are_separate_and_old_rows_are_pruned(store: SqlCloudStore) -> None:
    clock = ManualClock(T0)
    security = SecurityStore(store.db)
    login = FailureLimiter(security, "login", LIMITS, clock)
    enroll = FailureLimiter(security, "enroll", LIMITS, clock)
    for i in range(3):
        await login.record_failure("addr:x", f"user:{i}")
    assert await login.retry_after("addr:x") is not None
    assert await enroll.retry_after("addr:x") is None
    clock.advance(120)
    await login.record_failure("user:late")  # also prunes what left every window
    rows = await store.db.run(lambda c: c.execute("SELECT count(*) FROM auth_failures").fetchall())
    assert rows[0][0] == 1


async def test_failures_spread_over_two_workers_lock_out(settings: CloudSettings) -> None:
    first, second = open_store(settings), open_store(settings) if settings.database_url else None
    try:
        clock = ManualClock(T0)
        a = FailureLimiter(SecurityStore(first.db), "login", LIMITS, clock)
        b = FailureLimiter(SecurityStore((second or first).db), "login", LIMITS, clock)
        await a.record_failure("user:x")
        await b.record_failure("user:x")
        assert await a.retry_after("user:x") is None
        await b.record_failure("user:x")
        assert await a.retry_after("user:x") is not None  # the third landed on the other
    finally:
        first.close()
        if second is not None:
            second.close()


@pytest.mark.engines("postgresql")
async def test_workers_share_one_signing_key(settings: CloudSettings) -> None:
    stores = [open_store(settings) for _ in range(2)]
    try:
        keys = {SecurityStore(s.db).shared_secret(JWT_KEY, T0) for s in stores}
        assert len(keys) == 1 and len(keys.pop()) == 32
    finally:
        for s in stores:
            s.close()
