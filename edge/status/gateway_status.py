"""What `gateway status`, the admin API and the local status page report about a running
gateway: answered from live counters, never queued behind ingest (it must work under load)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edge.admin import ops
from edge.app.gateway_tls import tls_status
from edge.app.parts import GatewayParts
from edge.ingest.listener import open_fds
from edge.status.view import StatusData
from edge.storage.interfaces import StatusStorage


class GatewayStatus(GatewayParts):
    @property
    def _status_storage(self) -> StatusStorage:
        """The store, narrowed to the one read the status page makes."""
        return self.store_client

    @property
    def mqtts_port(self) -> int | None:
        """The bound MQTT-over-TLS port, None when off."""
        return self._front.tls_port if self._front is not None else None

    @property
    def https_port(self) -> int | None:
        """The bound HTTPS port, None when off."""
        return self._http.tls_port if self._http is not None else None

    async def status(self) -> dict[str, Any]:
        """Answered from live counters, never queued behind ingest (it must work under load)."""
        return self.status_now()

    def status_now(self) -> dict[str, Any]:
        """`status` without awaiting: what /metrics reads at scrape time (edge.status.health)."""
        live, rules = self.store_stats, self.rules_stats  # display only: written by their actors
        devices: dict[str, int] = {}
        for state in self._device_status.values():
            devices[state] = devices.get(state, 0) + 1
        broker: dict[str, Any] = {"mode": "external" if self._broker is None else "managed"}
        if self._broker is not None:
            broker.update(
                {
                    "state": "running" if self._broker.running else "restarting",
                    "pid": self._broker.pid,
                    "port": self._broker.port,
                    "restarts": self._broker_restarts,
                }
            )
        return {
            "gateway": "running",
            "started_at": self.started_at,
            "devices": dict(sorted(devices.items())),
            "readings_stored": live.readings_stored,
            "storage": live.storage.to_dict(self.clock.now_ms()),
            "duplicates_ignored": live.duplicates,
            "last_seq": live.last_seq,
            "active_alerts": rules.active_alerts,
            "rejections": live.rejections,
            "auth_failures": live.auth_failures,
            "lockouts_active": len(self._tracker.locked_keys()),
            "commits": live.commits,
            "last_commit_at": live.last_commit_at,
            "sync": self._sync_status(),
            "disk": self._disk_status(),
            "broker": broker,
            "mqtt_front": (
                dataclasses.asdict(self._front.stats)
                | {"telemetry": dataclasses.asdict(self._front.tap_counters)}
                if self._front
                else None
            ),
            "ingress": dict(self._ingress.stats) if self._ingress else None,
            "coap": self._coap.summary() if self._coap else None,
            "http": self._http.summary() if self._http else None,
            "connections": self._connections_status(),
            "tls": tls_status(self.tls, self.mqtts_port, self.https_port),
            "store_mailbox": self.store_ref.mailbox_size,
            "rules_notices_skipped": self._commit_feed.skipped,
            "rules_caught_up": self.rules_stats.caught_up,
            "ingest_lag": self.ingest_lag.summary(),
            "auth_events_lost": self.auth_events_lost,
        }

    def readiness(self) -> dict[str, str | None]:
        """/readyz's checks: each None when ready, else why not (edge.status.health)."""
        ingress = self._ingress is not None and self._ingress.connected.is_set()
        if self._broker is None:
            broker = None if ingress else "not connected to the external broker"
        else:
            broker = None if self._broker.running else "the managed Mosquitto is not running"
        storage = self.store_stats.storage
        store = None
        if not storage.available:
            reason = storage.failure.reason if storage.failure is not None else "unknown"
            store = f"the store cannot write ({reason})"
        return {
            "broker": broker,
            "store": store,
            "ingress": None if ingress else "the MQTT ingress is not subscribed",
        }

    def _disk_status(self) -> dict[str, Any]:
        live = self.store_stats
        return {
            **ops.disk_usage(self.cfg),
            "readings_dropped_since_start": live.readings_dropped,
            "readings_pruned_since_start": live.readings_pruned,
        }

    def _sync_status(self) -> dict[str, Any]:
        live = self.store_stats
        if self.sync_stats is not None:
            return self.sync_stats.summary(self.clock.now_ms())
        # Until this gateway is enrolled with a cloud, every stored reading is backlog.
        return {
            "state": "not enrolled" if self._sync_error is None else "error",
            "error": self._sync_error,
            "backlog_readings": live.readings_stored,
            "oldest_unsynced_at": live.oldest_unsynced_at,
            "oldest_unsynced_age_s": (
                None
                if live.oldest_unsynced_at is None
                else max(0, self.clock.now_ms() - live.oldest_unsynced_at) // 1000
            ),
        }

    def _connections_status(self) -> dict[str, Any] | None:
        if self._caps is None:
            return None
        listeners = {
            "mqtt": self._front.listener_stats if self._front is not None else None,
            "http": self._http.listener_stats if self._http is not None else None,
            "admin": self._admin.listener_stats if self._admin is not None else None,
        }
        return {
            **self._caps.to_dict(),
            "fds_open": open_fds(),
            **{name: dataclasses.asdict(st) if st else None for name, st in listeners.items()},
        }

    async def status_page_data(self) -> StatusData:
        """The local status page's facts: live counters plus one store round trip."""
        facts = await self._status_storage.status_facts()
        return StatusData(
            status=await self.status(),
            devices=facts.devices,
            latest=facts.latest,
            rejections=facts.rejections,
            audit=facts.audit,
            alerts=facts.alerts,
            locked=self._tracker.locked_keys(),
        )
