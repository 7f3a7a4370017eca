"""Storage of gateway enrollment and sync on the cloud's DuckDB Database ("sync" migrations).

- gateway_keys: one row per enrolled gateway: its Ed25519 public key (raw, base64), when it
  enrolled, whether it is revoked, when it was last seen and the clock skew it showed. The
  core `gateways` table keeps what `cloud gateway add` wrote (name, enrollment token hash and
  expiry); enrolled_at and last_seen are mirrored there so GET /api/gateways shows them.
- sync_batches: every applied batch's acknowledgement, keyed by (gateway, batch id). A resend
  is answered from here, so a lost acknowledgement never stores anything twice.
- sync_alerts: alerts that came from a gateway, with the state the gateway last reported, so
  the config endpoint can tell it which of them were acknowledged or resolved in the cloud.
- gateway_auth_events, gateway_counters: what the gateway reported about itself.

A batch is applied in ONE transaction (devices, readings, alerts, events, counters, the ack):
a crash part-way applies nothing, and the gateway's resend applies it all.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from cloud.db import Database, Migration, first
from cloud.store_duckdb_telemetry import READINGS_BATCH_SCHEMA, insert_readings_table
from cloud.value_columns import split_value
from common.alerts import AlertState
from common.problem import Problem, ProblemError
from common.sync_wire import AlertChange, BatchAck, SyncBatch, reading_clocks

SYNC_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE gateway_keys (
                gateway_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL,
                public_key VARCHAR NOT NULL, enrolled_at BIGINT NOT NULL,
                revoked_at BIGINT, last_seen BIGINT, skew_ms BIGINT,
                clock_skewed BOOLEAN NOT NULL DEFAULT false, config_version BIGINT)""",
            """CREATE TABLE sync_batches (
                gateway_id VARCHAR NOT NULL, batch_id VARCHAR NOT NULL,
                first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, stored BIGINT NOT NULL,
                duplicates BIGINT NOT NULL, acked_at BIGINT NOT NULL,
                PRIMARY KEY (gateway_id, batch_id))""",
            """CREATE TABLE sync_alerts (
                alert_id VARCHAR PRIMARY KEY, org_id VARCHAR NOT NULL,
                gateway_id VARCHAR NOT NULL, gw_state VARCHAR NOT NULL)""",
            """CREATE TABLE gateway_auth_events (
                org_id VARCHAR NOT NULL, gateway_id VARCHAR NOT NULL, occurred_at BIGINT NOT NULL,
                kind VARCHAR NOT NULL, transport VARCHAR NOT NULL, reason VARCHAR NOT NULL,
                address VARCHAR, username VARCHAR, client_id VARCHAR,
                received_at BIGINT NOT NULL)""",
            """CREATE TABLE gateway_counters (
                gateway_id VARCHAR NOT NULL, name VARCHAR NOT NULL, value BIGINT NOT NULL,
                updated_at BIGINT NOT NULL, PRIMARY KEY (gateway_id, name))""",
        ),
    ),
    # What the gateway still has to send, as its newest batch said (a gauge, not a total).
    Migration(2, ("ALTER TABLE gateway_keys ADD COLUMN backlog BIGINT",)),
)

# Alert states only move forward: a late or resent change never undoes a newer one.
_RANK = {AlertState.ACTIVE: 0, AlertState.ACKNOWLEDGED: 1, AlertState.RESOLVED: 2}
_STATES = frozenset(s.value for s in AlertState)
MAX_ALERT_ACKS = 1000  # per config answer; the rest follow on the next poll
RECENT_BATCHES = 64  # per gateway, remembered for pipelined batches that follow them


# -- errors (ProblemErrors: the endpoint answers them as they are) ----------------------------


class EnrollmentRefused(ProblemError):
    """Unknown or expired token (401) or a token already used (409)."""

    def __init__(self, status: int, detail: str) -> None:
        slug = "enrollment-token-used" if status == 409 else "enrollment-refused"
        title = "Enrollment token already used" if status == 409 else "Enrollment refused"
        super().__init__(Problem(slug, title, status, detail))
        self.status = status


