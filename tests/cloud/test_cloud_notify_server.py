"""Email notifications from the running cloud through a real SMTP server (aiosmtpd) that is
down when the alert is raised and comes up later: the notification ends `sent`."""

from __future__ import annotations

from dataclasses import replace
from email import message_from_bytes, policy
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from cloud.app.settings import CloudSettings
from cloud.notify.senders import SmtpSettings
from cloud.storage.interface import Role
from common.clock import ManualClock
from tests.support.cloud import T0, add_user, both_engines, reading
from tests.support.cloud_monitoring import FAST_NOTIFY, QUIET_MONITOR, Cloud, eventually, login_at
from tests.support.ports import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@both_engines
async def test_email_channel_with_smtp_down_then_up_ends_sent(settings: CloudSettings) -> None:
    smtp_port = free_port()
    smtp = SmtpSettings(host="127.0.0.1", port=smtp_port, from_addr="cloud@example.com",
                        starttls=False, timeout_s=2)  # fmt: skip
    settings = replace(
        settings,
        notify=replace(FAST_NOTIFY, smtp=smtp),
        monitor=QUIET_MONITOR,
    )
    clock = ManualClock()
    cloud = Cloud(settings, clock)
    await cloud.start()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    try:
        assert cloud.store is not None
        await add_user(cloud.store, "admin@example.com", Role.ADMIN)
        async with httpx.AsyncClient(base_url=cloud.url) as http:
            auth = await login_at(http, "admin@example.com")
            r = await http.post(
                "/api/notification_channels",
                headers=auth,
                json={"name": "ops mail", "type": "email", "to": "ops@example.com"},
            )
            assert r.status_code == 200, r.text
            rule = {"device_id": "fridge-1", "metric": "temp", "operator": ">", "threshold": 8,
                    "channels": [r.json()["id"]]}  # fmt: skip
            r = await http.post("/api/monitoring/alert_rules", headers=auth, json=rule)
            assert r.status_code == 200, r.text
            r = await http.post(
                "/api/monitoring/metrics",
                headers=auth,
                json=[{"source": "model:fridge-twin", "metric": "temp", "value": 9.5, "ts": T0}],
            )
            assert r.status_code == 200
            # The rule watches device fridge-1, not that source: a synced reading raises it.
            org = (await cloud.store.user_by_email("admin@example.com")).org_id  # type: ignore[union-attr]
            await cloud.store.insert_readings(
                org, "gw-1", [reading("fridge-1", "temp", T0, 9.5)], clock.now_ms()
            )
            assert cloud.services is not None
            cloud.services.hooks.wake_monitor()

            async def alerts() -> list[dict[str, Any]]:
                return list((await http.get("/api/alerts", headers=auth)).json())

            def status(a: list[dict[str, Any]]) -> list[str]:
                return [n["status"] for x in a for n in x["notifications"]]

            def failed_and_scheduled(a: list[dict[str, Any]]) -> bool:
                # not an attempt in flight (also shown as retrying): its failure is recorded
                return status(a) == ["retrying"] and (
                    a[0]["notifications"][0]["next_attempt_at"] > clock.now_ms()
                )

            found = await eventually(alerts, failed_and_scheduled)
            assert found[0]["device_id"] == "fridge-1" and found[0]["source"] is None
            assert "SMTP unavailable" in found[0]["notifications"][0]["last_error"]
            assert inbox.messages == []

            controller.start()  # the mail server comes up
            clock.advance(120)
            found = await eventually(alerts, lambda a: status(a) == ["sent"])
            assert found[0]["notifications"][0]["attempts"] >= 2
        [msg] = inbox.messages
        assert msg["To"] == "ops@example.com" and msg["From"] == "cloud@example.com"
        assert "temp" in msg["Subject"] and "fridge-1" in msg["Subject"]
    finally:
        if controller.loop.is_running():
            controller.stop()
        await cloud.stop()
