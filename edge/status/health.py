"""Monitoring on the gateway's HTTP port: `/healthz`, `/readyz` and `/metrics`, no login.

- `/healthz`: 200 while the process serves HTTP (alive).
- `/readyz`: 200 when the broker is up (the managed Mosquitto running, or the external broker
  connected), the store can write and the MQTT ingress is subscribed; otherwise 503 with a
  problem document whose `errors` name each check that failed.
- `/metrics`: Prometheus text exposition (prometheus_client). `GatewayCollector` reads what
  `gateway status` reports (edge.status.gateway_status) at scrape time; it keeps no counters
  of its own. Each gateway has its own CollectorRegistry (tests run several in one process),
  with the process collector for RSS, CPU and open descriptors. Nothing secret is exposed:
  counts, ages and states only, no device ids, tokens, keys or URLs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
from prometheus_client import generate_latest as generate
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.model import FieldError
from common.problem import Problem

PREFIX = "iotsphere_gateway_"
READY_RETRY_AFTER_S = 5
LISTENERS = ("mqtt", "http", "admin")


class HealthSource(Protocol):
    """What the endpoints read; edge.status.gateway_status.GatewayStatus provides it."""

    def status_now(self) -> dict[str, Any]: ...

    def readiness(self) -> dict[str, str | None]: ...


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _store_metrics(st: Mapping[str, Any]) -> Iterator[Metric]:
    yield _counter(
        "readings_stored", "Readings stored (duplicates not counted)", st["readings_stored"]
    )
    yield _counter(
        "duplicates_ignored", "Readings received again and ignored", st["duplicates_ignored"]
    )
    yield _counter(
        "rejections", "Messages rejected (bad payload, too large, ...)", st["rejections"]
    )
    yield _counter(
        "auth_failures", "Authentication failures and lockouts recorded", st["auth_failures"]
    )
    yield _gauge("lockouts_active", "Usernames and addresses locked out now", st["lockouts_active"])
    yield _counter("commits", "Store commits", st["commits"])
    yield _gauge(
        "storage_available", "1 when the store can write", st["storage"]["state"] == "available"
    )
    disk = st["disk"]
    yield _counter(
        "readings_dropped",
        "Unsynced readings deleted by the disk cap since start",
        disk["readings_dropped_since_start"],
    )
    lag = GaugeMetricFamily(
        PREFIX + "ingest_lag_seconds",
        "Commit time minus device time over recent commits (p50, p99, max)",
        labels=["quantile"],
    )
    summary = st["ingest_lag"]
    for quantile, key in (("0.5", "p50_ms"), ("0.99", "p99_ms"), ("1", "max_ms")):
        if summary[key] is not None:
            lag.add_metric([quantile], summary[key] / 1000)
    yield lag


def _sync_metrics(sync: Mapping[str, Any]) -> Iterator[Metric]:
    if sync.get("backlog_readings") is not None:
        yield _gauge(
            "sync_backlog_readings",
            "Readings not yet synced to the cloud",
            sync["backlog_readings"],
        )
    age = sync.get("oldest_unsynced_age_s")
    yield _gauge(
        "sync_oldest_unsynced_age_seconds",
        "Age of the oldest reading not yet synced (0: none)",
        age or 0,
    )
    yield _gauge(
        "sync_enrolled",
        "1 when this gateway is enrolled with a cloud",
        sync.get("state") == "enrolled",
    )
    if "failures" in sync:
        yield _counter("sync_failures", "Sync attempts that failed", sync["failures"])
        yield _counter(
            "sync_readings_acked", "Readings the cloud acknowledged", sync["readings_acked"]
        )


def _broker_metrics(broker: Mapping[str, Any]) -> Iterator[Metric]:
    if broker.get("mode") != "managed":
        return
    yield _gauge("broker_up", "1 while the managed Mosquitto runs", broker["state"] == "running")
    yield _counter("broker_restarts", "Restarts of the managed Mosquitto", broker["restarts"])


def _connection_metrics(connections: Mapping[str, Any] | None) -> Iterator[Metric]:
    if connections is None:
        return
    listening = {n: st for n in LISTENERS if (st := connections.get(n)) is not None}
    opened = GaugeMetricFamily(
        PREFIX + "connections_open", "Connections open now", labels=["listener"]
    )
    accepted = CounterMetricFamily(
        PREFIX + "connections_accepted", "Connections accepted", labels=["listener"]
    )
    refused = CounterMetricFamily(
        PREFIX + "connections_refused", "Connections refused at a cap", labels=["listener"]
    )
    for name, st in listening.items():
        opened.add_metric([name], st["open"])
        accepted.add_metric([name], st["accepted"])
        refused.add_metric([name], st["refused_max_connections"] + st["refused_per_address"])
    yield from (opened, accepted, refused)


class GatewayCollector(Collector):
    """Reads the gateway's status at scrape time; keeps nothing itself."""

    def __init__(self, source: HealthSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        st = self._source.status_now()
        ready = GaugeMetricFamily(
            PREFIX + "ready", "1 when the check passes (as /readyz)", labels=["check"]
        )
        for check, why in self._source.readiness().items():
            ready.add_metric([check], why is None)
        yield ready
        yield from _store_metrics(st)
        yield from _sync_metrics(st["sync"])
        yield from _broker_metrics(st["broker"])
        yield from _connection_metrics(st["connections"])


def _json(doc: Mapping[str, Any], status: int = 200) -> web.Response:
    resp = web.json_response(doc, status=status)
    resp.headers[hdrs.CACHE_CONTROL] = "no-store"
    return resp


class HealthEndpoints:
    """The three routes, installed on the HTTP ingress's app beside the status page."""

    def __init__(self, source: HealthSource) -> None:
        self._source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(source))
        ProcessCollector(registry=self.registry)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)

    async def _healthz(self, _request: web.Request) -> web.StreamResponse:
        return _json({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.StreamResponse:
        checks = self._source.readiness()
        failing = [FieldError(name, why) for name, why in checks.items() if why is not None]
        states = {name: "ready" if why is None else "not ready" for name, why in checks.items()}
        if not failing:
            return _json({"status": "ready", "checks": states})
        problem = Problem(
            "not-ready",
            "Gateway not ready",
            503,
            "not ready: " + "; ".join(e.message for e in failing),
            errors=failing,
            extra={"checks": states},
        )
        resp = web.Response(
            status=503, body=problem.to_json(), content_type="application/problem+json"
        )
        resp.headers[hdrs.RETRY_AFTER] = str(READY_RETRY_AFTER_S)
        resp.headers[hdrs.CACHE_CONTROL] = "no-store"
        return resp

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=generate(self.registry))
        resp.headers[hdrs.CONTENT_TYPE] = CONTENT_TYPE_LATEST
        return resp
