"""The running gateway: builds the actor tree and the listeners, runs until told to stop.

Start order (each step needs the one before): store -> rules -> sync -> private broker ->
ingress subscribed -> MQTT front listening -> CoAP -> HTTP -> admin API. Devices reach the
broker only through the front, which takes their telemetry itself (edge.ingest.mqtt.front.
telemetry) and opens only once the ingress session exists, so whatever a device publishes to
the broker (external brokers, other topics) has a subscriber from the first device on. Stop
runs the other way round and flushes the store before DuckDB closes.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from common.actors import (
    ActorRef,
    ActorStopped,
    ChildSpec,
    MailboxFull,
    OverflowPolicy,
    Supervisor,
)
from common.backoff import Backoff, spread
from common.clock import Clock, SystemClock
from common.ports import restartable_port
from common.sd_notify import SdNotifier
from common.validation import ValidationPolicy, device_type_from_dict
from edge.admin.api import AdminApi
from edge.admin.backend import admin_secret, write_run_info
from edge.admin.gateway_backend import CLOUD_TYPES_KEY, GatewayBackend
from edge.alerts.rules_actor import (
    CommitFeed,
    RulesActor,
    RulesMsg,
    RulesStats,
    SecurityLockout,
)
from edge.app.config import GatewayConfig
from edge.app.gateway_tls import gateway_tls, tls_port
from edge.ingest.classify import Classifier
from edge.ingest.coap.ingress import CoapIngress
from edge.ingest.coap.oscore_contexts import OscoreKeystore, OscoreRegistry
from edge.ingest.http.ingress import HttpIngress
from edge.ingest.intake import DeviceIngest
from edge.ingest.listener import CapPlan, plan_caps, raise_nofile, wanted_nofile
from edge.ingest.mqtt.broker import INGRESS_USER, BrokerCredentials, ManagedMosquitto
from edge.ingest.mqtt.dynsec import DynsecClient
from edge.ingest.mqtt.front.proxy import AuthEvent, MqttFront, TelemetryTerms
from edge.ingest.mqtt.ingress import MqttIngress
from edge.security.device_auth import DeviceAuthenticator, DeviceDirectory
from edge.security.lockout import LockoutPolicy, LockoutTracker
from edge.status.gateway_status import GatewayStatus
from edge.storage.actor import (
    RecordAuth,
    SaveAlerts,
    StoreActor,
    StoreMsg,
)
from edge.storage.client import StoreClient
from edge.storage.stats import LagWindow, StoreStats
from edge.storage.store import AuthFailure, GatewayStore
from edge.sync.clock_watch import ClockWatch
from edge.sync.identity import IdentityError, load_identity

if TYPE_CHECKING:
    from aiohttp import web

    from edge.sync.actor import SyncMsg, SyncStats

log = logging.getLogger("iotsphere.gateway")
LOCKOUTS_KEY = "security.lockouts"  # locks in force: {key: wall-clock ms when it ends}


class Gateway(GatewayBackend, GatewayStatus):
    def __init__(self, config: GatewayConfig, clock: Clock | None = None) -> None:
        self.cfg = config
        self.clock: Clock = clock or SystemClock()
        self.started_at = self.clock.now_ms()
        self.ready = asyncio.Event()
        self._stopping = False
        self._store_ref: ActorRef[StoreMsg] | None = None
        self._store_client: StoreClient | None = None  # the store's operations, typed
        self._rules_ref: ActorRef[RulesMsg] | None = None
        self._commit_feed = CommitFeed(self.clock)  # store -> rules, never blocking the store
        self._sync_ref: ActorRef[SyncMsg] | None = None
        self._broker: ManagedMosquitto | None = None
        self._broker_restarts = 0
        self._dynsec: DynsecClient | None = None
        self._ingress: MqttIngress | None = None
        self._front: MqttFront | None = None
        # Token devices (CoAP, HTTP, MQTT token logins): the directory is kept current by
        # add_device/revoke_device, so a revoke takes effect on the next request.
        self._directory = DeviceDirectory()
        self._device_ingest: DeviceIngest | None = None
        self._coap: CoapIngress | None = None
        self._oscore: OscoreRegistry | None = None  # devices' OSCORE contexts (CoAP)
        self._http: HttpIngress | None = None  # device HTTP ingress + local status page
        self._admin: AdminApi | None = None
        self._caps: CapPlan | None = None  # the listeners' connection caps, set by run()
        self.tls = None  # the certificate of the TLS ports (GatewayParts), set by startup
        self._classifier = Classifier(
            config.device_types,
            ValidationPolicy(max_future_skew_ms=int(config.max_future_skew_s * 1000)),
        )
        lk = config.lockout
        self._tracker = LockoutTracker(
            LockoutPolicy(
                max_failures_per_user=lk.max_failures_per_user,
                max_failures_per_address=lk.max_failures_per_address,
                window_s=lk.window_s,
                cooldown_s=lk.cooldown_s,
            ),
            self.clock,
        )
        self.auth_events_lost = 0
        self.ingest_lag = LagWindow()
        # Each written by its own actor only (given here, so they outlive its restarts);
        # status reads them for display.
        self.store_stats = StoreStats()
        self.rules_stats = RulesStats()
        # One boot id per run: clock epochs (readings' receive times) and sync batches carry it.
        self.boot_id = str(uuid.uuid4())
        self._clock_watch = ClockWatch(self.boot_id, self.clock)
        self._device_status: dict[str, str] = {}
        self._mqtt_port = config.mqtt_port
        self.sync_stats: SyncStats | None = None  # set when enrolled
        self._sync_error: str | None = None  # enrolled, but sync could not start

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def mqtt_port(self) -> int:
        """The device-facing MQTT port (stays the same while the front restarts)."""
        return self._mqtt_port

    async def run(self, stop: asyncio.Event) -> None:
        """Start everything, serve until `stop` is set or a part fails, then stop everything."""
        store = GatewayStore(
            self.cfg.db_path,
            memory_limit=self.cfg.duckdb_memory_limit,
            threads=self.cfg.duckdb_threads,
        )
        root = Supervisor("gateway", clock=self.clock)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await self.startup(store, root)
            await self._serve(stop, root, tasks)
        finally:
            await self.shutdown(store, root, tasks)

    async def startup(self, store: GatewayStore, root: Supervisor) -> None:
        """In dependency order: state from the store, the actors, the broker and the MQTT
        ingress, then the listeners devices use, then the admin API."""
        cfg = self.cfg
        # Before Mosquitto starts: it inherits the descriptor limit raised here.
        self._caps = self._size_listeners()
        self.tls = gateway_tls(cfg)  # before any listener: a broken certificate stops here
        devices = self._load_state(store)
        await self._start_actors(root, store)
        await self._start_sync(root)
        host, port, user, password = await self._start_broker(devices)
        if self._broker is not None:
            root.start_task("broker-watch", self._watch_broker)  # restarted if it fails
        self._ingress = MqttIngress(
            host=host,
            port=port,
            username=user,
            password=password,
            store=self.store_ref,
            classifier=self._classifier,
            clock=self.clock,
        )
        # It reconnects by itself; anything else that ends it, the supervisor restarts.
        root.start_task("mqtt-ingress", self._ingress.run)
        await asyncio.wait_for(self._ingress.connected.wait(), 30)
        # One ingest path (and one in-flight bound) for MQTT telemetry, CoAP and HTTP.
        self._device_ingest = DeviceIngest(self.store_ref, self._classifier, self.clock)
        if self._broker is not None:
            self._front = self._new_front(cfg.mqtt_port, host, port)
            await self._front.start()
            self._mqtt_port = self._front.port
        await self._start_coap()
        await self._start_http()
        self._admin = AdminApi(self, admin_secret(cfg.data_dir))
        await self._admin.start()
        write_run_info(cfg.run_dir, self._admin.port)
        self.ready.set()
        # What start-up built lives as long as the process: keep it out of the cyclic
        # collector's generations (fewer, shorter GC pauses on the ingest path).
        gc.freeze()
        log.info(
            "gateway ready: MQTT on %s:%s, CoAP on %s:%s, data in %s",
            cfg.bind,
            self._front.port if self._front else "(external broker)",
            cfg.bind,
            self.coap_port,
            cfg.data_dir,
        )

    def _load_state(self, store: GatewayStore) -> list[dict[str, Any]]:
        """Devices, device types, lockouts and counters as stored; returns the devices."""
        devices = store.devices(include_secrets=True)
        cloud_types = store.kv_get(CLOUD_TYPES_KEY)  # as last fetched: also offline
        if cloud_types:
            self._classifier.set_cloud_types(
                {b["name"]: device_type_from_dict(b) for b in json.loads(cloud_types)}
            )
        for dev in devices:
            if dev["status"] == "active":
                self._classifier.set_device_type(dev["device_id"], dev["type"])
            self._device_status[dev["device_id"]] = dev["status"]
        self._directory.load(devices)
        self._restore_lockouts(store)
        initial = store.stats()  # before the store actor starts: it is the writer after that
        st = self.store_stats
        st.readings_stored = initial["readings_stored"]
        st.last_seq = initial["last_seq"]
        st.rejections = initial["rejections"]
        st.auth_failures = initial["auth_failures"]
        st.oldest_unsynced_at = initial["sync"]["oldest_unsynced_at"]
        return devices

    async def _start_actors(self, root: Supervisor, store: GatewayStore) -> None:
        """The store actor, then the rules actor it feeds."""
        cfg = self.cfg
        self._store_ref = await root.start_child(
            ChildSpec(
                "store",
                lambda: StoreActor(
                    store,
                    max_readings=cfg.batch_max_readings,
                    max_delay_ms=cfg.batch_max_delay_ms,
                    commit_delay_us=cfg.commit_delay_us,
                    commit_siblings=cfg.commit_siblings,
                    on_commit=self._commit_feed,
                    lag=self.ingest_lag,
                    stats=self.store_stats,
                    clock_watch=self._clock_watch,
                    budget=cfg.budget,
                    clock=self.clock,
                ),
                capacity=cfg.ingest_queue,
            )
        )
        self._store_client = StoreClient(self._store_ref)
        self._rules_ref = await root.start_child(
            ChildSpec(
                "rules",
                lambda: RulesActor(
                    self.store_client,
                    self.clock,
                    self._device_type_of,
                    cfg.rule_tick_s,
                    self.rules_stats,
                ),
                capacity=10_000,
            )
        )
        self._commit_feed.rules = self._rules_ref

    async def _serve(
        self, stop: asyncio.Event, root: Supervisor, tasks: list[asyncio.Task[Any]]
    ) -> None:
        """Until `stop` is set, or a background task or the supervisor fails (re-raised)."""
        escalation = asyncio.create_task(root.wait(), name="supervisor")
        tasks.append(escalation)
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]

    async def shutdown(
        self, store: GatewayStore, root: Supervisor, tasks: list[asyncio.Task[Any]]
    ) -> None:
        """The reverse of startup: listeners first, then the actors (the store commits what
        it holds), DuckDB, and the broker last."""
        self._stopping = True
        log.info("gateway stopping: closing listeners, flushing the store")
        (self.cfg.run_dir / "admin.json").unlink(missing_ok=True)
        if self._admin is not None:
            await self._admin.stop()
        if self._front is not None:
            await self._front.stop()
        if self._coap is not None:
            await self._coap.stop()  # answers what awaits a commit while the store runs
        if self._oscore is not None:
            self._oscore.close()  # saves sequence numbers and replay windows exactly
        if self._http is not None:
            await self._http.stop()
        if self._device_ingest is not None:
            self._device_ingest.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await root.stop()  # drains mailboxes: the store commits what it holds
        except Exception:  # stopping goes on (DuckDB, the broker), but not silently
            log.exception("stopping the actors failed; closing the store anyway")
        store.close()
        if self._broker is not None:
            await self._broker.stop()
        log.info("gateway stopped")

    def _size_listeners(self) -> CapPlan:
        """Raise the soft descriptor limit to what the configured caps need (up to the hard
        limit) and size the caps to the limit there is."""
        cfg = self.cfg
        mqtt, http = cfg.mqtt_max_connections, cfg.http_max_connections
        soft, hard = raise_nofile(wanted_nofile(mqtt, http, cfg.fd_reserve))
        plan = plan_caps(soft, cfg.fd_reserve, mqtt, http, cfg.max_connections_per_address)
        say = log.warning if plan.scaled else log.info
        say(
            "connections: descriptor limit %d (hard %d): MQTT up to %d open (%d per address), "
            "HTTP up to %d (%d per address)%s",
            soft, hard, plan.mqtt.max_connections, plan.mqtt.max_per_address,
            plan.http.max_connections, plan.http.max_per_address,
            f"; the configured {mqtt}/{http} need a limit of {plan.wanted_nofile} "
            "(LimitNOFILE in the service unit)" if plan.scaled else "",
        )  # fmt: skip
        return plan

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (the real one when the config asked for 0); None when off."""
        return self._http.summary()["port"] if self._http is not None else None

    async def _start_http(self) -> None:
        """Device HTTP ingress and the local status page on one port, sharing the CoAP
        listener's ingest path and lockout counts (the same DeviceIngest, the same tracker);
        the monitoring endpoints (edge.status.health) on the same port."""
        from edge.status.health import HealthEndpoints
        from edge.status.page import StatusPage

        assert self._device_ingest is not None
        auth = DeviceAuthenticator(
            self._directory, self._tracker, self.clock, self._on_device_auth_event, "http"
        )
        page = StatusPage(self, self.cfg.data_dir, self.clock, audit=self._on_device_auth_event)
        health = HealthEndpoints(self)  # /healthz, /readyz, /metrics: no login

        def routes(app: web.Application) -> None:
            page.install(app)
            health.install(app)

        assert self._caps is not None
        self._http = HttpIngress(
            self.cfg.bind, self.cfg.http_port, auth, self._device_ingest, routes,
            caps=self._caps.http, tls=tls_port(self.tls, self.cfg.https_port),
            plain=self.cfg.plain_http,
        )  # fmt: skip
        await self._http.start()

    @property
    def coap_port(self) -> int | None:
        """The bound CoAP port (the real one when the config asked for 0)."""
        return self._coap.port if self._coap is not None else None

    async def _start_coap(self) -> None:
        """The CoAP listener, sharing the MQTT front's lockout counts (a guesser's address is
        one address whichever protocol it tries)."""
        assert self._device_ingest is not None
        auth = DeviceAuthenticator(
            self._directory, self._tracker, self.clock, self._on_device_auth_event, "coap"
        )
        self._oscore = OscoreRegistry(OscoreKeystore(self.cfg.data_dir))
        self._oscore.load(d for d, state in self._device_status.items() if state == "active")
        self._coap = CoapIngress(
            self.cfg.bind,
            self.cfg.coap_port,
            auth,
            self._device_ingest,
            self.clock,
            oscore=self._oscore,
        )
        await self._coap.start()

    async def _start_sync(self, root: Supervisor) -> None:
        """Start the sync actor when this gateway is enrolled (identity.json in the data dir).

        A broken identity or key is reported in status and the log; the gateway still runs
        and buffers locally (losing the site's readings over a key problem would be worse)."""
        from common.gateway_auth import GatewayKeyError, RequestSigner, load_private_key
        from edge.sync.actor import SyncActor, SyncSettings, SyncStats
        from edge.sync.cloud_client import CloudClient
        from edge.sync.identity import key_path

        cfg = self.cfg
        try:
            identity = load_identity(cfg.data_dir)
            if identity is None:
                return
            key = load_private_key(key_path(cfg.data_dir))
        except (IdentityError, GatewayKeyError) as exc:
            self._sync_error = str(exc)
            log.error("sync disabled: %s", exc)
            return
        signer = RequestSigner(identity.gateway_id, key, self.clock)
        self.sync_stats = stats = SyncStats(identity.gateway_id, identity.cloud_url)
        settings = SyncSettings(
            config_every_s=cfg.sync_config_every_s,
            tick_s=cfg.sync_tick_s,
            batch_max_readings=cfg.sync_batch_max_readings,
            batch_max_age_s=cfg.sync_batch_max_age_s,
            backoff_base_s=cfg.sync_backoff_base_s,
            backoff_max_s=cfg.sync_backoff_max_s,
        )
        boot_id, timeout = self.boot_id, cfg.sync_timeout_s
        self._sync_ref = await root.start_child(
            ChildSpec(
                "sync",
                lambda: SyncActor(
                    self.store_client,
                    lambda: CloudClient(identity.cloud_url, signer, timeout, identity.cloud_ca_pem),
                    self.clock,
                    settings,
                    stats,
                    boot_id=boot_id,
                    apply_config=self.apply_cloud_config,
                ),
                capacity=4,
                policy=OverflowPolicy.DROP_NEWEST,  # ticks only: a missed one changes nothing
            )
        )
        log.info("sync: enrolled as %s, sending to %s", identity.gateway_id, identity.cloud_url)

    async def _start_broker(self, devices: list[dict[str, Any]]) -> tuple[str, int, str, str]:
        cfg = self.cfg
        if cfg.broker_url is not None:
            url = urlsplit(cfg.broker_url)
            return (
                url.hostname or "127.0.0.1",
                url.port or 1883,
                unquote(url.username or ""),
                unquote(url.password or ""),
            )
        creds = BrokerCredentials.generate()
        # The watcher restarts Mosquitto on this port while the ingress keeps connecting to
        # it: a port below the ephemeral range cannot be taken meanwhile (common.ports).
        port = cfg.broker_port or restartable_port()
        self._broker = ManagedMosquitto(cfg.broker_dir, port, cfg.broker_max_queued)
        self._broker.prepare(devices, creds)
        await self._broker.start()
        self._broker_creds = creds
        self._dynsec = DynsecClient("127.0.0.1", port, creds.admin_password)
        return "127.0.0.1", port, INGRESS_USER, creds.ingress_password

    async def _watch_broker(self) -> None:
        """Restart the private broker whenever it dies, with backoff; DuckDB rebuilds its auth."""
        assert self._broker is not None
        backoff = Backoff(0.5, 30.0, spread())
        while True:
            started = self.clock.monotonic()
            code = await self._broker.wait()
            if self._stopping:
                return
            self._broker_restarts += 1
            log.error(
                "mosquitto exited with %s; restarting (restart #%d)", code, self._broker_restarts
            )
            # Devices must not reach the new broker before the ingress has subscribed again:
            # a QoS 1 message accepted with no subscriber is acknowledged and then dropped.
            if self._ingress is not None:
                self._ingress.connected.clear()
            if self._front is not None:
                await self._front.stop()
            if self.clock.monotonic() - started > 60:
                backoff.reset()  # it ran a while: this is a new failure, not a crash loop
            await asyncio.sleep(backoff.next_s())
            devices = await self.store_client.devices(include_secrets=True)
            self._broker.prepare(devices, self._broker_creds)
            await self._broker.start()
            if self._ingress is not None:
                await self._ingress.connected.wait()
            if self._front is not None:
                self._front = self._new_front(self._mqtt_port, "127.0.0.1", self._broker.port)
                await self._front.start()
                log.info("MQTT front open again after the broker restart")

    def _new_front(self, port: int, broker_host: str, broker_port: int) -> MqttFront:
        assert self._device_ingest is not None and self._ingress is not None
        assert self._caps is not None
        token_auth = DeviceAuthenticator(
            self._directory, self._tracker, self.clock, self._on_device_auth_event, "mqtt"
        )
        return MqttFront(
            self.cfg.bind,
            port,
            broker_host,
            broker_port,
            self._tracker,
            self._on_auth_event,
            self.clock,
            caps=self._caps.mqtt,
            tls=tls_port(self.tls, self.cfg.mqtts_port),
            plain=self.cfg.plain_mqtt,
            telemetry=TelemetryTerms(
                self._device_ingest,
                self._ingress.reply,
                token_auth,
                # A read-only view of the store's own health: the front refuses early while
                # storage is down (saves a device a round trip); the store actor still
                # decides, refusing any Ingest while unavailable.
                storing=self.store_stats.storing,
            ),
        )

    # -- wiring between parts ----------------------------------------------------------------

    def _device_type_of(self, device_id: str) -> str | None:
        return self._classifier.device_type(device_id)

    def _on_auth_event(self, event: AuthEvent) -> None:
        """The MQTT front's auth event: recorded as the CoAP/HTTP ones are."""
        failure = AuthFailure(
            at=event.at_ms,
            kind=event.kind,
            transport="mqtt",
            address=event.address,
            username=event.username,
            client_id=event.client_id,
            reason=event.reason if event.key is None else f"{event.reason} ({event.key})",
        )
        self._on_device_auth_event(failure, event.key if event.kind == "lockout" else None)

    def _restore_lockouts(self, store: GatewayStore) -> None:
        """Locks in force at the last stop hold after a restart: a restart must not forgive a
        guesser (nor a power cut, which is why every new lock is saved when it happens)."""
        saved = store.kv_get(LOCKOUTS_KEY)
        if not saved:
            return
        try:
            locks = json.loads(saved)
            if not isinstance(locks, dict):
                raise ValueError("not an object")
            held = self._tracker.restore(
                {str(k): int(v) for k, v in locks.items()}, self.clock.now_ms()
            )
        except (ValueError, TypeError) as exc:
            log.error("security: saved lockouts unreadable (%s); starting without them", exc)
            return
        if held:
            log.warning("security: %d lockout(s) from before the restart still in force", held)

    def _save_lockouts(self) -> None:
        doc = json.dumps(self._tracker.locks_until(self.clock.now_ms()), separators=(",", ":"))
        try:
            self.store_ref.tell(SaveAlerts([], {LOCKOUTS_KEY: doc}))
        except (MailboxFull, ActorStopped):
            log.error("security: lockouts not saved (store busy); a restart would forget them")

    def _on_device_auth_event(self, failure: AuthFailure, locked_key: str | None) -> None:
        """Audit row (and, for a new lockout, the saved locks and the security alert) from
        CoAP/HTTP ingress, the status page login and, through _on_auth_event, the MQTT front."""
        if locked_key is not None:
            self._save_lockouts()
        if locked_key is not None and self._rules_ref is not None:
            log.warning("security: %s locked out after repeated failures", locked_key)
            try:
                self._rules_ref.tell(
                    SecurityLockout(locked_key, failure.at, self.cfg.lockout.cooldown_s)
                )
            except MailboxFull:
                log.error("rules mailbox full: security alert for %s not raised", locked_key)
        try:
            self.store_ref.tell(RecordAuth(failure))
        except MailboxFull:
            self.auth_events_lost += 1
            log.error(
                "audit: store mailbox full, auth event not recorded (%d lost)",
                self.auth_events_lost,
            )


def run_gateway(cfg: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; raises on a failure that stopped the gateway."""

    notifier = SdNotifier.from_env()  # before Mosquitto starts: it must not inherit it

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(cfg)
        # READY=1 when startup() has set `ready` (listeners and broker up), WATCHDOG=1 from
        # this loop, STOPPING=1 on SIGTERM (systemd Type=notify; nothing without NOTIFY_SOCKET)
        follow = asyncio.create_task(notifier.follow(gateway.ready, stop, "gateway ready"))
        try:
            await gateway.run(stop)
        finally:
            follow.cancel()

    asyncio.run(main())