class ForeignDevices(ProblemError):
    """A batch names devices that belong to another organization: nothing is stored (403)."""

    def __init__(self, devices: Sequence[str]) -> None:
        super().__init__(
            Problem(
                "foreign-devices",
                "Devices of another organization",
                403,
                f"{len(devices)} device(s) belong to another organization; batch refused",
                extra={"devices": list(devices)},
            )
        )
        self.devices = tuple(devices)


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolled:
    gateway_id: str
    org_id: str
    org_name: str


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """An enrolled gateway, as the sync endpoints need it."""

    gateway_id: str
    org_id: str
    public_key: bytes
    revoked: bool


@dataclass(frozen=True, slots=True)
class GatewaySyncInfo:
    gateway_id: str
    revoked_at: int | None
    skew_ms: int | None
    clock_skewed: bool
    config_version: int | None
    backlog: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "backlog_readings": self.backlog,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "clock_skew_ms": self.skew_ms,
            "clock_skewed": self.clock_skewed,
            "config_version": self.config_version,
        }


@dataclass(frozen=True, slots=True)
class GatewayScope:
    """What the config endpoint filters rules by."""

    devices: frozenset[str]  # devices of this gateway
    other_devices: frozenset[str]  # devices of the org's other gateways
    alert_changes: tuple[tuple[str, str, int | None, int | None], ...]  # id, state, ack, res


def _columns_table(batch: SyncBatch, request_skew_ms: int | None) -> pa.Table:
    cols = batch.readings
    clocks = reading_clocks(batch, request_skew_ms=request_skew_ms)
    n = len(cols)
    nums: list[float | None] | pa.Array
    flags: list[bool | None] | pa.Array
    texts: list[str | None] | pa.Array
    if set(map(type, cols.value)) == {float}:
        # Numbers only, as sensors almost always send: no per-reading split (a fifth of
        # what applying a 20k-reading batch cost, measured).
        nums, flags, texts = list(cols.value), pa.nulls(n, pa.bool_()), pa.nulls(n, pa.string())
    else:
        nums, flags, texts = [], [], []
        for v in cols.value:
            num, flag, text = split_value(v)
            nums.append(num)
            flags.append(flag)
            texts.append(text)
    return pa.table(
        {
            "device_id": list(cols.device_id),
            "metric": list(cols.metric),
            "ts": list(cols.ts),
            "value_num": nums,
            "value_bool": flags,
            "value_str": texts,
            "gateway_received_at": list(cols.received_at),
            "flags": clocks.flags,
            "gateway_boot_id": clocks.boot_id,
            "gateway_mono_ms": clocks.mono_ms,
        },
        schema=READINGS_BATCH_SCHEMA,
    )


class DuckSyncStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("sync", SYNC_MIGRATIONS)
        # Batches this process stored lately, per gateway: a pipelined batch waits on these
        # for the batch it follows (bounded: only the newest few can be followed).
        self._stored_recently: dict[str, deque[str]] = {}
        self._stored_changed = asyncio.Condition()

    # -- enrollment -----------------------------------------------------------------------

    async def enroll(self, token_hash: str, public_key: bytes, now_ms: int) -> Enrolled:
        """Bind the key to the gateway whose unused, unexpired token has this hash (one-time).

        Raises EnrollmentRefused (401 unknown/expired, 409 used); nothing changes then.
        """
        key_b64 = base64.b64encode(public_key).decode()

        def go(c: duckdb.DuckDBPyConnection) -> Enrolled:
            row = first(
                c.execute(
                    "SELECT g.id, g.org_id, o.name, g.enrollment_expires_at, g.enrolled_at"
                    " FROM gateways g JOIN orgs o ON o.id = g.org_id"
                    " WHERE g.enrollment_token_hash = ?",
                    [token_hash],
                ).fetchall()
            )
            if row is None:
                raise EnrollmentRefused(401, "unknown enrollment token")
            gateway_id, org_id, org_name, expires_at, enrolled_at = row
            used = first(
                c.execute(
                    "SELECT 1 FROM gateway_keys WHERE gateway_id = ?", [gateway_id]
                ).fetchall()
            )
            if enrolled_at is not None or used is not None:
                raise EnrollmentRefused(409, "this enrollment token has already been used")
            if expires_at is None or expires_at <= now_ms:
                raise EnrollmentRefused(401, "this enrollment token has expired")
            c.execute(
                "INSERT INTO gateway_keys (gateway_id, org_id, public_key, enrolled_at)"
                " VALUES (?, ?, ?, ?)",
                [gateway_id, org_id, key_b64, now_ms],
            )
            c.execute("UPDATE gateways SET enrolled_at = ? WHERE id = ?", [now_ms, gateway_id])
            return Enrolled(gateway_id, org_id, org_name)

        return await self.db.run(self.db.transaction(go))

    # -- identity (called from a worker thread by the verifier: synchronous) --------------

    def identity_sync(self, gateway_id: str) -> GatewayIdentity | None:
        row = first(
            self.db.run_sync(
                lambda c: c.execute(
                    "SELECT gateway_id, org_id, public_key, revoked_at FROM gateway_keys"
                    " WHERE gateway_id = ?",
                    [gateway_id],
                ).fetchall()
            )
        )
        if row is None:
            return None
        return GatewayIdentity(row[0], row[1], base64.b64decode(row[2]), row[3] is not None)

    def active_public_key(self, gateway_id: str) -> bytes | None:
        """The verifier's lookup: the key of an enrolled, not revoked gateway."""
        ident = self.identity_sync(gateway_id)
        return None if ident is None or ident.revoked else ident.public_key

    async def identity(self, gateway_id: str) -> GatewayIdentity | None:
        return await asyncio.to_thread(self.identity_sync, gateway_id)

    async def revoke(self, org_id: str, gateway_id: str, now_ms: int) -> bool:
        """Refuse this gateway from now on. False when the org has no such gateway."""

        def go(c: duckdb.DuckDBPyConnection) -> bool:
            row = first(
                c.execute(
                    "SELECT 1 FROM gateways WHERE id = ? AND org_id = ?", [gateway_id, org_id]
                ).fetchall()
            )
            if row is None:
                return False
            c.execute(
                "UPDATE gateway_keys SET revoked_at = coalesce(revoked_at, ?) WHERE gateway_id = ?",
                [now_ms, gateway_id],
            )
            # A not-yet-enrolled gateway: its token must not work any more either.
            c.execute(
                "UPDATE gateways SET enrollment_expires_at = least(enrollment_expires_at, ?)"
                " WHERE id = ?",
                [now_ms, gateway_id],
            )
            return True

        return await self.db.run(self.db.transaction(go))

    async def seen(
        self, gateway_id: str, now_ms: int, skew_ms: int, skewed: bool, config: int | None = None
    ) -> None:
        def go(c: duckdb.DuckDBPyConnection) -> None:
            c.execute(
                "UPDATE gateway_keys SET last_seen = ?, skew_ms = ?, clock_skewed = ?,"
                " config_version = coalesce(?, config_version) WHERE gateway_id = ?",
                [now_ms, skew_ms, skewed, config, gateway_id],
            )
            c.execute("UPDATE gateways SET last_seen = ? WHERE id = ?", [now_ms, gateway_id])

        await self.db.run(self.db.transaction(go))

    async def sync_info(self, org_id: str) -> dict[str, GatewaySyncInfo]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT gateway_id, revoked_at, skew_ms, clock_skewed, config_version, backlog"
                " FROM gateway_keys WHERE org_id = ?",
                [org_id],
            ).fetchall()
        )
        return {r[0]: GatewaySyncInfo(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows}

    async def batch_totals(self, org_id: str) -> dict[str, tuple[int, int]]:
        """gateway id -> (when its newest batch was stored, readings its batches stored)."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT b.gateway_id, max(b.acked_at), sum(b.stored) FROM sync_batches b"
                " JOIN gateway_keys k ON k.gateway_id = b.gateway_id WHERE k.org_id = ?"
                " GROUP BY b.gateway_id",
                [org_id],
            ).fetchall()
        )
        return {str(g): (int(at), int(n)) for g, at, n in rows}

    # -- batches --------------------------------------------------------------------------

    async def wait_until_stored(self, gateway_id: str, batch_id: str, timeout_s: float) -> bool:
        """Whether the batch is stored, waiting up to timeout_s for it (a pipelined batch's
        predecessor may still be on its way or in its transaction)."""

        def stored_here() -> bool:
            return batch_id in self._stored_recently.get(gateway_id, ())

        async with self._stored_changed:
            if stored_here():
                return True
        if await self._batch_stored(gateway_id, batch_id):  # e.g. before this process started
            return True
        try:
            async with self._stored_changed:
                await asyncio.wait_for(self._stored_changed.wait_for(stored_here), timeout_s)
        except TimeoutError:
            return await self._batch_stored(gateway_id, batch_id)
        return True

    async def _batch_stored(self, gateway_id: str, batch_id: str) -> bool:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT 1 FROM sync_batches WHERE gateway_id = ? AND batch_id = ?",
                [gateway_id, batch_id],
            ).fetchall()
        )
        return bool(rows)

    async def _note_stored(self, gateway_id: str, batch_id: str) -> None:
        async with self._stored_changed:
            recent = self._stored_recently.setdefault(gateway_id, deque(maxlen=RECENT_BATCHES))
            recent.append(batch_id)
            self._stored_changed.notify_all()

    async def apply_batch(
        self, org_id: str, batch: SyncBatch, now_ms: int, request_skew_ms: int | None = None
    ) -> BatchAck:
        """Store a batch once, in one transaction; a resend gets the stored ack.

        request_skew_ms: the gateway's clock minus ours as this request showed (judges the
        receive times of readings from the gateway's current clock epoch)."""
        ack = await self._apply(org_id, batch, now_ms, request_skew_ms)
        await self._note_stored(batch.gateway_id, batch.batch_id)
        return ack

    async def _apply(
        self, org_id: str, batch: SyncBatch, now_ms: int, request_skew_ms: int | None
    ) -> BatchAck:
        # Built in a worker thread: for 40k readings it is ~30 ms the event loop (and the
        # decoding of a pipelined next batch) need not wait for.
        table = (
            await asyncio.to_thread(_columns_table, batch, request_skew_ms)
            if len(batch.readings)
            else None
        )
        devices = sorted(
            set(batch.readings.device_id)
            | {a.device_id for a in batch.alerts}
            | {d.device_id for d in batch.devices}
        )

        def go(c: duckdb.DuckDBPyConnection) -> BatchAck:
            row = first(
                c.execute(
                    "SELECT first_seq, last_seq, stored, duplicates FROM sync_batches"
                    " WHERE gateway_id = ? AND batch_id = ?",
                    [batch.gateway_id, batch.batch_id],
                ).fetchall()
            )
            if row is not None:
                return BatchAck(batch.batch_id, int(row[0]), int(row[1]), int(row[2]), int(row[3]))
            if devices:
                marks = ", ".join("?" for _ in devices)
                foreign = c.execute(
                    f"SELECT DISTINCT device_id FROM devices WHERE device_id IN ({marks})"
                    " AND org_id <> ? AND gateway_id IS NOT NULL ORDER BY device_id",
                    [*devices, org_id],
                ).fetchall()
                if foreign:
                    raise ForeignDevices([f[0] for f in foreign])
                # One statement: executemany costs a few ms per row in DuckDB.
                c.execute(
                    "INSERT INTO devices (org_id, device_id, gateway_id)"
                    " SELECT ?, unnest(?::VARCHAR[]), ?"
                    " ON CONFLICT (org_id, device_id) DO UPDATE SET"
                    " gateway_id = excluded.gateway_id",
                    [org_id, devices, batch.gateway_id],
                )
            if batch.devices:  # provisioned at the gateway: listed here with their type
                c.execute(
                    # a revocation sticks: a list sent before the gateway applied a central
                    # revocation must not undo it
                    "UPDATE devices SET type = v.type, revoked_at = CASE WHEN v.revoked"
                    " THEN coalesce(devices.revoked_at, ?) ELSE devices.revoked_at END FROM (SELECT"
                    " unnest(?::VARCHAR[]) AS id, unnest(?::VARCHAR[]) AS type,"
                    " unnest(?::BOOLEAN[]) AS revoked) v WHERE devices.org_id = ?"
                    " AND devices.device_id = v.id",
                    [
                        now_ms,
                        [d.device_id for d in batch.devices],
                        [d.type for d in batch.devices],
                        [d.status == "revoked" for d in batch.devices],
                        org_id,
                    ],
                )
            stored = 0
            if table is not None:
                stored = insert_readings_table(c, table, org_id, batch.gateway_id, now_ms)
            for alert in batch.alerts:
                _upsert_alert(c, org_id, batch.gateway_id, alert, now_ms)
            if batch.auth_events:
                c.executemany(
                    "INSERT INTO gateway_auth_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        [
                            org_id,
                            batch.gateway_id,
                            e.at,
                            e.kind,
                            e.transport,
                            e.reason,
                            e.address,
                            e.username,
                            e.client_id,
                            now_ms,
                        ]
                        for e in batch.auth_events
                    ],
                )
            counters = {**batch.counters, "dropped": batch.dropped}
            names = sorted(counters)
            c.execute(
                # totals since the gateway's data dir was created: the larger one is newer
                "INSERT INTO gateway_counters SELECT ?, unnest(?::VARCHAR[]),"
                " unnest(?::BIGINT[]), ? ON CONFLICT"
                " (gateway_id, name) DO UPDATE SET"
                " value = greatest(gateway_counters.value, excluded.value),"
                " updated_at = excluded.updated_at",
                [batch.gateway_id, names, [counters[k] for k in names], now_ms],
            )
            c.execute(
                "UPDATE gateway_keys SET backlog = ? WHERE gateway_id = ?",
                [batch.backlog, batch.gateway_id],
            )
            ack = BatchAck(
                batch.batch_id,
                batch.first_seq,
                batch.last_seq,
                stored,
                len(batch.readings) - stored,
            )
            c.execute(
                "INSERT INTO sync_batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    batch.gateway_id,
                    batch.batch_id,
                    ack.first_seq,
                    ack.last_seq,
                    ack.stored,
                    ack.duplicates,
                    now_ms,
                ],
            )
            return ack

        return await self.db.run(self.db.transaction(go))

    async def counters(self, gateway_id: str) -> dict[str, int]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT name, value FROM gateway_counters WHERE gateway_id = ?", [gateway_id]
            ).fetchall()
        )
        return {r[0]: int(r[1]) for r in rows}

    async def batch_count(self, gateway_id: str) -> int:
        row = first(
            await self.db.run(
                lambda c: c.execute(
                    "SELECT count(*) FROM sync_batches WHERE gateway_id = ?", [gateway_id]
                ).fetchall()
            )
        )
        return int(row[0]) if row else 0

    # -- devices revoked centrally ------------------------------------------------------------

    async def revoke_device(self, org_id: str, device_id: str, now_ms: int) -> bool:
        """Mark a device of this org revoked (idempotent); False when the org has no such device."""

        def go(c: duckdb.DuckDBPyConnection) -> bool:
            found = c.execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, ?)"
                " WHERE org_id = ? AND device_id = ? RETURNING device_id",
                [now_ms, org_id, device_id],
            ).fetchall()
            return bool(found)

        return await self.db.run(self.db.transaction(go))

    async def revoked_devices(self, org_id: str, gateway_id: str) -> list[str]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT device_id FROM devices WHERE org_id = ? AND gateway_id = ?"
                " AND revoked_at IS NOT NULL ORDER BY device_id",
                [org_id, gateway_id],
            ).fetchall()
        )
        return [r[0] for r in rows]

    # -- device types ----------------------------------------------------------------------

    async def put_device_type(
        self, org_id: str, name: str, spec: dict[str, Any], now_ms: int
    ) -> None:
        await self.db.run(
            self.db.transaction(
                lambda c: c.execute(
                    "INSERT INTO device_types VALUES (?, ?, ?, ?) ON CONFLICT (org_id, name)"
                    " DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                    [org_id, name, json.dumps(spec, sort_keys=True), now_ms],
                )
            )
        )

    async def delete_device_type(self, org_id: str, name: str) -> bool:
        rows = await self.db.run(
            self.db.transaction(
                lambda c: c.execute(
                    "DELETE FROM device_types WHERE org_id = ? AND name = ? RETURNING name",
                    [org_id, name],
                ).fetchall()
            )
        )
        return bool(rows)

    async def device_types(self, org_id: str) -> list[dict[str, Any]]:
        """Every type of the org as {"name", "metrics", "allow_undeclared"}, by name."""
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT name, spec FROM device_types WHERE org_id = ? ORDER BY name", [org_id]
            ).fetchall()
        )
        return [{"name": r[0], **json.loads(r[1])} for r in rows]

    # -- config ---------------------------------------------------------------------------

    async def scope(self, org_id: str, gateway_id: str) -> GatewayScope:
        def go(c: duckdb.DuckDBPyConnection) -> GatewayScope:
            rows = c.execute(
                "SELECT device_id, gateway_id FROM devices WHERE org_id = ?", [org_id]
            ).fetchall()
            mine = frozenset(d for d, g in rows if g == gateway_id)
            others = frozenset(d for d, g in rows if g is not None and g != gateway_id)
            ranks = " ".join(f"WHEN '{s.value}' THEN {r}" for s, r in _RANK.items())
            changes = c.execute(
                "SELECT a.id, a.state, a.acknowledged_at, a.resolved_at FROM sync_alerts s"
                " JOIN alerts a ON a.id = s.alert_id AND a.org_id = s.org_id"
                f" WHERE s.gateway_id = ? AND (CASE a.state {ranks} END)"
                f" > (CASE s.gw_state {ranks} END) ORDER BY a.updated_at, a.id LIMIT ?",
                [gateway_id, MAX_ALERT_ACKS],
            ).fetchall()
            return GatewayScope(mine, others, tuple((r[0], r[1], r[2], r[3]) for r in changes))

        return await self.db.run(go)


