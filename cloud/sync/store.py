"""Storage of sync on the cloud's database (either engine): SyncStore, and how one gateway batch is
applied. A batch is applied in ONE transaction (devices, readings, alerts, events, counters,
the ack): a crash part-way applies nothing, and the gateway's resend applies it all; each step
of that transaction is a function below, run on the caller's connection. Pipelined batches
wait here for the batch they follow. Gateways (enrollment, identity, revocation) and the config
pushed down to them are query groups in cloud.sync.gateways and cloud.sync.config_store;
the tables are in cloud.sync.schema, the values and errors in cloud.sync.records."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Sequence

import pyarrow as pa

from cloud.storage.alert_queries import add_event, rule_name_of
from cloud.storage.alert_schema import ALERT_ORIGIN_MIGRATIONS
from cloud.storage.sql import Dialect, SqlConn, SqlDatabase, first
from cloud.storage.telemetry import READINGS_BATCH_SCHEMA, insert_readings_table
from cloud.storage.value_columns import split_value
from cloud.sync.config_store import ConfigQueries
from cloud.sync.gateways import GatewayQueries
from cloud.sync.records import ALERT_STATE_RANK, ForeignDevices
from cloud.sync.schema import SYNC_MIGRATIONS, SYNC_PG_MIGRATIONS
from common.alerts import AlertState
from common.sync_wire import AlertChange, BatchAck, DeviceRecord, SyncBatch, reading_clocks

_STATES = frozenset(s.value for s in AlertState)
RECENT_BATCHES = 64  # per gateway, remembered for pipelined batches that follow them
# A pipelined batch's predecessor may be stored by another worker: the database is asked at
# once, then after 10, 20, 40 ... ms, at most POLL_MAX_S apart, until the wait's timeout.
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.2


class SyncStore(GatewayQueries, ConfigQueries):
    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        db.migrate("sync", {"duckdb": SYNC_MIGRATIONS, "postgresql": SYNC_PG_MIGRATIONS})
        db.migrate("alert_origin", ALERT_ORIGIN_MIGRATIONS)  # after sync_alerts exists
        # Batches this process stored lately, per gateway: a pipelined batch waits on these
        # for the batch it follows (bounded: only the newest few can be followed).
        self._stored_recently: dict[str, deque[str]] = {}
        self._stored_changed = asyncio.Condition()

    # -- batches --------------------------------------------------------------------------

    async def wait_until_stored(self, gateway_id: str, batch_id: str, timeout_s: float) -> bool:
        """Whether the batch is stored, waiting up to timeout_s for it (a pipelined batch's
        predecessor may still be on its way or in its transaction).

        Any worker, in any process on any host, may be the one storing it: sync_batches is
        the truth, asked at once and then with a backoff from POLL_FIRST_S to POLL_MAX_S, and a
        last time at the timeout. A batch this process stores wakes the wait at once."""

        def stored_here() -> bool:
            return batch_id in self._stored_recently.get(gateway_id, ())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = POLL_FIRST_S
        while True:
            async with self._stored_changed:
                if stored_here():
                    return True
            if await self._batch_stored(gateway_id, batch_id):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                async with self._stored_changed:
                    await asyncio.wait_for(
                        self._stored_changed.wait_for(stored_here), min(delay, remaining)
                    )
                return True
            except TimeoutError:
                delay = min(delay * 2, POLL_MAX_S)

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

        dialect = self.db.dialect

        def go(c: SqlConn) -> BatchAck:
            return _apply_on(c, dialect, org_id, batch, now_ms, table, devices)

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


# -- applying one batch, step by step on the transaction's connection -------------------------


def _apply_on(
    c: SqlConn,
    dialect: Dialect,
    org_id: str,
    batch: SyncBatch,
    now_ms: int,
    table: pa.Table | None,
    devices: Sequence[str],
) -> BatchAck:
    """The whole batch, or the ack already stored for it."""
    if dialect == "postgresql":
        # Workers on other hosts may hold the same batch (a resend after a lost ack) or the
        # gateway's next one: one at a time per gateway, each seeing what the last stored.
        lock = f"iotsphere.sync.{batch.gateway_id}"
        c.execute("SELECT pg_advisory_xact_lock(hashtext(?))", [lock]).fetchall()
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
        _claim_devices(c, org_id, batch.gateway_id, devices)
    if batch.devices:  # provisioned at the gateway: listed here with their type
        _apply_device_list(c, org_id, batch.devices, now_ms)
    stored = 0
    if table is not None:
        stored = insert_readings_table(c, dialect, table, org_id, batch.gateway_id, now_ms)
    for alert in batch.alerts:
        _upsert_alert(c, org_id, batch.gateway_id, alert, now_ms)
    if batch.rules is not None:
        _replace_gateway_rules(c, org_id, batch, now_ms)
    if batch.auth_events:
        _insert_auth_events(c, org_id, batch, now_ms)
    _raise_counters(c, batch, now_ms)
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


def _claim_devices(c: SqlConn, org_id: str, gateway_id: str, devices: Sequence[str]) -> None:
    """The batch's devices become this gateway's, unless one belongs to another org."""
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
        [org_id, list(devices), gateway_id],
    )


def _apply_device_list(
    c: SqlConn, org_id: str, listed: Sequence[DeviceRecord], now_ms: int
) -> None:
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
            [d.device_id for d in listed],
            [d.type for d in listed],
            [d.status == "revoked" for d in listed],
            org_id,
        ],
    )


def _insert_auth_events(c: SqlConn, org_id: str, batch: SyncBatch, now_ms: int) -> None:
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


def _raise_counters(c: SqlConn, batch: SyncBatch, now_ms: int) -> None:
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


def _replace_gateway_rules(c: SqlConn, org_id: str, batch: SyncBatch, now_ms: int) -> None:
    """The gateway's rule list, whole: what it no longer has goes."""
    assert batch.rules is not None
    c.execute("DELETE FROM gateway_rules WHERE gateway_id = ?", [batch.gateway_id])
    docs = {str(r["id"]): json.dumps(dict(r), sort_keys=True) for r in batch.rules}
    if docs:
        ids = sorted(docs)
        c.execute(
            "INSERT INTO gateway_rules SELECT ?, ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?",
            [org_id, batch.gateway_id, ids, [docs[i] for i in ids], now_ms],
        )


