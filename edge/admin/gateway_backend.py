"""The admin API's operations on a running gateway (edge.admin.backend.AdminBackend): devices,
rules, alerts, the audit, and the configuration the cloud sends. Each changes the store first
(through the store actor), then the parts that hold the same facts in memory."""

from __future__ import annotations

import json
import logging
from typing import Any

from common.alerts import AlertEvent
from common.validation import device_type_from_dict
from edge.admin import ops
from edge.admin.backend import BackendError, snapshot_path
from edge.alerts.rules_actor import ChangeAlert, ReloadRules
from edge.app.parts import GatewayParts
from edge.ingest.coap.oscore_contexts import OscoreError
from edge.ingest.mqtt.dynsec import DynsecError
from edge.storage.interfaces import AdminStorage
from edge.sync.cloud_config import parse_cloud_config

log = logging.getLogger("iotsphere.gateway")
CLOUD_TYPES_KEY = "cloud.device_types"  # device types from the cloud config (JSON list)


class GatewayBackend(GatewayParts):
    @property
    def _admin_storage(self) -> AdminStorage:
        """The store, narrowed to what the admin operations need."""
        return self.store_client

    async def add_device(
        self, device_id: str, device_type: str | None, oscore: bool = False
    ) -> dict[str, Any]:
        try:
            result = await self._admin_storage.add_device(device_id, device_type)
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
        return await self._admin_storage.devices()

    async def snapshot_store(self) -> dict[str, Any]:
        """A consistent copy of the store for `gateway backup`, made between two commits."""
        dest = snapshot_path(self.cfg)
        return {"path": str(dest), "schema_version": await self._admin_storage.snapshot(dest)}

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
            result = await self._admin_storage.revoke_device(device_id)
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
            rule = await self._admin_storage.add_rule(body)
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
        at most one idempotent document. A malformed document (CloudConfigError) changes
        nothing.
        """
        from edge.sync.actor import CONFIG_VERSION_KEY

        config = parse_cloud_config(doc, version)
        now = self.clock.now_ms()
        await self._admin_storage.save_rules(
            config.rules, config.deleted_rules, {CONFIG_VERSION_KEY: str(config.version)}, now
        )
        if (config.rules or config.deleted_rules) and self._rules_ref is not None:
            await self._rules_ref.send(ReloadRules())
            log.info(
                "cloud config v%d: %d rules updated, %d deleted",
                config.version,
                len(config.rules),
                len(config.deleted_rules),
            )
        if config.device_types is not None:
            await self._apply_cloud_types(list(config.device_types))
        for device_id in config.revoked_devices:
            if self._device_status.get(device_id) == "active":
                await self.revoke_device(device_id)
        for alert_id in config.alert_acks:
            await self.change_alert(alert_id, AlertEvent.ACK)
        return config.version

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
        await self._admin_storage.kv_set(CLOUD_TYPES_KEY, raw)

    async def list_rules(self) -> list[dict[str, Any]]:
        return await self._admin_storage.rules()

    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self._admin_storage.readings(device_id, metric, limit)

    async def alerts(self, state: str | None) -> list[dict[str, Any]]:
        rows = await self._admin_storage.alerts(state)
        return [a.to_dict() for a in rows]

    async def change_alert(self, alert_id: str, event: AlertEvent) -> dict[str, Any] | None:
        """The alert after the change, or None when it is not open here."""
        assert self._rules_ref is not None
        result: dict[str, Any] | None = await self._rules_ref.ask(ChangeAlert(alert_id, event))  # type: ignore[assignment]
        return result

    async def errors(self, limit: int) -> list[dict[str, Any]]:
        return await self._admin_storage.rejections(limit)

    async def audit(self, limit: int) -> list[dict[str, Any]]:
        return await self._admin_storage.auth_failures(limit)
