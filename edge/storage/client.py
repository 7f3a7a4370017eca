"""The store actor's typed client: one method per operation the other parts use.

Every read and write goes through the store actor (DuckDB keeps one owner). `Call` is the
transport for reads and administrative writes: a function run on the store's thread, built
here and nowhere else, so a caller names an operation and cannot run arbitrary code on the
store. What a consumer needs is a Protocol in edge.storage.interfaces; each consumer's
constructor takes its own, so mypy proves it uses nothing else.

A method that combines several reads (`batch_rows`, `status_facts`) stays one ask: one trip
to the store thread, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from common.actors import ActorRef
from common.model import Reading
from common.rules import Rule
from edge.admin import ops
from edge.storage.actor import (
    Call,
    CallFailed,
    CallOk,
    ProtectThrough,
    SaveAlerts,
    StoreMsg,
    StoreState,
    StoreView,
)
from edge.storage.store import AlertRow, GatewayStore
from edge.sync.batch_rows import BatchRows, read_batch_rows

T = TypeVar("T")


async def call(
    ref: ActorRef[StoreMsg],
    fn: Callable[[GatewayStore], T],
    protects: Callable[[T], int] | None = None,
) -> T:
    """Run fn on the store actor; its exceptions reach the caller without crashing the actor.
    The transport of StoreClient (and of tests that look into the store); no other caller.
    `protects`: see Call."""
    reply = await ref.ask(Call(fn, protects))
    if isinstance(reply, CallFailed):
        raise reply.error
    assert isinstance(reply, CallOk)
    value: T = reply.value
    return value


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """What the local status page reads from the store, in one trip."""

    devices: list[dict[str, Any]]
    latest: dict[str, dict[str, tuple[int, Any]]]
    rejections: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    alerts: list[dict[str, Any]]


def _status_facts(s: GatewayStore) -> StatusFacts:
    return StatusFacts(
        devices=s.devices(),
        latest=s.latest_values(),
        rejections=s.rejections(20),
        audit=s.auth_failures(20),
        alerts=[a.to_dict() for state in ("active", "acknowledged") for a in s.alerts(state)],
    )


def _save_rules(
    s: GatewayStore, rules: Sequence[Rule], deleted: Sequence[str], kv: dict[str, str], now: int
) -> None:
    for rule in rules:
        s.save_rule(rule.id, rule.to_dict(), rule.version, now)
    for rule_id in deleted:
        s.delete_rule(rule_id)
    for key, value in kv.items():
        s.kv_set(key, value)


class StoreClient:
    """The store actor, by operation. Satisfies every Protocol in edge.storage.interfaces."""

    def __init__(self, ref: ActorRef[StoreMsg]) -> None:
        self._ref = ref

    # -- messages of their own ----------------------------------------------------------------

    async def state(self) -> StoreView:
        """The last committed seq and the storage health, answered from the actor's memory."""
        view = await self._ref.ask(StoreState())
        assert isinstance(view, StoreView)
        return view

    async def save_alerts(self, alerts: list[AlertRow], kv: dict[str, str]) -> None:
        await self._ref.send(SaveAlerts(alerts, kv))

    async def protect_through(self, seq: int) -> None:
        """The disk cap keeps readings up to seq (a batch with them is on its way)."""
        await self._ref.send(ProtectThrough(seq))

    # -- reads ----------------------------------------------------------------------------------

    async def kv_get(self, key: str) -> str | None:
        return await call(self._ref, lambda s: s.kv_get(key))

    async def last_seq(self) -> int:
        return await call(self._ref, lambda s: s.last_seq())

    async def watched_readings_after(
        self, seq: int, limit: int, metrics: frozenset[str]
    ) -> tuple[int, list[Reading]]:
        return await call(self._ref, lambda s: s.watched_readings_after(seq, limit, metrics))

    async def rules(self) -> list[dict[str, Any]]:
        return await call(self._ref, lambda s: s.rules())

    async def alerts(self, state: str | None = None) -> list[AlertRow]:
        return await call(self._ref, lambda s: s.alerts(state))

    async def devices(self, *, include_secrets: bool = False) -> list[dict[str, Any]]:
        return await call(self._ref, lambda s: s.devices(include_secrets=include_secrets))

    async def readings(
        self, device_id: str | None, metric: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await call(
            self._ref, lambda s: s.readings(device_id=device_id, metric=metric, limit=limit)
        )

    async def rejections(self, limit: int) -> list[dict[str, Any]]:
        return await call(self._ref, lambda s: s.rejections(limit))

    async def auth_failures(self, limit: int) -> list[dict[str, Any]]:
        return await call(self._ref, lambda s: s.auth_failures(limit))

    async def status_facts(self) -> StatusFacts:
        return await call(self._ref, _status_facts)

    async def sync_cursor(self) -> tuple[int, int]:
        return await call(self._ref, lambda s: s.sync_cursor())

    async def auth_sync_cursor(self) -> int:
        return await call(self._ref, lambda s: s.auth_sync_cursor())

    async def sync_backlog(self, after_seq: int) -> tuple[int, int | None]:
        return await call(self._ref, lambda s: s.sync_backlog(after_seq))

    async def batch_rows(
        self, cursor: tuple[int, int], auth_cursor: int, max_readings: int
    ) -> BatchRows:
        return await call(
            self._ref,
            lambda s: read_batch_rows(s, cursor, auth_cursor, max_readings),
            protects=_last_seq,
        )

    async def snapshot(self, dest: Path) -> int:
        """A consistent copy of the database at dest, with everything received before this
        call committed in it (a Call flushes first); returns its schema version."""
        return await call(self._ref, lambda s: s.snapshot(dest))

    # -- writes ---------------------------------------------------------------------------------

    async def kv_set(self, key: str, value: str) -> None:
        await call(self._ref, lambda s: s.kv_set(key, value))

    async def save_sync_cursor(
        self,
        cursor: tuple[int, int],
        at_ms: int,
        auth_seq: int | None,
        devices: str | None,
        rules: str | None = None,
    ) -> None:
        await call(
            self._ref,
            lambda s: s.save_sync_cursor(cursor[0], cursor[1], at_ms, auth_seq, devices, rules),
        )

    async def save_sync_error(self, message: str, at_ms: int) -> None:
        await call(self._ref, lambda s: s.save_sync_error(message, at_ms))

    async def set_epoch_skew(self, boot_id: str, skew_ms: int) -> None:
        await call(self._ref, lambda s: s.set_epoch_skew(boot_id, skew_ms))

    async def add_device(self, device_id: str, device_type: str | None) -> dict[str, Any]:
        """Raises ops.OpError when refused (a bad id, a known device)."""
        return await call(self._ref, lambda s: ops.add_device(s, device_id, device_type))

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        return await call(self._ref, lambda s: ops.revoke_device(s, device_id))

    async def add_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return await call(self._ref, lambda s: ops.add_rule(s, body))

    async def save_rules(
        self, rules: Sequence[Rule], deleted: Sequence[str], kv: dict[str, str], now_ms: int
    ) -> None:
        """Rules saved and deleted and kv set, in one trip (the cloud configuration)."""
        await call(self._ref, lambda s: _save_rules(s, rules, deleted, kv, now_ms))


def _last_seq(rows: BatchRows) -> int:
    """The newest reading a sync batch read holds (0 without readings)."""
    seqs = rows.readings.seq
    return seqs[-1] if seqs else 0
