"""A notification worker process SIGKILLed in the middle of a webhook send, on PostgreSQL: the
receiver got the request, the process never recorded it. Another worker (this process) sends it
again once the dead worker's lease is over, with the same Idempotency-Key, and records it sent:
a receiver that drops repeated keys sees it exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloud.app.services import open_store
from cloud.app.settings import CloudSettings
from cloud.notify.channels import ChannelType, parse_channel
from cloud.notify.format import NotificationEvent
from cloud.notify.senders import WebhookSender
from cloud.notify.store import NotifyStore
from cloud.notify.worker import NotificationWorker
from cloud.storage.store import SqlCloudStore
from common.clock import SystemClock
from tests.support.cloud_monitoring import eventually, webhook_endpoint

pytestmark = pytest.mark.engines("postgresql")
RAISED = NotificationEvent.RAISED
ROOT = Path(__file__).resolve().parents[2]  # the doomed worker imports the cloud from here

# The doomed worker: claims with a 1 s lease, starts sending, and waits for the answer.
DOOMED = """
import asyncio, sys
from cloud.notify.channels import ChannelType, parse_channel
from cloud.notify.senders import WebhookSender
from cloud.notify.store import NotifyStore
from cloud.notify.worker import NotificationWorker
from cloud.storage.pg import PgDatabase
from common.clock import SystemClock

url, hook = sys.argv[1], sys.argv[2]
channel = parse_channel({"name": "h", "type": "webhook", "url": hook}, id="hook")

async def main() -> None:
    clock = SystemClock()
    sender = WebhookSender(clock, timeout_s=60)
    worker = NotificationWorker(NotifyStore(PgDatabase(url)).outbox,
        {ChannelType.WEBHOOK: sender}, lambda org, cid: channel, clock, lease_s=1.0)
    await worker.run_once()

asyncio.run(main())
"""


@dataclass
class HangingReceiver:
    """Records requests; holds the first one open until released, answers the others 200."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if len(self.requests) == 1:
            self.first.set()
            await self.release.wait()
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[HangingReceiver]:
    rec = HangingReceiver()
    async with webhook_endpoint(rec.handle) as rec.url:
        yield rec
        rec.release.set()


@pytest.fixture
def sql(settings: CloudSettings) -> Iterator[SqlCloudStore]:
    s = open_store(settings)
    yield s
    s.close()


async def test_a_worker_killed_mid_send_is_resent_once_with_the_same_key(
    settings: CloudSettings, sql: SqlCloudStore, receiver: HangingReceiver
) -> None:
    assert settings.database_url is not None
    clock = SystemClock()
    outbox = NotifyStore(sql.db).outbox
    alert = {"id": "a-1", "state": "active", "severity": "critical", "metric": "acc"}
    [nid] = outbox.enqueue_alert(
        org_id="o", alert=alert, channel_ids=["hook"], event=RAISED, now_ms=clock.now_ms()
    )
    doomed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DOOMED, settings.database_url, receiver.url, cwd=ROOT
    )
    try:
        await asyncio.wait_for(receiver.first.wait(), 30)  # the send is in flight...
    finally:
        os.kill(doomed.pid, signal.SIGKILL)  # ...and its process dies
        await asyncio.wait_for(doomed.wait(), 10)
    row = outbox.get(nid)
    assert row is not None and row["status"] == "sending" and row["claimed_by"] != outbox.claimant

    channel = parse_channel({"name": "h", "type": "webhook", "url": receiver.url}, id="hook")
    sender = WebhookSender(clock, timeout_s=5)
    worker = NotificationWorker(
        outbox, {ChannelType.WEBHOOK: sender}, lambda org, cid: channel, clock, lease_s=1.0
    )
    try:
        assert await worker.run_once() == 0  # its lease is not over yet: not ours to send
        assert len(receiver.requests) == 1
        await eventually(worker.run_once, lambda n: n == 1, timeout_s=10)
    finally:
        await sender.aclose()
    row = outbox.get(nid)
    assert row is not None and (row["status"], row["attempts"]) == ("sent", 2)
    assert [r["Idempotency-Key"] for r in receiver.requests] == [nid, nid]
