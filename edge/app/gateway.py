"""The running gateway: builds the actor tree and the listeners, runs until told to stop.

Start order (each step needs the one before): store -> rules -> private broker -> ingress
subscribed -> MQTT front listening -> admin API. Devices can reach the broker only through the
front, and the front opens only once the ingress session exists, so the broker queues every
accepted reading for the gateway from the first device on. Stop runs the other way round and
flushes the store before DuckDB closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import random
import signal
import time
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
from common.alerts import AlertEvent
from common.clock import Clock, SystemClock
from common.rules import Rule, parse_rule
from common.validation import ValidationPolicy, device_type_from_dict
from edge.admin import ops
from edge.admin.api import AdminApi
from edge.admin.backend import BackendError, admin_secret, write_run_info
from edge.alerts.rules_actor import (
    ChangeAlert,
    CommitFeed,
    ReloadRules,
    RulesActor,
    RulesMsg,
    SecurityLockout,
)
from edge.app.config import GatewayConfig
from edge.ingest.classify import Classifier
from edge.ingest.coap.ingress import CoapIngress
from edge.ingest.coap.oscore_contexts import OscoreError, OscoreKeystore, OscoreRegistry
from edge.ingest.http.ingress import HttpIngress
from edge.ingest.intake import DeviceIngest
from edge.ingest.listener import CapPlan, open_fds, plan_caps, raise_nofile, wanted_nofile
from edge.ingest.mqtt.broker import INGRESS_USER, BrokerCredentials, ManagedMosquitto, free_port
from edge.ingest.mqtt.dynsec import DynsecClient, DynsecError
from edge.ingest.mqtt.front.proxy import AuthEvent, MqttFront, TelemetryTerms
from edge.ingest.mqtt.ingress import MqttIngress
from edge.security.device_auth import DeviceAuthenticator, DeviceDirectory
from edge.security.lockout import LockoutPolicy, LockoutTracker
from edge.status.view import StatusData
from edge.storage.actor import (
    LagWindow,
    LiveStats,
    RecordAuth,
    SaveAlerts,
    StoreActor,
    StoreMsg,
    call,
)
from edge.storage.store import AuthFailure, GatewayStore
from edge.sync.clock_watch import ClockWatch
from edge.sync.identity import IdentityError, load_identity

if TYPE_CHECKING:
    from edge.sync.actor import SyncMsg, SyncStats

log = logging.getLogger("iotsphere.gateway")
CLOUD_TYPES_KEY = "cloud.device_types"  # device types from the cloud config (JSON list)
LOCKOUTS_KEY = "security.lockouts"  # locks in force: {key: wall-clock ms when it ends}


class Gateway:
    def __init__(self, config: GatewayConfig, clock: Clock | None = None) -> None:
        self.cfg = config
        self.clock: Clock = clock or SystemClock()
        self.started_at = self.clock.now_ms()
        self.ready = asyncio.Event()
        self._stopping = False
        self._store_ref: ActorRef[StoreMsg] | None = None
        self._rules_ref: ActorRef[RulesMsg] | None = None
        self._commit_feed = CommitFeed()  # store -> rules, never blocking the store
        self._sync_ref: ActorRef[SyncMsg] | None = None
        self._broker: ManagedMosquitto | None = None
        self._broker_restarts = 0
        self._dynsec: DynsecClient | None = None
        self._ingress: MqttIngress | None = None
        self._front: MqttFront | None = None
        # Token-in-URL devices (CoAP now, HTTP later): the directory is kept current by
        # add_device/revoke_device, so a revoke takes effect on the next request.
        self._directory = DeviceDirectory()
        self._device_ingest: DeviceIngest | None = None
        self._coap: CoapIngress | None = None
        self._oscore: OscoreRegistry | None = None  # devices' OSCORE contexts (CoAP)
        self._http: HttpIngress | None = None  # device HTTP ingress + local status page
        self._admin: AdminApi | None = None
        self._caps: CapPlan | None = None  # the listeners' connection caps, set by run()
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
        self.live = LiveStats()
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

    @property
    def store_ref(self) -> ActorRef[StoreMsg]:
        assert self._store_ref is not None
        return self._store_ref

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        store = GatewayStore(
            cfg.db_path, memory_limit=cfg.duckdb_memory_limit, threads=cfg.duckdb_threads
        )
        root = Supervisor("gateway", clock=self.clock)
        tasks: list[asyncio.Task[Any]] = []
        admin: AdminApi | None = None
        try:
            # Before Mosquitto starts: it inherits the descriptor limit raised here.
            self._caps = self._size_listeners()
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
            initial = store.stats()
            self.live.readings_stored = initial["readings_stored"]
            self.live.last_seq = initial["last_seq"]
            self.live.rejections = initial["rejections"]
            self.live.auth_failures = initial["auth_failures"]
            self.live.active_alerts = initial["active_alerts"]
            self.live.oldest_unsynced_at = initial["sync"]["oldest_unsynced_at"]
            self._store_ref = await root.start_child(
                ChildSpec(
                    "store",
                    lambda: StoreActor(
                        store,
                        max_readings=cfg.batch_max_readings,
                        max_delay_ms=cfg.batch_max_delay_ms,
                        on_commit=self._commit_feed,
                        lag=self.ingest_lag,
                        stats=self.live,
                        clock_watch=self._clock_watch,
                        budget=cfg.budget,
                    ),
                    capacity=cfg.ingest_queue,
                )
            )
            self._rules_ref = await root.start_child(
                ChildSpec(
                    "rules",
                    lambda: RulesActor(
                        self.store_ref,
                        self.clock,
                        self._device_type_of,
                        cfg.rule_tick_s,
                        self.live,
                    ),
                    capacity=10_000,
                )
            )
            self._commit_feed.rules = self._rules_ref
            await self._start_sync(root)
            host, port, user, password = await self._start_broker(devices)
            if self._broker is not None:
                tasks.append(asyncio.create_task(self._watch_broker(), name="broker-watch"))
            self._ingress = MqttIngress(
                host=host,
                port=port,
                username=user,
                password=password,
                store=self.store_ref,
                classifier=self._classifier,
                clock=self.clock,
            )
            tasks.append(asyncio.create_task(self._ingress.run(), name="mqtt-ingress"))
            await asyncio.wait_for(self._ingress.connected.wait(), 30)
            # One ingest path (and one in-flight bound) for MQTT telemetry, CoAP and HTTP.
            self._device_ingest = DeviceIngest(self.store_ref, self._classifier, self.clock)
            if self._broker is not None:
                self._front = self._new_front(cfg.mqtt_port, host, port)
                await self._front.start()
                self._mqtt_port = self._front.port
            await self._start_coap()
            await self._start_http()
            admin = self._admin = AdminApi(self, admin_secret(cfg.data_dir))
            await admin.start()
            write_run_info(cfg.run_dir, admin.port)
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
            escalation = asyncio.create_task(root.wait(), name="supervisor")
            tasks.append(escalation)
            stopper = asyncio.create_task(stop.wait(), name="stop")
            done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            self._stopping = True
            log.info("gateway stopping: closing listeners, flushing the store")
            (cfg.run_dir / "admin.json").unlink(missing_ok=True)
            if admin is not None:
                await admin.stop()
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
            with contextlib.suppress(Exception):
                await root.stop()  # drains mailboxes: the store commits what it holds
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

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (the real one when the config asked for 0)."""
        return self._http.port if self._http is not None else None

    async def _start_http(self) -> None:
        """Device HTTP ingress and the local status page on one port, sharing the CoAP
        listener's ingest path and lockout counts (the same DeviceIngest, the same tracker)."""
        from edge.status.page import StatusPage

        assert self._device_ingest is not None
        auth = DeviceAuthenticator(
            self._directory, self._tracker, self.clock, self._on_device_auth_event, "http"
        )
        page = StatusPage(self, self.cfg.data_dir, self.clock, audit=self._on_device_auth_event)
        assert self._caps is not None
        self._http = HttpIngress(
            self.cfg.bind, self.cfg.http_port, auth, self._device_ingest, page.install,
            caps=self._caps.http,
        )  # fmt: skip
        await self._http.start()

    async def status_page_data(self) -> StatusData:
        """The local status page's facts: live counters plus one store round trip."""

        def gather(s: GatewayStore) -> tuple[Any, ...]:
            return (
                s.devices(),
                s.latest_values(),
                s.rejections(20),
                s.auth_failures(20),
                [a.to_dict() for state in ("active", "acknowledged") for a in s.alerts(state)],
            )

        devices, latest, rejections, audit, alerts = await call(self.store_ref, gather)
        return StatusData(
            status=await self.status(),
            devices=devices,
            latest=latest,
            rejections=rejections,
            audit=audit,
            alerts=alerts,
            locked=self._tracker.locked_keys(),
        )

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
        boot_id = self.boot_id
        self._sync_ref = await root.start_child(
            ChildSpec(
                "sync",
                lambda: SyncActor(
                    self.store_ref,
                    lambda: CloudClient(identity.cloud_url, signer, cfg.sync_timeout_s),
                    self.clock,
                    settings,
                    stats,
                    self.live,
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
        port = cfg.broker_port or free_port()
        self._broker = ManagedMosquitto(cfg.broker_dir, port, cfg.broker_max_queued)
        self._broker.prepare(devices, creds)
        await self._broker.start()
        self._broker_creds = creds
        self._dynsec = DynsecClient("127.0.0.1", port, creds.admin_password)
        return "127.0.0.1", port, INGRESS_USER, creds.ingress_password

    async def _watch_broker(self) -> None:
        """Restart the private broker whenever it dies, with backoff; DuckDB rebuilds its auth."""
        assert self._broker is not None
        delay = 0.5
        while True:
            started = time.monotonic()
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
            if time.monotonic() - started > 60:
                delay = 0.5
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 30.0)
            devices = await call(self.store_ref, lambda s: s.devices(include_secrets=True))
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
            telemetry=TelemetryTerms(
                self._device_ingest,
                self._ingress.reply,
                token_auth,
                storing=lambda: self.live.storage.available,
            ),
        )

    # -- wiring between parts ----------------------------------------------------------------

    def _device_type_of(self, device_id: str) -> str | None:
        return self._classifier.device_type(device_id)

    def _on_auth_event(self, event: AuthEvent) -> None:
        failure = AuthFailure(
            at=event.at_ms,
            kind=event.kind,
            transport="mqtt",
            address=event.address,
            username=event.username,
            client_id=event.client_id,
            reason=event.reason if event.key is None else f"{event.reason} ({event.key})",
        )
        if event.kind == "lockout" and event.key is not None:
            self._save_lockouts()
        if event.kind == "lockout" and event.key is not None and self._rules_ref is not None:
            log.warning("security: %s locked out after repeated failures", event.key)
            try:
                self._rules_ref.tell(
                    SecurityLockout(event.key, event.at_ms, self.cfg.lockout.cooldown_s)
                )
            except MailboxFull:
                log.error("rules mailbox full: security alert for %s not raised", event.key)
        try:
            self.store_ref.tell(RecordAuth(failure))
        except MailboxFull:
            self.auth_events_lost += 1
            log.error(
                "audit: store mailbox full, auth event not recorded (%d lost)",
                self.auth_events_lost,
            )

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
        """Audit row (and, for a new lockout, the security alert) from CoAP/HTTP ingress."""
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

    # -- AdminBackend ------------------------------------------------------------------------

    async def add_device(
        self, device_id: str, device_type: str | None, oscore: bool = False
    ) -> dict[str, Any]:
        try:
            result = await call(self.store_ref, lambda s: ops.add_device(s, device_id, device_type))
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc
        self._classifier.set_device_type(device_id, device_type)
        self._device_status[device_id] = "active"
        self._directory.add_with_token(device_id, device_type, result["token"])
        if oscore:
            result["oscore"] = self._new_oscore_context(device_id)
        else:
            self._drop_oscore_context(device_id)  # a re-added device starts without one
        if self._dynsec is not None:
            try:
                await self._dynsec.add_device(device_id, result["token"])
            except (DynsecError, OSError, Exception) as exc:
                # Stored already: the broker gets it from DuckDB at its next start.
                log.error("broker: could not provision %s now: %s", device_id, exc)
                result["broker"] = "pending (applied at the next broker start)"
        return result

    async def list_devices(self) -> list[dict[str, Any]]:
        return await call(self.store_ref, lambda s: s.devices())

    def _new_oscore_context(self, device_id: str) -> dict[str, str]:
        """The device's side of a new OSCORE context (the gateway's side is live at once)."""
        if self._oscore is None:
            raise BackendError("the CoAP listener is not running; no OSCORE context created")
        try:
            return self._oscore.create(device_id).to_json()
        except OscoreError as exc:
            raise BackendError(
                f"device {device_id} added, but its OSCORE context was not: {exc}; "
                "revoke it and add it again"
            ) from exc

    def _drop_oscore_context(self, device_id: str) -> None:
        if self._oscore is None:
            return
        try:
            self._oscore.remove(device_id)  # unloaded at once, whatever the disk says
        except OscoreError as exc:
            log.error("OSCORE: %s (an inactive device's context goes at the next start)", exc)

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        try:
            result = await call(self.store_ref, lambda s: ops.revoke_device(s, device_id))
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc
        self._device_status[device_id] = "revoked"
        self._classifier.forget(device_id)
        self._directory.revoke(device_id)
        self._drop_oscore_context(device_id)
        if self._front is not None:
            self._front.drop_device(device_id)
        if self._dynsec is not None:
            try:
                await self._dynsec.remove_device(device_id)
            except Exception as exc:
                log.error("broker: could not remove %s now: %s; restarting broker", device_id, exc)
                if self._broker is not None:
                    await self._broker.stop()  # the watcher restarts it from DuckDB
        return result

    async def add_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            rule = await call(self.store_ref, lambda s: ops.add_rule(s, body))
        except ops.OpError as exc:
            raise BackendError(str(exc)) from exc
        if self._rules_ref is not None:
            await self._rules_ref.send(ReloadRules())
        return rule

    async def apply_cloud_config(self, version: int, doc: dict[str, Any]) -> int:
        """Apply configuration changed in the cloud since `version`; returns the new version.

        Cloud rules are stored like local ones (so they are evaluated offline too), deleted
        ones removed; devices revoked centrally are revoked here; alerts acknowledged or
        resolved centrally follow. The version is saved with the rules, so a crash re-applies
        at most one idempotent document.
        """
        from edge.sync.actor import CONFIG_VERSION_KEY

        new_version = int(doc.get("version", version))
        now = self.clock.now_ms()
        rules: list[Rule] = []
        deleted: list[str] = []
        for body in doc.get("rules", []):
            if body.get("deleted"):
                deleted.append(str(body["id"]))
                continue
            fields = {k: v for k, v in body.items() if k not in ("id", "version", "deleted")}
            rules.append(parse_rule(fields, id=str(body["id"]), version=int(body["version"])))

        def save(store: GatewayStore) -> None:
            for rule in rules:
                store.save_rule(rule.id, rule.to_dict(), rule.version, now)
            for rule_id in deleted:
                store.delete_rule(rule_id)
            store.kv_set(CONFIG_VERSION_KEY, str(new_version))

        await call(self.store_ref, save)
        if (rules or deleted) and self._rules_ref is not None:
            await self._rules_ref.send(ReloadRules())
            log.info(
                "cloud config v%d: %d rules updated, %d deleted",
                new_version,
                len(rules),
                len(deleted),
            )
        if "device_types" in doc:
            await self._apply_cloud_types(doc["device_types"])
        for device_id in doc.get("revoked_devices", []):
            if self._device_status.get(device_id) == "active":
                await self.revoke_device(device_id)
        for alert_id in doc.get("alert_acks", []):
            await self.change_alert(str(alert_id), AlertEvent.ACK)
        return new_version

    async def _apply_cloud_types(self, bodies: list[dict[str, Any]]) -> None:
        """Device types from the cloud: validated (a bad one is logged and skipped, the others
        apply), kept in DuckDB so they hold after a restart while offline."""
        types = {}
        for body in bodies:
            try:
                spec = device_type_from_dict(body)
            except ValueError as exc:
                log.error("cloud config: device type skipped: %s", exc)
                continue
            types[spec.name] = spec
        self._classifier.set_cloud_types(types)
        raw = json.dumps([b for b in bodies if b.get("name") in types], sort_keys=True)
        await call(self.store_ref, lambda s: s.kv_set(CLOUD_TYPES_KEY, raw))

    async def list_rules(self) -> list[dict[str, Any]]:
        return await call(self.store_ref, lambda s: s.rules())

    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await call(
            self.store_ref, lambda s: s.readings(device_id=device_id, metric=metric, limit=limit)
        )

    async def alerts(self, state: str | None) -> list[dict[str, Any]]:
        rows = await call(self.store_ref, lambda s: s.alerts(state))
        return [a.to_dict() for a in rows]

    async def change_alert(self, alert_id: str, event: AlertEvent) -> dict[str, Any] | None:
        """The alert after the change, or None when it is not open here."""
        assert self._rules_ref is not None
        result: dict[str, Any] | None = await self._rules_ref.ask(ChangeAlert(alert_id, event))  # type: ignore[assignment]
        return result

    async def errors(self, limit: int) -> list[dict[str, Any]]:
        return await call(self.store_ref, lambda s: s.rejections(limit))

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return await call(self.store_ref, lambda s: s.auth_failures(limit))

    async def status(self) -> dict[str, Any]:
        """Answered from live counters, never queued behind ingest (it must work under load)."""
        live = self.live
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
            "active_alerts": live.active_alerts,
            "rejections": live.rejections,
            "auth_failures": live.auth_failures,
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
            "store_mailbox": self.store_ref.mailbox_size,
            "rules_notices_skipped": self._commit_feed.skipped,
            "ingest_lag": self.ingest_lag.summary(),
            "auth_events_lost": self.auth_events_lost,
        }

    def _disk_status(self) -> dict[str, Any]:
        live = self.live
        return {
            **ops.disk_usage(self.cfg),
            "readings_dropped_since_start": live.readings_dropped,
            "readings_pruned_since_start": live.readings_pruned,
        }

    def _sync_status(self) -> dict[str, Any]:
        live = self.live
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


def run_gateway(cfg: GatewayConfig) -> None:
    """Run until SIGINT/SIGTERM; raises on a failure that stopped the gateway."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(cfg).run(stop)

    asyncio.run(main())
