"""The seed's 'Monitoring Service' side of the dashboard flow.

config -> device status -> active alerts -> assembled JSON. Each query is tried up to
settings.store_attempts times (each failure logged); if one still fails, StoreUnavailable
propagates and the API answers 503 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cloud.api.device_list import page_info
from cloud.api.views import device_view
from cloud.app.services import Services
from cloud.notify.store import alert_documents
from cloud.storage.device_query import DeviceQuery
from cloud.storage.retry import with_store_retries
from common.alerts import OPEN_STATES

T = TypeVar("T")


def default_config(online_threshold_s: float) -> dict[str, Any]:
    """What an org sees before anyone saved a layout."""
    return {
        "title": "IoTSphere",
        "refresh_seconds": 5,  # the dashboard polls this often (live without SSE)
        "online_threshold_s": online_threshold_s,
        "widgets": [
            {"type": "device_table"},
            {"type": "active_alerts"},
            {"type": "telemetry_chart", "range": "24h", "bucket": "5m"},
        ],
    }


def json_object(parts: dict[str, str]) -> str:
    """A JSON object from values that are JSON text already, in the given order."""
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in parts.items()) + "}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def assemble(services: Services, org_id: str, device_query: DeviceQuery | None = None) -> str:
    """The dashboard's body as JSON text; with `device_query`, one page of devices and
    `devices_page`. Every device (no query) comes as JSON text from the database: built in
    Python it cost more CPU than the query (device_json.py says why)."""
    settings, store = services.settings, services.store

    def retried(what: str, op: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return with_store_retries(
            what,
            op,
            attempts=settings.store_attempts,
            backoff_s=settings.store_backoff_s,
            sleep=services.sleep,
        )

    config = await retried("dashboard configuration", lambda: store.get_dashboard_config(org_id))
    threshold_s = settings.online_threshold_s
    page_body: dict[str, str] = {}
    if device_query is None:
        now = services.clock.now_ms()
        devices = await retried(
            "device status", lambda: store.device_list_json(org_id, now, threshold_s)
        )
    else:
        page = await retried("device status", lambda: store.device_page(org_id, device_query))
        now = services.clock.now_ms()
        devices = _dumps([device_view(d, now, threshold_s) for d in page.devices])
        page_body = {"devices_page": _dumps(page_info(page, device_query))}
    alerts = await retried("active alerts", lambda: store.list_alerts(org_id, OPEN_STATES))
    alert_docs = await retried(
        "alert notification status", lambda: alert_documents(services.notify, alerts)
    )
    return json_object(
        {
            "config": _dumps(config if config is not None else default_config(threshold_s)),
            "devices": devices,
            "alerts": _dumps(alert_docs),
            **page_body,
        }
    )
