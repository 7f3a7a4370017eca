"""The in-process peer of a sync drain: a gateway store's backlog read, built into sync batches,
encoded, decoded and applied to a cloud store, serially, as the HTTP path does minus the HTTP.
bench/sync_drain.py compares its own drain against it; bench/timescale.py drains with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.sync.store import SyncStore
from common.sync_wire import SyncBatch, decode_batch, encode_batch
from edge.storage.store import GatewayStore


@dataclass
class Drained:
    stored: int = 0
    wire_bytes: int = 0
    batches: int = 0


async def drain_backlog(
    sync: SyncStore, org_id: str, gateway_id: str, db: Path, batch: int, now: int
) -> Drained:
    """Every reading of the gateway store at `db` into the cloud, `batch` readings per sync
    batch. The gateway store is only read (no cursor saved)."""
    done = Drained()
    gw_store = GatewayStore(db)
    cursor = 0
    try:
        while True:
            rows, _ = gw_store.reading_columns_for_sync(cursor, batch)
            if not rows:
                return done
            out = SyncBatch.create(
                gateway_id=gateway_id, first_seq=cursor + 1, last_seq=rows.seq[-1],
                boot_id="peer", gateway_clock_ms=now, readings=rows,
                counters=gw_store.counters(),
                epochs=gw_store.epochs_for(rows.seq[0], rows.seq[-1]),
            )  # fmt: skip
            body, ctype, cenc = encode_batch(out)
            ack = await sync.apply_batch(org_id, decode_batch(body, ctype, cenc), now)
            cursor = rows.seq[-1]
            done.stored += ack.stored
            done.wire_bytes += len(body)
            done.batches += 1
    finally:
        gw_store.close()
