"""Monitoring endpoints on the gateway's HTTP port (issue 14, "Health"): /healthz, /readyz and
/metrics, without a login, against in-process gateways (real aiohttp, Mosquitto and DuckDB)."""

from __future__ import annotations

import json
import os
import signal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edge.app.gateway import Gateway
from tests.support.waiting import until

PREFIX = "iotsphere_gateway_"


def base_of(gw: Gateway) -> str:
    assert gw.http_port is not None
    return f"http://127.0.0.1:{gw.http_port}"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_healthz_and_readyz_answer_without_a_login(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=base_of(gateway)) as c:
        alive = await c.get("/healthz")
        assert alive.status_code == 200 and alive.json() == {"status": "alive"}
        ready = await c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "checks": {"broker": "ready", "store": "ready", "ingress": "ready"},
        }


async def test_metrics_parse_and_count_what_was_ingested(gateway: Gateway) -> None:
    dev = await gateway.add_device("m1", "thermo")
    async with httpx.AsyncClient(base_url=base_of(gateway)) as c:
        url = f"/api/v1/{dev['token']}/telemetry"
        for i in range(3):
            body = {"ts": 1764300000000 + i, "values": {"temperature": 20 + i, "humidity": 40}}
            resp = await c.post(url, content=json.dumps(body))
            assert resp.status_code == 200, resp.text
        bad = await c.post(url, content=b"{not json")
        assert bad.status_code == 400
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    got = samples(resp.text)
    assert got[(PREFIX + "readings_stored_total", ())] == 6
    assert got[(PREFIX + "readings_stored_total", ())] == gateway.store_stats.readings_stored
    assert got[(PREFIX + "rejections_total", ())] == 1
    assert got[(PREFIX + "auth_failures_total", ())] == 0
    assert got[(PREFIX + "lockouts_active", ())] == 0
    assert got[(PREFIX + "sync_backlog_readings", ())] == 6  # not enrolled: all of it
    assert got[(PREFIX + "sync_oldest_unsynced_age_seconds", ())] >= 0
    assert got[(PREFIX + "broker_up", ())] == 1
    assert got[(PREFIX + "broker_restarts_total", ())] == 0
    assert got[(PREFIX + "ready", (("check", "store"),))] == 1
    assert got[(PREFIX + "connections_accepted_total", (("listener", "http"),))] >= 1
    assert (PREFIX + "ingest_lag_seconds", (("quantile", "0.99"),)) in got
    assert got[("process_resident_memory_bytes", ())] > 10_000_000
    assert dev["token"] not in resp.text  # nothing secret: counts and states only


async def test_readyz_is_503_while_the_broker_is_down_and_200_when_it_is_back(
    gateway: Gateway,
) -> None:
    base = base_of(gateway)
    old_pid = (await gateway.status())["broker"]["pid"]
    async with httpx.AsyncClient(base_url=base) as c:
        assert (await c.get("/readyz")).status_code == 200
        os.kill(old_pid, signal.SIGKILL)

        async def not_ready() -> httpx.Response | None:
            resp = await c.get("/readyz")
            return resp if resp.status_code == 503 else None

        down = await until(not_ready, 10)
        assert down.headers["content-type"].startswith("application/problem+json")
        doc = down.json()
        assert doc["status"] == 503 and doc["title"] == "Gateway not ready"
        assert "broker" in {e["path"] for e in doc["errors"]}
        assert doc["checks"]["store"] == "ready"
        assert "Retry-After" in down.headers
        assert (await c.get("/healthz")).status_code == 200  # alive all the same

        async def ready() -> bool:
            return (await c.get("/readyz")).status_code == 200

        await until(ready, 30)
        metrics = samples((await c.get("/metrics")).text)
    assert (await gateway.status())["broker"]["pid"] != old_pid
    assert metrics[(PREFIX + "broker_restarts_total", ())] == 1
    assert metrics[(PREFIX + "broker_up", ())] == 1
