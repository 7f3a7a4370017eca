"""A restartable cloud over a real socket (in-process uvicorn with its lifespan: monitoring loop
and notification worker), a scriptable webhook receiver, and polling helpers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx
import pytest
from aiohttp import web

from cloud.app.server import GracefulServer, uvicorn_server
from cloud.app.services import Services, build_services, open_store
from cloud.app.settings import CloudSettings, MonitorSettings, NotifySettings
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.support.cloud import PASSWORD
from tests.support.ports import restartable_port

T = TypeVar("T")

# Retries are judged on the ManualClock; the worker polls the due rows often in real time.
FAST_NOTIFY = NotifySettings(
    max_attempts=5, base_delay_s=1.0, max_delay_s=60.0, poll_interval_s=0.02, webhook_timeout_s=5
)
# The loop runs when metrics arrive (woken); the period only matters for no-data rules.
QUIET_MONITOR = MonitorSettings(interval_s=30.0)


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout_s: float = 5.0
) -> T:
    """Poll `probe` until `done(result)`; fail with the last result after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = await probe()
        if done(result):
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached in {timeout_s}s; last: {result!r}")
        await asyncio.sleep(0.02)


class Cloud:
    """`iotsphere cloud serve` in this process, on one database, stoppable and restartable."""

    def __init__(self, settings: CloudSettings, clock: ManualClock) -> None:
        self.settings = settings
        self.clock = clock
        self.port = restartable_port()  # restart() serves on it again
        self.store: SqlCloudStore | None = None
        self.services: Services | None = None
        self._server: GracefulServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.store = open_store(self.settings)
        self.services = build_services(self.settings, self.store, self.clock)
        self._server = uvicorn_server(self.services, "127.0.0.1", self.port)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                raise AssertionError(f"cloud did not start: {self._task.exception()!r}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await asyncio.wait_for(self._task, 15)
        if self.store is not None:
            self.store.close()
        self._server = self._task = None
        self.store = self.services = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cloud(settings: CloudSettings, clock: ManualClock) -> AsyncIterator[Cloud]:
    """On the engine under test (the `settings` fixture of tests/support/cloud.py)."""
    settings = replace(settings, notify=FAST_NOTIFY, monitor=QUIET_MONITOR)
    c = Cloud(settings, clock)
    await c.start()
    yield c
    await c.stop()


@dataclass
class Receiver:
    """A webhook endpoint answering with scripted statuses (then 200), recording requests."""

    script: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.script.pop(0) if self.script else 200
        self.requests.append({"headers": dict(request.headers), "body": body, "status": status})
        # Retry-After pins the next attempt to >= 30 s on the cloud's (manual) clock, so the
        # test sees `retrying` and decides when the retry becomes due.
        headers = {"Retry-After": "30"} if status >= 500 else {}
        return web.Response(status=status, text="ok" if status < 300 else "down", headers=headers)

    @property
    def delivered(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == 200]


@asynccontextmanager
async def webhook_endpoint(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """`handle` answering POST /hook on a free loopback port; yields the URL."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    async with webhook_endpoint(rec.handle) as rec.url:
        yield rec


async def login_at(http: httpx.AsyncClient, email: str) -> dict[str, str]:
    r = await http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def metric_value(http: httpx.AsyncClient, name: str) -> float:
    """One sample of /metrics (`name` with its labels), 0 when absent."""
    text = (await http.get("/metrics")).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0
