"""A gateway's own rules and the why of its alerts reach the cloud through sync (issue 15,
item 2), on a real gateway syncing to test_gateway_sync's stub cloud (signed batches decoded
with the real wire format): the rule list is sent once per change, and an
alert change carries the rule it was raised under."""

from __future__ import annotations

import asyncio
from typing import Any

from common.model import Reading
from edge.app.config import GatewayConfig
from tests.edge.test_gateway_sync import (
    StubCloud,
    enroll_directly,
    ingest,
    running,
    stub,
    sync_config,
)
from tests.support.waiting import until

__all__ = ["stub"]  # the fixture, used by name

HOT = {"metric": "temp", "operator": ">", "threshold": 30, "device_id": "d1", "name": "Too hot"}


async def test_rule_list_reaches_the_cloud_once_per_change_and_alerts_carry_their_rule(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    lists: list[list[tuple[Any, ...]]] = []
    explained: list[tuple[str, Any]] = []

    def seen(b: Any) -> None:
        if b.rules is not None:
            lists.append([(r["id"], r["name"], r["threshold"]) for r in b.rules])
        explained.extend((a.state, a.rule) for a in b.alerts)

    stub.on_batch = seen
    async with running(sync_config(gateway_config)) as gw:
        await asyncio.sleep(0.3)
        assert lists == []  # no rules ever: nothing to send
        rule = await gw.add_rule({**HOT, "id": "r-hot"})
        await until(lambda: lists == [[("r-hot", "Too hot", 30.0)]])
        await asyncio.sleep(0.3)  # ticks go by: an acknowledged list is not sent again
        assert len(lists) == 1
        await ingest(gw, [Reading("d1", "temp", 1_764_300_000_000, 31.5, 1_764_300_000_001)])
        await until(lambda: bool(explained))
        state, why = explained[0]
        assert state == "active" and why is not None
        assert (why["name"], why["operator"], why["threshold"]) == ("Too hot", ">", 30.0)
        assert why["version"] == rule["version"]
