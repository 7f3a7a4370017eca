"""Notification delivery end to end against real local servers (aiohttp receiver, aiosmtpd),
with the durable outbox on each engine and an injected clock (no real waiting for backoff)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from cloud.app.services import open_store
from cloud.app.settings import CloudSettings
from cloud.notify.channels import Channel, ChannelType, parse_channel
from cloud.notify.format import NotificationEvent
from cloud.notify.outbox import OutboxStore, RetryPolicy
from cloud.notify.senders import EmailSender, Sender, SmtpSettings, WebhookSender
from cloud.notify.store import NotifyStore
from cloud.notify.worker import NotificationWorker
from cloud.storage.store import SqlCloudStore
from common.clock import ManualClock
from tests.support.cloud import both_engines
from tests.support.cloud_monitoring import webhook_endpoint
from tests.support.ports import free_port

pytestmark = both_engines
LEASE_S = 300.0  # the workers' lease on what they claim

ALERT: dict[str, Any] = {
    "id": "a-1",
    "rule_id": "r-1",
    "state": "active",
    "severity": "critical",
    "metric": "accuracy",
    "value": 0.7,
    "source": "model:churn-v3",
    "started_at": 1_764_300_000_000,
    "resolved_at": None,
}
POLICY = RetryPolicy(max_attempts=5, base_s=2, cap_s=60)


@dataclass
class Receiver:
    """A webhook endpoint that answers with scripted statuses (then 200) and records requests."""

    script: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    got_delivery: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else 200
        self.requests.append({"headers": dict(request.headers), "body": body, "status": status})
        if status == 200:
            self.got_delivery.set()
        headers = {"Retry-After": "30"} if status == 429 else {}
        return web.Response(status=status, text="nope" if status >= 300 else "ok", headers=headers)

    @property
    def delivered(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == 200]

    @property
    def keys(self) -> set[str]:
        return {r["headers"]["Idempotency-Key"] for r in self.requests}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    async with webhook_endpoint(rec.handle) as rec.url:
        yield rec


class Cloud:
    """The pieces the cloud app wires together, reopenable on the same database."""

    def __init__(
        self,
        settings: CloudSettings,
        channels: dict[str, Channel],
        clock: ManualClock,
        smtp: SmtpSettings | None = None,
    ) -> None:
        self.settings, self.channels, self.clock, self.smtp = settings, channels, clock, smtp
        self.lookups: list[tuple[str, str]] = []
        self.sql: SqlCloudStore | None = None
        self.open()

    def open(self) -> None:
        self.sql = open_store(self.settings)
        self.store: OutboxStore = NotifyStore(self.sql.db).outbox
        self.webhook = WebhookSender(self.clock, timeout_s=5)
        senders: dict[ChannelType, Sender] = {ChannelType.WEBHOOK: self.webhook}
        if self.smtp:
            senders[ChannelType.EMAIL] = EmailSender(self.smtp, self.clock)
        self.worker = NotificationWorker(
            self.store,
            senders,
            self.get_channel,
            self.clock,
            policy=POLICY,
            rand=lambda: 0.5,
            poll_interval_s=0.05,
            lease_s=LEASE_S,
        )

    def get_channel(self, org_id: str, channel_id: str) -> Channel | None:
        self.lookups.append((org_id, channel_id))
        return self.channels.get(channel_id)

    async def restart(self) -> None:
        await self.close()
        self.open()

    async def close(self) -> None:
        await self.webhook.aclose()
        assert self.sql is not None
        self.sql.close()

    def enqueue(self, channel_id: str = "hook") -> str:
        return self.store.enqueue(
            org_id="org-1",
            alert_id=ALERT["id"],
            channel_id=channel_id,
            event=NotificationEvent.RAISED,
            payload=ALERT,
            now_ms=self.clock.now_ms(),
        )[0]

    def status(self) -> list[tuple[str, str, int]]:
        return [
            (s["channel_id"], s["status"], s["attempts"])
            for s in self.store.status_for_alert(ALERT["id"])
        ]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def cloud(
    settings: CloudSettings, receiver: Receiver, clock: ManualClock
) -> AsyncIterator[Cloud]:
    secret = "s3cret-s3cret-s3cret"
    channels = {
        "hook": parse_channel(
            {"name": "hook", "type": "webhook", "url": receiver.url, "secret": secret}, id="hook"
        )
    }
    c = Cloud(settings, channels, clock)
    yield c
    await c.close()


async def test_fails_twice_then_sent_on_third_attempt(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    receiver.script = [500, 500]
    nid = cloud.enqueue()
    assert cloud.status() == [("hook", "pending", 0)]

    assert await cloud.worker.run_once() == 1
    assert cloud.status() == [("hook", "retrying", 1)]
    assert await cloud.worker.run_once() == 0  # backoff: not due yet (0.5 * 2 s)
    clock.advance(1.0)
    assert await cloud.worker.run_once() == 1
    assert cloud.status() == [("hook", "retrying", 2)]
    clock.advance(1.9)  # 0.5 * 4 s = 2 s: still waiting
    assert await cloud.worker.run_once() == 0
    clock.advance(0.1)
    assert await cloud.worker.run_once() == 1
    assert cloud.status() == [("hook", "sent", 3)]
    sent_at = clock.now_ms()

    clock.advance(3600)
    assert await cloud.worker.run_once() == 0  # sent is final
    assert [r["status"] for r in receiver.requests] == [500, 500, 200]
    assert receiver.keys == {nid}
    assert [r["headers"]["X-IoTSphere-Delivery-Attempt"] for r in receiver.requests] == [
        "1",
        "2",
        "3",
    ]
    last = receiver.requests[-1]
    payload = json.loads(last["body"])
    assert payload["event"] == "alert.raised" and payload["id"] == nid
    assert payload["alert"]["source"] == "model:churn-v3"
    assert payload["sent_at"] == sent_at
    expected = hmac.new(b"s3cret-s3cret-s3cret", last["body"], hashlib.sha256).hexdigest()
    assert last["headers"]["X-IoTSphere-Signature"] == f"sha256={expected}"
    assert cloud.lookups[0] == ("org-1", "hook")
    stats = cloud.worker.stats
    assert (stats.attempts, stats.retried, stats.sent, stats.failed) == (3, 2, 1, 0)
    assert "iotsphere_notifications_sent_total 1" in stats.to_prometheus()


async def test_restart_between_attempts_delivers_exactly_once(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    receiver.script = [500, 500]
    nid = cloud.enqueue()
    await cloud.worker.run_once()
    assert cloud.status() == [("hook", "retrying", 1)]

    await cloud.restart()  # new OutboxStore, new worker, same database
    assert cloud.status() == [("hook", "retrying", 1)]
    clock.advance(1)
    await cloud.worker.run_once()
    await cloud.restart()
    clock.advance(2)
    await cloud.worker.run_once()
    assert cloud.status() == [("hook", "sent", 3)]
    await cloud.restart()
    clock.advance(3600)
    assert await cloud.worker.run_once() == 0
    assert len(receiver.delivered) == 1
    assert receiver.keys == {nid}


async def test_crash_mid_send_is_resent_after_restart(cloud: Cloud, receiver: Receiver) -> None:
    nid = cloud.enqueue()
    claimed = cloud.store.claim_due(cloud.clock.now_ms(), 10)  # the worker claimed it...
    assert [n.id for n in claimed] == [nid]
    await cloud.restart()  # ...and the process died before sending
    # (PostgreSQL, where other workers may be sending: only once its lease is over)
    cloud.clock.advance(LEASE_S)
    assert await cloud.worker.run_once() == 1
    assert cloud.status() == [("hook", "sent", 2)]
    assert len(receiver.delivered) == 1


async def test_crash_after_delivery_is_at_least_once_with_one_key(
    cloud: Cloud, receiver: Receiver
) -> None:
    """The documented caveat: delivered, then killed before mark_sent -> sent again after the
    restart, with the same Idempotency-Key, so the receiver can drop the duplicate."""
    cloud.enqueue()
    [n] = cloud.store.claim_due(cloud.clock.now_ms(), 10)
    await cloud.webhook.send(cloud.channels["hook"], n)  # delivered, mark_sent never ran
    await cloud.restart()
    cloud.clock.advance(LEASE_S)
    await cloud.worker.run_once()
    assert cloud.status() == [("hook", "sent", 2)]
    assert len(receiver.delivered) == 2
    assert len(receiver.keys) == 1


async def test_permanent_4xx_fails_without_retry(
    cloud: Cloud, receiver: Receiver, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [404]
    cloud.enqueue()
    await cloud.worker.run_once()
    assert cloud.status() == [("hook", "failed", 1)]
    clock.advance(3600)
    assert await cloud.worker.run_once() == 0
    assert len(receiver.requests) == 1
    [entry] = cloud.store.status_for_alert(ALERT["id"])
    assert entry["last_error"].startswith("HTTP 404")
    assert "failed for good (permanent error" in caplog.text


async def test_max_attempts_then_failed(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    receiver.script = [503] * 10
    cloud.enqueue()
    for attempt in range(1, POLICY.max_attempts + 1):
        assert await cloud.worker.run_once() == 1
        clock.advance(POLICY.cap_s)
        expected = "failed" if attempt == POLICY.max_attempts else "retrying"
        assert cloud.status() == [("hook", expected, attempt)]
    assert await cloud.worker.run_once() == 0
    assert len(receiver.requests) == POLICY.max_attempts
    assert cloud.worker.stats.failed == 1


async def test_429_retry_after_is_respected(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    receiver.script = [429]
    cloud.enqueue()
    await cloud.worker.run_once()
    clock.advance(29)
    assert await cloud.worker.run_once() == 0
    clock.advance(1)
    assert await cloud.worker.run_once() == 1
    assert cloud.status() == [("hook", "sent", 2)]


async def test_unreachable_webhook_retries_and_deleted_channel_fails(
    cloud: Cloud, receiver: Receiver
) -> None:
    cloud.channels["dead"] = parse_channel(
        {"name": "dead", "type": "webhook", "url": f"http://127.0.0.1:{free_port()}/x"}, id="dead"
    )
    cloud.enqueue("dead")
    cloud.enqueue("gone")
    assert await cloud.worker.run_once() == 2
    status = {s["channel_id"]: s for s in cloud.store.status_for_alert(ALERT["id"])}
    assert status["dead"]["status"] == "retrying"
    assert "ConnectError" in status["dead"]["last_error"]
    assert (status["gone"]["status"], status["gone"]["last_error"]) == (
        "failed",
        "channel no longer exists",
    )


async def test_run_loop_delivers_on_wake_and_stops(cloud: Cloud, receiver: Receiver) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(cloud.worker.run(stop))
    cloud.enqueue()
    cloud.worker.wake()
    await asyncio.wait_for(receiver.got_delivery.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert cloud.status() == [("hook", "sent", 1)]


async def test_a_database_down_at_start_does_not_end_delivery(
    cloud: Cloud, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery of interrupted sends ran before the loop's error handling: a database that
    failed at start ended the worker for good (nothing restarts it)."""
    real = cloud.store.recover_interrupted
    failures = [ConnectionError("database down"), ConnectionError("database down")]

    def flaky(now_ms: int, max_attempts: int) -> int:
        if failures:
            raise failures.pop()
        return real(now_ms, max_attempts)

    monkeypatch.setattr(cloud.store, "recover_interrupted", flaky)
    stop = asyncio.Event()
    task = asyncio.create_task(cloud.worker.run(stop))
    cloud.enqueue()
    await asyncio.wait_for(receiver.got_delivery.wait(), 5)  # after two failed iterations
    stop.set()
    await asyncio.wait_for(task, 2)
    assert cloud.status() == [("hook", "sent", 1)]
    assert cloud.worker.stats.loop_errors == 2