def _gateway_events(
    c: SqlConn, org_id: str, gateway_id: str, a: AlertChange, since: AlertState | None
) -> None:
    """The history steps the gateway's state adds beyond `since` (None: a new alert)."""
    who = f"gateway {gateway_id}"
    if since is None:
        add_event(
            c, org_id, a.id, a.started_at, "raised", who, f"{a.metric} = {json.dumps(a.value)}"
        )
    if a.acknowledged_at is not None and since in (None, AlertState.ACTIVE):
        add_event(c, org_id, a.id, a.acknowledged_at, AlertState.ACKNOWLEDGED.value, who)
    if a.resolved_at is not None and since is not AlertState.RESOLVED:
        add_event(c, org_id, a.id, a.resolved_at, AlertState.RESOLVED.value, who)


def _upsert_alert(c: SqlConn, org_id: str, gateway_id: str, a: AlertChange, now_ms: int) -> None:
    state = AlertState(a.state) if a.state in _STATES else None
    if state is None:
        return  # the decoder admits any string; an unknown state is not ours to invent
    row = first(c.execute("SELECT org_id, state FROM alerts WHERE id = ?", [a.id]).fetchall())
    who = f"gateway {gateway_id}"
    if row is None:
        num, flag, text = split_value(a.value)
        c.execute(
            "INSERT INTO alerts (id, org_id, rule_id, state, severity, metric, value_num,"
            " value_bool, value_str, device_id, source, started_at, acknowledged_at,"
            " resolved_at, updated_at, gateway_id, rule_name, rule_doc, acknowledged_by,"
            " resolved_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                gateway_id,
                rule_name_of(a.rule),
                json.dumps(dict(a.rule), sort_keys=True) if a.rule is not None else None,
                who if a.acknowledged_at is not None else None,
                who if a.resolved_at is not None else None,
            ],
        )
        c.execute(
            "INSERT INTO sync_alerts VALUES (?, ?, ?, ?)", [a.id, org_id, gateway_id, state.value]
        )
        _gateway_events(c, org_id, gateway_id, a, None)
        return
    if row[0] != org_id:
        return  # an id clash with another org's alert: never touch theirs
    current = AlertState(row[1])
    if ALERT_STATE_RANK[state] > ALERT_STATE_RANK[current]:
        c.execute(
            "UPDATE alerts SET state = ?, acknowledged_at = coalesce(acknowledged_at, ?),"
            " resolved_at = coalesce(resolved_at, ?), updated_at = ?,"
            " acknowledged_by = coalesce(acknowledged_by, ?),"
            " resolved_by = coalesce(resolved_by, ?) WHERE id = ?",
            [
                state.value,
                a.acknowledged_at,
                a.resolved_at,
                now_ms,
                who if a.acknowledged_at is not None else None,
                who if a.resolved_at is not None else None,
                a.id,
            ],
        )
        _gateway_events(c, org_id, gateway_id, a, current)
    c.execute(
        "INSERT INTO sync_alerts VALUES (?, ?, ?, ?) ON CONFLICT (alert_id) DO UPDATE SET"
        " gw_state = CASE WHEN excluded.gw_state = 'resolved' OR sync_alerts.gw_state"
        " = 'active' THEN excluded.gw_state ELSE sync_alerts.gw_state END",
        [a.id, org_id, gateway_id, state.value],
    )


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
