"""The parts a running gateway holds, named once for the modules that act on them.

edge.app.gateway builds and wires them (startup and shutdown); edge.admin.gateway_backend
serves the admin API from them and edge.status.gateway_status reports on them. Both are mixed
into Gateway and read the parts through this base, so the wiring stays in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.actors import ActorRef
from common.clock import Clock

if TYPE_CHECKING:
    from edge.admin.api import AdminApi
    from edge.alerts.rules_actor import CommitFeed, RulesMsg, RulesStats
    from edge.app.config import GatewayConfig
    from edge.ingest.classify import Classifier
    from edge.ingest.coap.ingress import CoapIngress
    from edge.ingest.coap.oscore_contexts import OscoreRegistry
    from edge.ingest.http.ingress import HttpIngress
    from edge.ingest.listener import CapPlan
    from edge.ingest.mqtt.broker import ManagedMosquitto
    from edge.ingest.mqtt.dynsec import DynsecClient
    from edge.ingest.mqtt.front.proxy import MqttFront
    from edge.ingest.mqtt.ingress import MqttIngress
    from edge.security.device_auth import DeviceDirectory
    from edge.security.lockout import LockoutTracker
    from edge.security.tls import GatewayTls
    from edge.storage.actor import StoreMsg
    from edge.storage.client import StoreClient
    from edge.storage.stats import LagWindow, StoreStats
    from edge.sync.actor import SyncStats


class GatewayParts:
    cfg: GatewayConfig
    clock: Clock
    started_at: int
    store_stats: StoreStats  # written by the store actor; read here for display only
    rules_stats: RulesStats  # written by the rules actor; read here for display only
    ingest_lag: LagWindow
    auth_events_lost: int
    sync_stats: SyncStats | None
    _sync_error: str | None
    _store_ref: ActorRef[StoreMsg] | None
    _store_client: StoreClient | None
    _rules_ref: ActorRef[RulesMsg] | None
    _commit_feed: CommitFeed
    _broker: ManagedMosquitto | None
    _broker_restarts: int
    _dynsec: DynsecClient | None
    _ingress: MqttIngress | None
    _front: MqttFront | None
    _directory: DeviceDirectory
    _coap: CoapIngress | None
    _oscore: OscoreRegistry | None
    _http: HttpIngress | None
    _admin: AdminApi | None
    _caps: CapPlan | None
    tls: GatewayTls | None
    _classifier: Classifier
    _tracker: LockoutTracker
    _device_status: dict[str, str]  # device id -> "active" | "revoked"

    @property
    def store_ref(self) -> ActorRef[StoreMsg]:
        assert self._store_ref is not None
        return self._store_ref

    @property
    def store_client(self) -> StoreClient:
        assert self._store_client is not None
        return self._store_client
