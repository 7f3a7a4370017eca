"""Gateway enrollment and sync against a stub cloud (aiohttp, loopback) that decodes batches with
common.sync_wire and verifies every request with common.gateway_auth, as the real cloud does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from common.clock import SystemClock
from common.gateway_auth import (
    GatewayAuthError,
    GatewayVerifier,
    generate_private_key,
    load_private_key,
    parse_public_key_b64,
    public_key_bytes,
    save_private_key,
)
from common.model import Reading
from common.sync_wire import (
    BatchAck,
    SyncBatch,
    WireError,
    decode_batch,
    encode_ack,
    reading_clocks,
)
from edge.app.config import GatewayConfig, LockoutConfig
from edge.app.gateway import Gateway
from edge.storage.actor import Ingest
from edge.storage.client import call
from edge.storage.store import GatewayStore
from edge.sync.actor import backoff_delay
from edge.sync.cloud_client import retry_after_s
from edge.sync.identity import Identity, key_path, load_identity, save_identity
from tests.conftest import cli, running
from tests.support.waiting import until


@dataclass
class StubCloud:
    """Records what arrives; fault switches: fail_503 (answer 503 before applying) and drop
    (apply, then close the connection without answering)."""

    keys: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, bool] = field(default_factory=dict)  # token -> used
    batch_ids: list[str] = field(default_factory=list)  # every verified request, in order
    acks: dict[str, BatchAck] = field(default_factory=dict)
    readings: dict[int, Reading] = field(default_factory=dict)  # gateway seq -> reading
    arrival: list[int] = field(default_factory=list)  # seqs in the order first stored
    alerts: list[str] = field(default_factory=list)
    fail_503: int = 0
    retry_after: str | None = None  # the Retry-After header of those 503s
    drop: int = 0
    auth_failures: int = 0
    follows: list[str | None] = field(default_factory=list)  # per verified request
    refuse_follows: int = 0  # answer 409 to this many batches that follow another
    hold_for_next_s: float = 0.0  # keep a batch unanswered until the next one arrives
    in_progress: int = 0
    max_in_progress: int = 0
    on_batch: Callable[[SyncBatch], None] | None = None
    url: str = ""

    def __post_init__(self) -> None:
        self.verifier = GatewayVerifier(self.keys.get, SystemClock())

    async def enroll(self, request: web.Request) -> web.Response:
        doc = await request.json()
        token = doc.get("enrollment_token")
        if token not in self.tokens or self.tokens[token]:
            return web.json_response(
                {"title": "Enrollment refused", "status": 401, "detail": "used or unknown token"},
                status=401,
            )
        self.tokens[token] = True
        gw = "gw-" + secrets.token_hex(4)
        self.keys[gw] = parse_public_key_b64(doc["public_key"])
        return web.json_response({"gateway_id": gw, "org": "acme", "cloud_time_ms": 1})

    async def batches(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            self.verifier.verify_authorization(
                request.headers.get("Authorization"),
                method="POST",
                path=request.path_qs,
                body=body,
            )
            batch = decode_batch(
                body,
                request.headers.get("Content-Type", ""),
                request.headers.get("Content-Encoding", "identity"),
            )
        except (GatewayAuthError, WireError) as exc:
            self.auth_failures += 1
            return web.json_response(exc.problem.to_dict(), status=exc.problem.status)
        self.batch_ids.append(batch.batch_id)
        self.follows.append(batch.follows)
        if self.on_batch is not None:
            self.on_batch(batch)
        self.in_progress += 1  # requests received and not yet answered
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            if self.hold_for_next_s:
                received = len(self.batch_ids)
                with contextlib.suppress(TimeoutError):
                    await until(lambda: len(self.batch_ids) > received, self.hold_for_next_s)
            return await self._apply(request, batch)
        finally:
            self.in_progress -= 1

    async def _apply(self, request: web.Request, batch: SyncBatch) -> web.StreamResponse:
        if batch.follows is not None:
            if self.refuse_follows > 0:
                self.refuse_follows -= 1
                return web.json_response({"title": "Conflict", "status": 409}, status=409)
            follows = batch.follows  # as the cloud: applied after the one it follows
            await until(lambda: follows in self.acks, timeout_s=5)
        if self.fail_503 > 0:
            self.fail_503 -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.json_response({"title": "busy"}, status=503, headers=headers)
        ack = self.acks.get(batch.batch_id)
        if ack is None:
            stored = 0
            for seq, reading in batch.readings.readings():
                if seq not in self.readings:
                    self.readings[seq] = reading
                    self.arrival.append(seq)
                    stored += 1
            self.alerts.extend(f"{a.id}:{a.state}" for a in batch.alerts)
            ack = BatchAck(
                batch.batch_id,
                batch.first_seq,
                batch.last_seq,
                stored,
                len(batch.readings) - stored,
            )
            self.acks[batch.batch_id] = ack
        if self.drop > 0:
            self.drop -= 1
            assert request.transport is not None
            request.transport.close()  # committed, but the answer is lost
            return web.Response(status=200)
        return web.Response(body=encode_ack(ack), content_type="application/json")


@pytest.fixture
async def stub() -> AsyncIterator[StubCloud]:
    cloud = StubCloud()
    app = web.Application()
    app.router.add_post("/api/v1/gateways/enroll", cloud.enroll)
    app.router.add_post("/api/v1/sync/batches", cloud.batches)
    # auto_decompress off: the signature covers the body as sent (compressed), and
    # decode_batch decompresses itself, with its size limit.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cloud.url = f"http://127.0.0.1:{port}"
    yield cloud
    await runner.cleanup()


def enroll_directly(data_dir: Path, cloud: StubCloud) -> str:
    """What `gateway enroll` leaves behind, without the subprocess (fast path for sync tests)."""
    key = generate_private_key()
    gw = "gw-" + secrets.token_hex(4)
    cloud.keys[gw] = public_key_bytes(key)
    save_private_key(key, key_path(data_dir))
    save_identity(data_dir, Identity(gw, cloud.url, "acme", None, 0))
    return gw


def sync_config(cfg: GatewayConfig) -> GatewayConfig:
    return replace(
        cfg,
        lockout=LockoutConfig(max_failures_per_address=1000),
        sync_tick_s=0.02,
        sync_batch_max_readings=7,
        sync_batch_max_age_s=0.02,
        sync_timeout_s=5.0,
        sync_backoff_base_s=0.01,
        sync_backoff_max_s=0.05,
    )


def readings(n: int, start_ts: int = 1_764_300_000_000, device: str = "d1") -> list[Reading]:
    return [
        Reading(device, "temperature", start_ts + i * 1000, 20.0 + i / 100, start_ts + i * 1000)
        for i in range(n)
    ]


async def ingest(gw: Gateway, rows: list[Reading]) -> None:
    done = asyncio.get_running_loop().create_future()
    await gw.store_ref.send(Ingest(rows, confirm=done.set_result))
    assert await done is None


async def durable_cursor(gw: Gateway) -> int:
    return (await call(gw.store_ref, lambda s: s.sync_cursor()))[0]


# -- enrollment ----------------------------------------------------------------------------


async def test_enroll_writes_identity_and_private_key(stub: StubCloud, data_dir: Path) -> None:
    stub.tokens["good"] = False
    run = asyncio.to_thread
    p = await run(cli, "gateway", "enroll", "--cloud", stub.url, "--token", "bad",
                  data_dir=data_dir, check=False)  # fmt: skip
    assert p.returncode == 1 and "refused" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert load_identity(data_dir) is None and not key_path(data_dir).exists()

    p = await run(cli, "gateway", "enroll", "--cloud", stub.url, "--token", "good",
                  "--name", "site-1", data_dir=data_dir)  # fmt: skip
    out = json.loads(p.stdout)
    identity = load_identity(data_dir)
    assert identity is not None and identity.gateway_id == out["gateway_id"]
    assert identity.cloud_url == stub.url and identity.org == "acme" and identity.name == "site-1"
    assert stat.S_IMODE(key_path(data_dir).stat().st_mode) == 0o600
    # the key on disk is the one the cloud registered
    assert public_key_bytes(load_private_key(key_path(data_dir))) == stub.keys[out["gateway_id"]]

    p = await run(cli, "gateway", "enroll", "--cloud", stub.url, "--token", "good",
                  data_dir=data_dir, check=False)  # fmt: skip
    assert p.returncode == 1 and "already enrolled" in p.stderr

    p = await run(cli, "gateway", "enroll", "--cloud", "http://127.0.0.1:9", "--token", "x",
                  "--force", data_dir=data_dir, check=False)  # fmt: skip
    assert p.returncode == 1 and "cannot reach the cloud" in p.stderr
    assert load_identity(data_dir) == identity  # a failed re-enrollment changes nothing

    status = json.loads((await run(cli, "gateway", "status", data_dir=data_dir)).stdout)
    assert status["sync"]["state"] == "enrolled"
    assert status["sync"]["gateway_id"] == identity.gateway_id


# -- sync ----------------------------------------------------------------------------------


async def test_mqtt_readings_arrive_exactly_once_in_seq_order(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    async with running(sync_config(gateway_config)) as gw:
        dev = await gw.add_device("t1", "thermo")
        async with aiomqtt.Client(
            "127.0.0.1", gw.mqtt_port, username="t1", password=dev["token"]
        ) as c:
            for i in range(25):
                body = {"ts": 1_764_300_000_000 + i * 1000, "values": {"temperature": 20 + i}}
                await c.publish("devices/t1/telemetry", json.dumps(body), qos=1)
        await until(lambda: len(stub.readings) == 25)
        await until(lambda: gw.sync_stats is not None and gw.sync_stats.backlog_readings == 0)
        status = await gw.status()
    assert stub.arrival == sorted(stub.arrival) and len(set(stub.arrival)) == 25
    assert [stub.readings[s].value for s in stub.arrival] == [20.0 + i for i in range(25)]
    assert len(stub.batch_ids) == len(set(stub.batch_ids)) >= 4  # 7 per batch: no resends
    sync = status["sync"]
    assert sync["state"] == "enrolled" and sync["backlog_readings"] == 0
    assert sync["consecutive_failures"] == 0 and sync["readings_acked"] == 25
    assert sync["last_success_at"] is not None and sync["cursor_seq"] == max(stub.arrival)


async def test_503_is_retried_and_the_cursor_moves_only_after_the_ack(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    stub.fail_503 = 2
    seen_cursor: list[int] = []
    async with running(sync_config(gateway_config)) as gw:
        assert gw.sync_stats is not None
        stats = gw.sync_stats
        stub.on_batch = lambda b: seen_cursor.append(stats.cursor_seq)
        await ingest(gw, readings(5))
        await until(lambda: len(stub.readings) == 5)
        await until(lambda: stats.cursor_seq == 5)
        durable = await durable_cursor(gw)
    assert stub.batch_ids[:3] == [stub.batch_ids[0]] * 3  # the same batch, resent as is
    assert seen_cursor[:3] == [0, 0, 0]  # not advanced while the cloud said 503
    assert durable == 5
    assert stats.server_errors == 2 and stats.retries == 2 and stats.successes >= 1
    assert stats.consecutive_failures == 0 and "503" in (stats.last_error or "")


async def test_the_clouds_retry_after_is_honoured_not_a_grown_backoff(
    stub: StubCloud, gateway_config: GatewayConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """After a long outage the backoff has grown; a cloud that says Retry-After: 1 gets the
    batch again after about 1 s, not after up to the backoff's cap."""
    enroll_directly(gateway_config.data_dir, stub)
    stub.fail_503, stub.retry_after = 3, "1"
    cfg = replace(sync_config(gateway_config), sync_backoff_base_s=30.0, sync_backoff_max_s=300.0)
    caplog.set_level(logging.WARNING, logger="iotsphere.sync")
    async with running(cfg) as gw:
        await ingest(gw, readings(5))
        await until(lambda: len(stub.readings) == 5, timeout_s=20)
    assert gw.sync_stats is not None and gw.sync_stats.server_errors == 3
    waits = [
        float(m.group(1))
        for rec in caplog.records
        if (m := re.search(r"503.*retry in ([0-9.]+) s", rec.getMessage()))
    ]
    assert len(waits) == 3 and all(1.0 <= w <= 1.1 for w in waits), waits


