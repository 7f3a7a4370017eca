"""Fixtures and helpers shared by the cloud tests (tests/cloud/; conftest.py there imports the
fixtures)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.app.asgi import create_app
from cloud.app.server import uvicorn_server
from cloud.app.services import Services, build_services, open_store
from cloud.app.settings import CloudSettings
from cloud.security.auth import hash_password
from cloud.storage.interface import Role, User
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from common.model import Reading
from tests.support.ports import free_port

PASSWORD = "correct horse battery"
T0 = 1_764_300_000_000  # ManualClock's default start, a multiple of 5 minutes


class RecordingSleep:
    """Injected backoff sleep: records the delays, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


# The engines the cloud runs on. A test runs on the engines its `engines` marker names (tests/
# cloud/conftest.py parametrises `engine` from it), on DuckDB alone without one.
ENGINES = ("duckdb", "postgresql")
both_engines = pytest.mark.engines(*ENGINES)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    name: str = getattr(request, "param", "duckdb")
    return name


@pytest.fixture
def settings(tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> CloudSettings:
    """The cloud's settings on the engine under test: PostgreSQL gets a fresh database on the
    session's private cluster (tests/support/postgres.py)."""
    url = request.getfixturevalue("pg_url") if engine == "postgresql" else None
    return CloudSettings(data_dir=tmp_path / "cloud", database_url=url)


@pytest.fixture
def store(settings: CloudSettings) -> Iterator[SqlCloudStore]:
    s = open_store(settings)
    yield s
    s.close()


class Outage:
    """A real outage of the store under test: DuckDB's connection closed, or the PostgreSQL
    server stopped (the session's private cluster; started again by `end`, or after the test)."""

    def __init__(self, store: SqlCloudStore, request: pytest.FixtureRequest) -> None:
        self._store = store
        self._request = request

    def begin(self) -> None:
        if self._store.db.dialect == "postgresql":
            self._request.getfixturevalue("pg_cluster").stop()
        else:
            self._store.make_unavailable()

    def end(self) -> None:
        if self._store.db.dialect == "postgresql":
            self._request.getfixturevalue("pg_cluster").start()
        else:
            self._store.make_available()


@pytest.fixture
def outage(store: SqlCloudStore, request: pytest.FixtureRequest) -> Outage:
    return Outage(store, request)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def services(
    settings: CloudSettings, store: SqlCloudStore, clock: ManualClock, sleeps: RecordingSleep
) -> Services:
    return build_services(settings, store, clock, sleep=sleeps)


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://cloud.test") as c:
        yield c


async def add_user(
    store: SqlCloudStore, email: str, role: Role = Role.ADMIN, org: str = "default"
) -> User:
    o = await store.ensure_org(org, T0)
    return await store.create_user(email, hash_password(PASSWORD), role, o.id, T0)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['access_token']}"}


def reading(device: str, metric: str, ts: int, value: float | bool | str) -> Reading:
    return Reading(device_id=device, metric=metric, ts=ts, value=value, received_at=ts + 5)


def assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    doc: dict[str, object] = r.json()
    assert doc["status"] == status
    assert isinstance(doc["type"], str) and isinstance(doc["title"], str)
    return doc


@asynccontextmanager
async def served(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a real uvicorn server on a free loopback port, and a client of it."""
    port = free_port()
    server = uvicorn_server(services, "127.0.0.1", port)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
