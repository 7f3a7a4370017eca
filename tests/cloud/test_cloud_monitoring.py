"""Issue 3 acceptance over a real socket: a data scientist's model-metric rule raises one alert,
its webhook notification is retried until delivered, across a restart of the cloud."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from cloud.storage.interface import Role
from common.clock import ManualClock
from tests.support.cloud import T0, add_user, both_engines
from tests.support.cloud_monitoring import (
    Cloud,
    Receiver,
    clock,
    cloud,
    eventually,
    login_at,
    metric_value,
    receiver,
)

__all__ = ["clock", "cloud", "receiver"]  # fixtures
pytestmark = both_engines

OBSERVED = 'iotsphere_monitor_observations_total{kind="source"}'


async def _setup(c: Cloud, http: httpx.AsyncClient, hook_url: str) -> tuple[dict[str, str], str]:
    assert c.store is not None
    await add_user(c.store, "admin@example.com", Role.ADMIN)
    await add_user(c.store, "ds@example.com", Role.OPERATOR)
    admin = await login_at(http, "admin@example.com")
    r = await http.post(
        "/api/notification_channels",
        headers=admin,
        json={"name": "ml-oncall", "type": "webhook", "url": hook_url},
    )
    assert r.status_code == 200, r.text
    channel = r.json()
    assert channel["type"] == "webhook" and channel["url"] == hook_url
    scientist = await login_at(http, "ds@example.com")
    rule = {
        "name": "churn model accuracy",
        "source": "model:churn-v3",
        "metric": "accuracy",
        "operator": "<",
        "threshold": 0.8,
        "severity": "critical",
        "channels": [channel["id"]],
    }
    r = await http.post("/api/monitoring/alert_rules", headers=scientist, json=rule)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {k: body[k] for k in rule} == rule
    assert body["version"] == 1 and body["enabled"] is True and body["for_seconds"] == 0
    return scientist, channel["id"]


async def _post(http: httpx.AsyncClient, auth: dict[str, str], value: float, ts: int) -> None:
    item = {"source": "model:churn-v3", "metric": "accuracy", "value": value, "ts": ts}
    r = await http.post("/api/monitoring/metrics", headers=auth, json=[item])
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1, "stored": 1}


async def _alerts(http: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    r = await http.get("/api/alerts", headers=auth)
    assert r.status_code == 200, r.text
    alerts: list[dict[str, Any]] = r.json()
    return alerts


def _next_at(alerts: list[dict[str, Any]]) -> int:
    return int(alerts[0]["notifications"][0]["next_attempt_at"])


def _status(alerts: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(n["status"], n["attempts"]) for a in alerts for n in a["notifications"]]


async def test_model_metric_alert_is_notified_once_and_resolves(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    async with httpx.AsyncClient(base_url=cloud.url) as http:
        auth, channel_id = await _setup(cloud, http, receiver.url)
        await _post(http, auth, 0.9, T0)
        await eventually(lambda: metric_value(http, OBSERVED), lambda n: n >= 1)
        assert await _alerts(http, auth) == []  # 0.9 is fine

        await _post(http, auth, 0.7, T0 + 60_000)
        alerts = await eventually(
            lambda: _alerts(http, auth), lambda a: _status(a) == [("sent", 1)]
        )
        [alert] = alerts
        assert alert["state"] == "active" and alert["severity"] == "critical"
        assert alert["source"] == "model:churn-v3" and alert["device_id"] is None
        assert alert["metric"] == "accuracy" and alert["value"] == 0.7
        assert alert["started_at"] == T0 + 60_000
        assert alert["notifications"][0]["channel_id"] == channel_id
        [delivery] = receiver.delivered
        assert delivery["body"]["event"] == "alert.raised"
        assert delivery["body"]["alert"]["id"] == alert["id"]
        assert delivery["body"]["alert"]["rule_name"] == "churn model accuracy"

        # Still breaching: the same episode, no second alert, no second notification.
        await _post(http, auth, 0.6, T0 + 120_000)
        await eventually(lambda: metric_value(http, OBSERVED), lambda n: n >= 3)
        assert len(await _alerts(http, auth)) == 1
        assert len(receiver.requests) == 1

        # Back to normal: the alert resolves and the channel hears about it.
        await _post(http, auth, 0.95, T0 + 180_000)
        alerts = await eventually(
            lambda: _alerts(http, auth),
            lambda a: a[0]["state"] == "resolved" and _status(a) == [("sent", 1), ("sent", 1)],
        )
        assert alerts[0]["resolved_at"] == T0 + 180_000
        assert [r["body"]["event"] for r in receiver.requests] == [
            "alert.raised",
            "alert.resolved",
        ]
        text = (await http.get("/metrics")).text
        assert "iotsphere_alerts_raised_total 1" in text
        assert "iotsphere_notifications_sent_total 2" in text


async def test_failing_webhook_is_retried_across_a_restart_and_delivered_once(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    receiver.script = [503, 503]
    async with httpx.AsyncClient(base_url=cloud.url) as http:
        auth, _ = await _setup(cloud, http, receiver.url)
        await _post(http, auth, 0.9, T0)
        await _post(http, auth, 0.7, T0 + 1000)
        alerts = await eventually(
            lambda: _alerts(http, auth), lambda a: _status(a) == [("retrying", 1)]
        )
        [alert] = alerts
        entry = alert["notifications"][0]
        assert "503" in entry["last_error"] and entry["next_attempt_at"] >= clock.now_ms() + 30_000

    await cloud.restart()  # same data dir: new store, loop and worker

    async with httpx.AsyncClient(base_url=cloud.url) as http:
        auth = await login_at(http, "ds@example.com")
        assert _status(await _alerts(http, auth)) == [("retrying", 1)]
        # The restarted loop does not raise the open episode again.
        await _post(http, auth, 0.65, T0 + 2000)
        await eventually(lambda: metric_value(http, OBSERVED), lambda n: n >= 1)
        assert len(await _alerts(http, auth)) == 1

        clock.advance(31)
        # "retrying" with attempts 2 also shows while attempt 2 is in flight; wait until its
        # failure is recorded (the next attempt is scheduled in the future).
        await eventually(
            lambda: _alerts(http, auth),
            lambda a: _status(a) == [("retrying", 2)] and _next_at(a) > clock.now_ms(),
        )
        clock.advance(31)
        alerts = await eventually(
            lambda: _alerts(http, auth), lambda a: _status(a) == [("sent", 3)]
        )
        assert alerts[0]["id"] == alert["id"]
        assert await metric_value(http, "iotsphere_notifications_sent_total") == 1
    assert [r["status"] for r in receiver.requests] == [503, 503, 200]
    assert len({r["headers"]["Idempotency-Key"] for r in receiver.requests}) == 1
    assert [r["headers"]["X-IoTSphere-Delivery-Attempt"] for r in receiver.requests] == [
        "1",
        "2",
        "3",
    ]


@pytest.mark.engines("postgresql")
async def test_two_clouds_on_one_database_raise_and_deliver_once(
    cloud: Cloud, receiver: Receiver, clock: ManualClock
) -> None:
    """Two `cloud serve` on one PostgreSQL database (two servers in this process, each with its
    own pool, monitoring loop and notification worker): the rule is made on the second,
    metrics are posted to the first, both loops are woken each time; one alert, one delivery."""
    second = Cloud(cloud.settings, clock)
    await second.start()
    assert cloud.services is not None and second.services is not None
    try:
        async with (
            httpx.AsyncClient(base_url=cloud.url) as first_http,
            httpx.AsyncClient(base_url=second.url) as second_http,
        ):
            auth, _ = await _setup(second, second_http, receiver.url)
            for n in range(5):  # breaching all along: one episode
                await _post(first_http, auth, 0.7 - n / 100, T0 + n * 1000)
                second.services.hooks.wake_monitor()
            await eventually(
                lambda: _alerts(second_http, auth), lambda a: _status(a) == [("sent", 1)]
            )

            # every point judged once in all, by whichever worker held the org's pass (which
            # one wins is a race: either may have judged none)
            async def judged() -> float:
                return await metric_value(first_http, OBSERVED) + await metric_value(
                    second_http, OBSERVED
                )

            await eventually(judged, lambda n: n >= 5)
            await asyncio.sleep(0.3)  # both workers poll every 20 ms: time to send it twice
            assert len(await _alerts(first_http, auth)) == 1
            assert len(receiver.requests) == 1
            assert await judged() == 5  # and none twice
    finally:
        await second.stop()
