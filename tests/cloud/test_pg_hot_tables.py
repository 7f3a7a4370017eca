"""PostgreSQL: `latest` and `devices`, rewritten by every sync batch and read whole by every
dashboard request, stay about the size of their rows (fillfactor 50: each update stays on its
page and the page is pruned), instead of growing with every batch until a VACUUM.
docs/decisions/cloud-postgres-readings.md, "The dashboard's tables stay small"."""

from __future__ import annotations

import pytest

from cloud.storage.store import SqlCloudStore
from tests.support.cloud import T0, reading

pytestmark = [pytest.mark.engines("postgresql"), pytest.mark.timeout(120)]

BATCHES = 60
DEVICES, METRICS = 100, 10


def pages(store: SqlCloudStore, table: str) -> int:
    row = store.db.run_sync(
        lambda c: c.execute(f"SELECT pg_relation_size('{table}') / 8192").fetchone()
    )
    assert row is not None
    return int(row[0])


async def test_latest_and_devices_do_not_grow_with_batches(store: SqlCloudStore) -> None:
    org = (await store.ensure_org("default", T0)).id
    sizes: list[tuple[int, int]] = []
    for b in range(BATCHES):  # every batch moves every series' latest value and last_seen
        ts = T0 + b * 1000
        batch = [
            reading(f"dev-{d:03d}", f"m{m}", ts, float(b))
            for d in range(DEVICES)
            for m in range(METRICS)
        ]
        await store.insert_readings(org, "gw-a", batch, ts)
        sizes.append((pages(store, "latest"), pages(store, "devices")))
    (first_latest, first_devices), (last_latest, last_devices) = sizes[0], sizes[-1]
    # At the default fillfactor `latest` grew 25x here (304 pages after 60 batches, from 12);
    # with room on each page it stays within a small multiple of its first size.
    assert last_latest <= 3 * first_latest, sizes
    assert last_devices <= 3 * max(first_devices, 1), sizes
    assert (await store.list_devices(org))[0].latest["m0"] == float(BATCHES - 1)