def test_retry_after_values() -> None:
    assert retry_after_s("5") == 5.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now


async def test_lost_ack_makes_the_gateway_resend_the_same_batch(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    stub.drop = 1
    async with running(sync_config(gateway_config)) as gw:
        assert gw.sync_stats is not None
        stats = gw.sync_stats
        await ingest(gw, readings(6))
        await until(lambda: stats.cursor_seq == 6)
    assert stub.batch_ids[0] == stub.batch_ids[1]  # recorded, answer lost, sent again
    assert sorted(stub.readings) == [1, 2, 3, 4, 5, 6]  # stored once
    assert stub.acks[stub.batch_ids[0]].stored == 6
    assert stats.unreachable == 1 and stats.cloud_duplicates == 0  # the stub answered its ack


async def test_restart_resumes_from_the_durable_cursor(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    cfg = sync_config(gateway_config)
    async with running(cfg) as gw:
        await ingest(gw, readings(10))
        await until(lambda: gw.sync_stats is not None and gw.sync_stats.cursor_seq == 10)
    first_round = list(stub.batch_ids)
    # While the gateway is down, more readings become durable (as after a crash mid-stream).
    store = GatewayStore(cfg.db_path)
    from edge.storage.store import Batch

    store.commit(Batch(readings=readings(4, start_ts=1_764_400_000_000)))
    assert store.sync_cursor()[0] == 10
    store.close()
    async with running(cfg) as gw:
        await until(lambda: len(stub.readings) == 14)
        await until(lambda: gw.sync_stats is not None and gw.sync_stats.cursor_seq == 14)
    new = stub.batch_ids[len(first_round) :]
    assert new and all(b not in first_round for b in new)  # nothing before the cursor resent
    assert stub.arrival == list(range(1, 15))


async def test_sync_actor_crash_resends_from_the_cursor(
    stub: StubCloud, gateway_config: GatewayConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the cloud stored a batch but before the cursor was saved: the restarted
    actor rebuilds the batch from the durable cursor and the cloud sees it again (once)."""
    from edge.storage.store import GatewayStore as Store

    enroll_directly(gateway_config.data_dir, stub)
    real_save = Store.save_sync_cursor
    crashed: list[int] = []

    def failing_save(
        self: Store, readings_seq: int, alerts_seq: int, at_ms: int, *rest: Any
    ) -> None:
        if not crashed:
            crashed.append(readings_seq)
            raise RuntimeError("crash before the cursor was saved")
        real_save(self, readings_seq, alerts_seq, at_ms, *rest)

    monkeypatch.setattr(Store, "save_sync_cursor", failing_save)
    async with running(sync_config(gateway_config)) as gw:
        await ingest(gw, readings(3))
        await until(lambda: gw.sync_stats is not None and gw.sync_stats.cursor_seq == 3)
        durable = await durable_cursor(gw)
    assert crashed == [3] and durable == 3
    assert stub.batch_ids[0] == stub.batch_ids[1]  # same cursors -> same batch id
    assert sorted(stub.readings) == [1, 2, 3]


async def test_gateway_without_identity_does_not_sync(gateway: Gateway) -> None:
    status = await gateway.status()
    assert gateway.sync_stats is None and status["sync"]["state"] == "not enrolled"


def test_backoff_is_full_jitter_and_capped() -> None:
    assert backoff_delay(0, 1.0, 300.0, lambda: 1.0) == 0.0
    assert [backoff_delay(n, 1.0, 300.0, lambda: 1.0) for n in (1, 2, 3, 10)] == [
        1.0,
        2.0,
        4.0,
        300.0,
    ]
    assert backoff_delay(5, 1.0, 300.0, lambda: 0.25) == 4.0
    assert backoff_delay(1000, 1.0, 300.0, lambda: 1.0) == 300.0


# -- disk budget, auth events and clocks in batches ------------------------------------------


async def test_cap_drops_oldest_unsynced_keeps_alerts_and_reports_the_exact_count(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    gw_id = enroll_directly(gateway_config.data_dir, stub)
    cfg = replace(sync_config(gateway_config), unsynced_cap_readings=30, budget_every_s=0.05)
    seen: list[SyncBatch] = []
    stub.on_batch = seen.append
    stub.fail_503 = 10**9  # the cloud is down while the site fills its budget
    async with running(cfg) as gw:
        await gw.add_rule({"metric": "temperature", "operator": ">", "threshold": 20.5})
        await ingest(gw, readings(100))  # 20.00 .. 20.99: the rule fires at 20.51
        await until(lambda: gw.store_stats.readings_dropped == 70)
        assert await call(gw.store_ref, lambda s: s.count_readings()) == 30
        kept = [r.ts for r in (await call(gw.store_ref, lambda s: s.readings_after(0, 1000)))[1]]
        # Oldest first: one run of 70 is gone. Batches read for the cloud are pinned from
        # their read on (dropping them would count readings the cloud then receives): the
        # one on the wire and the one read ahead of it, so the run may start after them.
        every = [r.ts for r in readings(100)]
        gone = [i for i, ts in enumerate(every) if ts not in kept]
        assert len(gone) == 70 and gone == list(range(gone[0], gone[0] + 70))
        assert gone[0] <= 2 * cfg.sync_batch_max_readings
        alerts = await call(gw.store_ref, lambda s: s.alerts())
        assert len(alerts) == 1 and alerts[0].state == "active"  # alerts are never dropped
        stub.fail_503 = 0
        await until(lambda: len(stub.readings) == 30 and len(stub.alerts) == 1)
        await until(lambda: any(b.dropped == 70 for b in seen))
        drops = await call(gw.store_ref, lambda s: s.drops())
        counters = await call(gw.store_ref, lambda s: s.counters())
    assert sum(d["readings"] for d in drops) == 70 and counters["readings_dropped"] == 70
    assert sorted(r.ts for r in stub.readings.values()) == kept
    assert gw_id in stub.keys
    status = json.loads((await asyncio.to_thread(cli, "gateway", "status",
                                                 data_dir=cfg.data_dir)).stdout)  # fmt: skip
    assert status["counters"]["readings_dropped"] == 70
    assert status["disk"]["used_bytes"] > status["disk"]["database_bytes"] > 0


async def test_synced_readings_are_pruned_after_retention_unsynced_never(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    # received_at is hours old: past a retention of 1 h as soon as the cloud has them
    old = readings(20, start_ts=1_000_000_000_000)
    cfg = replace(sync_config(gateway_config), synced_retention_h=1.0, budget_every_s=0.05)
    stub.fail_503 = 10**9
    async with running(cfg) as gw:
        await ingest(gw, old)
        await asyncio.sleep(0.3)  # several budget passes while nothing is synced
        assert await call(gw.store_ref, lambda s: s.count_readings()) == 20
        stub.fail_503 = 0
        await until(lambda: len(stub.readings) == 20)
        await until(lambda: gw.store_stats.readings_pruned == 20)
        assert await call(gw.store_ref, lambda s: s.count_readings()) == 0
        assert gw.store_stats.readings_dropped == 0


async def test_auth_failures_reach_the_cloud_once_with_their_own_cursor(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    by_batch: dict[str, list[str]] = {}  # the cloud stores a batch id once
    stub.on_batch = lambda b: by_batch.setdefault(
        b.batch_id, [f"{e.username}:{e.at}" for e in b.auth_events]
    )
    stub.drop = 1  # the first answer is lost: the resend must not duplicate the events
    async with running(sync_config(gateway_config)) as gw:
        await gw.add_device("t1", "thermo")
        for _ in range(3):
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1", gw.mqtt_port, username="t1", password="wrong"
                ):
                    pass
        await until(lambda: gw.store_stats.auth_failures >= 3)
        rows = await call(gw.store_ref, lambda s: s.auth_failures())
        await until(lambda: call(gw.store_ref, lambda s: s.auth_sync_cursor() == len(rows)))
    sent = [e for events in by_batch.values() for e in events]
    assert len(rows) >= 3 and sorted(sent) == sorted(f"t1:{r['at']}" for r in rows)
    assert len(stub.batch_ids) > len(by_batch)  # the lost answer did cause a resend


async def test_batches_carry_clock_epochs_and_the_measured_skew(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    seen: list[SyncBatch] = []
    stub.on_batch = seen.append
    async with running(sync_config(gateway_config)) as gw:
        now = time.time_ns() // 1_000_000
        await ingest(gw, [replace(r, received_at=now) for r in readings(3)])
        await until(lambda: len(stub.readings) == 3)
        boot = gw.boot_id
        mono_now = time.monotonic() * 1000
    batch = next(b for b in seen if len(b.readings))
    assert batch.epochs and batch.epochs[0].boot_id == boot == batch.boot_id
    clocks = reading_clocks(batch)
    assert clocks.boot_id == [boot] * 3
    # receive time minus the epoch's base is the monotonic clock when the reading arrived
    assert all(0 < m <= mono_now for m in clocks.mono_ms if m is not None)


async def test_devices_provisioned_at_the_gateway_reach_the_cloud_once_per_change(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    lists: list[list[tuple[str, str | None, str]]] = []
    stub.on_batch = lambda b: (
        b.devices and lists.append([(d.device_id, d.type, d.status) for d in b.devices])
    )
    async with running(sync_config(gateway_config)) as gw:
        await gw.add_device("t1", "thermo")  # no reading yet: the cloud lists it anyway
        await until(lambda: lists == [[("t1", "thermo", "active")]])
        await asyncio.sleep(0.2)  # ticks go by: an acknowledged list is not sent again
        assert len(lists) == 1
        await gw.add_device("t2", None)
        await gw.revoke_device("t1")
        await until(lambda: lists[-1] == [("t1", "thermo", "revoked"), ("t2", None, "active")])


async def test_device_types_from_the_cloud_validate_readings_and_survive_a_restart(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    cfg = replace(gateway_config, device_types={})  # no local types: the cloud's apply
    doc = {
        "version": 1,
        "device_types": [
            {"name": "tank", "metrics": {"level": {"type": "number", "min": 0, "max": 100}}},
            {"name": "bad", "metrics": {"level": {"type": "colour"}}},  # skipped, logged
        ],
    }
    body = json.dumps({"level": 150}).encode()
    async with running(cfg) as gw:
        await gw.add_device("k1", "tank")
        assert gw._classifier.classify("k1", body, None, 1, "mqtt").accepted  # no type yet
        await gw.apply_cloud_config(0, doc)
        outcome = gw._classifier.classify("k1", body, None, 1, "mqtt")
        assert not outcome.accepted and outcome.rejection is not None
    async with running(cfg) as gw:  # offline after a restart: the types still hold
        assert not gw._classifier.classify("k1", body, None, 1, "mqtt").accepted
        assert gw._classifier.classify("k1", b'{"level": 50}', None, 1, "mqtt").accepted


async def test_each_batch_says_how_many_readings_still_wait(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    seen: list[tuple[int, int]] = []
    stub.on_batch = lambda b: seen.append((b.last_seq, b.backlog))
    stub.fail_503 = 10**9  # hold everything back until all 25 are stored
    async with running(sync_config(gateway_config)) as gw:  # 7 readings per batch
        await ingest(gw, readings(25))
        stub.fail_503 = 0
        await until(lambda: len(stub.readings) == 25)
    assert (7, 18) in seen and (14, 11) in seen and (21, 4) in seen
    assert all(backlog == 25 - last for last, backlog in seen)


async def test_a_backlog_drains_with_two_batches_on_the_wire_in_order(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    stub.hold_for_next_s = 2.0  # a gateway that waited for each ack would wait 2 s a batch
    async with running(sync_config(gateway_config)) as gw:
        await ingest(gw, readings(70))  # 10 full batches
        await until(lambda: gw.sync_stats is not None and gw.sync_stats.cursor_seq == 70)
    assert stub.arrival == list(range(1, 71))  # exactly once, in seq order
    # every batch after the first of a drain names its predecessor
    pipelined = [(f, b) for f, b in zip(stub.follows[1:], stub.batch_ids, strict=False) if f]
    assert pipelined and all(f == before for f, before in pipelined)
    assert stub.max_in_progress == 2  # the next batch was sent before the ack of the one before


async def test_a_batch_whose_predecessor_the_cloud_lacks_is_resent_on_its_own(
    stub: StubCloud, gateway_config: GatewayConfig
) -> None:
    enroll_directly(gateway_config.data_dir, stub)
    stub.refuse_follows = 1  # 409: as a cloud restored from a backup older than the ack
    async with running(sync_config(gateway_config)) as gw:
        assert gw.sync_stats is not None
        stats = gw.sync_stats
        await ingest(gw, readings(21))
        await until(lambda: stats.cursor_seq == 21)
    assert stub.arrival == list(range(1, 22))
    refused = stub.follows.index(next(f for f in stub.follows if f))
    # the refused batch came again, the same batch, without `follows`
    assert stub.batch_ids[refused + 1] == stub.batch_ids[refused]
    assert stub.follows[refused + 1] is None
    assert stats.client_errors == 1