def _upsert_alert(
    c: duckdb.DuckDBPyConnection, org_id: str, gateway_id: str, a: AlertChange, now_ms: int
) -> None:
    state = AlertState(a.state) if a.state in _STATES else None
    if state is None:
        return  # the decoder admits any string; an unknown state is not ours to invent
    row = first(c.execute("SELECT org_id, state FROM alerts WHERE id = ?", [a.id]).fetchall())
    if row is None:
        num, flag, text = split_value(a.value)
        c.execute(
            "INSERT INTO alerts (id, org_id, rule_id, state, severity, metric, value_num,"
            " value_bool, value_str, device_id, source, started_at, acknowledged_at,"
            " resolved_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
            [
                a.id,
                org_id,
                a.rule_id,
                state.value,
                a.severity,
                a.metric,
                num,
                flag,
                text,
                a.device_id,
                a.started_at,
                a.acknowledged_at,
                a.resolved_at,
                now_ms,
            ],
        )
        c.execute(
            "INSERT INTO sync_alerts VALUES (?, ?, ?, ?)", [a.id, org_id, gateway_id, state.value]
        )
        return
    if row[0] != org_id:
        return  # an id clash with another org's alert: never touch theirs
    current = AlertState(row[1])
    if _RANK[state] > _RANK[current]:
        c.execute(
            "UPDATE alerts SET state = ?, acknowledged_at = coalesce(acknowledged_at, ?),"
            " resolved_at = coalesce(resolved_at, ?), updated_at = ? WHERE id = ?",
            [state.value, a.acknowledged_at, a.resolved_at, now_ms, a.id],
        )
    c.execute(
        "INSERT INTO sync_alerts VALUES (?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET"
        " gw_state = CASE WHEN excluded.gw_state = 'resolved' OR sync_alerts.gw_state"
        " = 'active' THEN excluded.gw_state ELSE sync_alerts.gw_state END",
        [a.id, org_id, gateway_id, state.value],
    )
