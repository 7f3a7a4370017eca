"""A full disk refuses; it never acknowledges and drops, and it never stops the gateway.

A real gateway (in this process) with its data dir on a small tmpfs, filled with a file but a
little; devices flood HTTP ingest until the disk is full. Every 200 is stored, every refusal is a
507 with Retry-After and a problem document, status says why, and once the file is deleted the
gateway stores again by itself and the resent readings are stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from pathlib import Path

import httpx

from edge.alerts.rules_actor import STORAGE_RULE
from edge.app.config import LockoutConfig
from edge.app.gateway import Gateway
from edge.storage.client import call
from tests.conftest import local_config, running
from tests.support.ports import free_port
from tests.support.tmpfs import fill, tmpfs
from tests.support.waiting import until

PER_REQUEST = 50  # readings per POST
CLIENTS = 8
MAX_REQUESTS = 20_000  # the disk must fill long before this
REFUSALS_WANTED = 20
T0 = 1_764_300_000_000
PROBLEM = "application/problem+json"


def body(request_no: int) -> tuple[bytes, list[int]]:
    """One POST: PER_REQUEST readings with their own timestamps, values that compress poorly."""
    rnd = random.Random(request_no)
    ts = [T0 + request_no * PER_REQUEST + i for i in range(PER_REQUEST)]
    doc = [{"ts": t, "values": {"temperature": rnd.uniform(-40, 85)}} for t in ts]
    return json.dumps(doc).encode(), ts


class Flood:
    def __init__(self, url: str) -> None:
        self.url = url
        self.acked: dict[int, list[int]] = {}  # request -> its readings' ts (answered 200)
        self.refused: dict[int, list[int]] = {}  # answered 507/503
        self.next = 0

    async def post(self, client: httpx.AsyncClient, n: int) -> int:
        payload, ts = body(n)
        resp = await client.post(
            self.url, content=payload, headers={"content-type": "application/json"}
        )
        if resp.status_code == 200:
            assert resp.json() == {"status": "accepted", "readings": PER_REQUEST}
            self.acked[n] = ts
        else:
            assert resp.status_code in (503, 507), resp.text
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.headers["content-type"].startswith(PROBLEM)
            doc = resp.json()
            assert doc["status"] == resp.status_code and "nothing was stored" in doc["detail"]
            self.refused[n] = ts
        return resp.status_code

    async def until_refused(self, client: httpx.AsyncClient) -> None:
        async def worker() -> None:
            while len(self.refused) < REFUSALS_WANTED:
                n, self.next = self.next, self.next + 1
                assert n < MAX_REQUESTS, "the disk never filled"
                await self.post(client, n)

        await asyncio.gather(*(worker() for _ in range(CLIENTS)))


async def stored_ts(gw: Gateway, device_id: str) -> list[int]:
    rows = await call(gw.store_ref, lambda s: s.readings(device_id=device_id, limit=10**7))
    return [int(r["ts"]) for r in rows]


async def storage_alert_state(gw: Gateway) -> list[str]:
    return [a["state"] for a in await gw.alerts(None) if a["rule_id"] == STORAGE_RULE]


async def test_a_full_disk_refuses_with_507_keeps_every_ack_and_recovers(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", 40) as disk:
        data_dir = disk / "data"
        data_dir.mkdir()
        cfg = local_config(data_dir, free_port())
        cfg = replace(cfg, lockout=LockoutConfig(max_failures_per_address=1000))
        async with running(cfg) as gw, httpx.AsyncClient(timeout=30) as client:
            dev = await gw.add_device("h1", None)
            flood = Flood(f"http://127.0.0.1:{gw.http_port}/api/v1/{dev['token']}/telemetry")
            assert await flood.post(client, 0) == 200
            flood.next = 1
            filler = fill(disk, 1_500_000)  # room for a few commits, then full

            await flood.until_refused(client)

            # Still up, nothing crashed; it says why; the critical alert is raised.
            assert gw.store_ref.stats.failures == 0 and gw.store_ref.stats.restarts == 0
            health = gw.store_stats.storage
            assert not health.available and health.failure is not None
            assert health.failure.reason == "No space left on device"
            status = await gw.status()
            storage = status["storage"]
            assert storage["state"] == "unavailable" and storage["since"] is not None
            assert storage["reason"] == "No space left on device"
            assert storage["failed_commits"] >= 1 and storage["disk_full"]
            assert status["http"]["insufficient_storage"] >= 1
            await until(lambda: gw.rules_stats.active_alerts >= 1)
            # every reading answered 200 before the disk filled is stored
            acked = {t for ts in flood.acked.values() for t in ts}
            assert acked <= set(await stored_ts(gw, "h1"))
            n = flood.next
            flood.next += 1
            assert await flood.post(client, n) == 507  # refused at once while full

            filler.unlink()
            await until(lambda: gw.store_stats.storage.available, timeout_s=30)
            assert (await gw.status())["storage"]["state"] == "available"

            # Devices resend what was refused (and one resends an acknowledged request).
            resend = [*flood.refused, next(iter(flood.acked))]
            answers = [await flood.post(client, r) for r in resend]
            assert answers == [200] * len(resend)
            expected = {t for ts in flood.acked.values() for t in ts}
            stored = await stored_ts(gw, "h1")
            assert len(stored) == len(set(stored)) == len(expected)  # exactly once
            assert set(stored) == expected
            await until(lambda: storage_alert_state(gw))
            await until(lambda: _resolved(gw))
            assert gw.store_ref.stats.restarts == 0


async def _resolved(gw: Gateway) -> bool:
    return await storage_alert_state(gw) == ["resolved"]