# --- email ------------------------------------------------------------------------------------


class MailSink:
    def __init__(self, refuse: bool = False) -> None:
        self.messages: list[bytes] = []
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted"


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp_servers(smtp_port: int) -> Iterator[list[Controller]]:
    started: list[Controller] = []
    yield started
    for controller in started:
        controller.stop()


@pytest.fixture
async def mail_cloud(
    settings: CloudSettings, clock: ManualClock, smtp_port: int
) -> AsyncIterator[Cloud]:
    channels = {
        "mail": parse_channel({"name": "ops", "type": "email", "to": "ops@example.com"}, id="mail")
    }
    smtp = SmtpSettings(
        host="127.0.0.1",
        port=smtp_port,
        from_addr="alerts@iotsphere.example",
        starttls=False,
        timeout_s=5,
    )
    c = Cloud(settings, channels, clock, smtp)
    yield c
    await c.close()


async def test_smtp_down_then_up(
    mail_cloud: Cloud,
    clock: ManualClock,
    smtp_port: int,
    smtp_servers: list[Controller],
    caplog: pytest.LogCaptureFixture,
) -> None:
    nid = mail_cloud.enqueue("mail")
    await mail_cloud.worker.run_once()  # nothing listens on the port yet
    assert mail_cloud.status() == [("mail", "retrying", 1)]
    assert "SMTP unavailable" in caplog.text

    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    await asyncio.to_thread(controller.start)
    smtp_servers.append(controller)
    clock.advance(1)
    assert await mail_cloud.worker.run_once() == 1
    assert mail_cloud.status() == [("mail", "sent", 2)]

    [raw] = sink.messages
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == (
        "[IoTSphere] CRITICAL: accuracy = 0.7 on model:churn-v3 - alert raised"
    )
    assert msg["To"] == "ops@example.com" and msg["From"] == "alerts@iotsphere.example"
    assert msg["X-IoTSphere-Notification-Id"] == nid and nid in msg["Message-ID"]
    assert "Value:     0.7" in msg.get_content()


async def test_smtp_rejected_recipient_is_permanent(
    mail_cloud: Cloud, smtp_port: int, smtp_servers: list[Controller]
) -> None:
    controller = Controller(MailSink(refuse=True), hostname="127.0.0.1", port=smtp_port)
    await asyncio.to_thread(controller.start)
    smtp_servers.append(controller)
    mail_cloud.enqueue("mail")
    await mail_cloud.worker.run_once()
    assert mail_cloud.status() == [("mail", "failed", 1)]
    [entry] = mail_cloud.store.status_for_alert(ALERT["id"])
    assert "550" in entry["last_error"]
