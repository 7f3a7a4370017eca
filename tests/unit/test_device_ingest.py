"""DeviceIngest's grouping: messages of one event-loop iteration reach the store together, after
the group window, or at the end of the iteration when the transport asks (seal_soon)."""

from __future__ import annotations

import asyncio
from typing import Any

from common.clock import ManualClock
from common.validation import ValidationPolicy
from edge.ingest.classify import Classifier
from edge.ingest.intake import GROUP_WINDOW_S, DeviceIngest
from edge.storage.actor import Ingest

T0 = 1_764_770_000_000


class RecordingStore:
    """Stands in for the store actor's ref: records what it is told, confirms on demand."""

    def __init__(self) -> None:
        self.told: list[Ingest] = []

    def tell(self, msg: Any) -> None:
        self.told.append(msg)

    def confirm_all(self) -> None:
        for msg in self.told:
            assert msg.confirm is not None
            msg.confirm(None)


def make_ingest() -> tuple[DeviceIngest, RecordingStore]:
    classifier = Classifier({}, ValidationPolicy())
    classifier.set_device_type("d1", None)
    store = RecordingStore()
    return DeviceIngest(store, classifier, ManualClock(T0)), store  # type: ignore[arg-type]


def message(i: int) -> bytes:
    return b'{"ts": %d, "values": {"t": %d}}' % (T0 - 1000 + i, i)


async def test_seal_soon_sends_the_group_at_the_end_of_the_iteration() -> None:
    ingest, store = make_ingest()
    pending = [ingest.submit("d1", message(i), None, "mqtt") for i in range(3)]
    ingest.seal_soon()
    ingest.seal_soon()  # once per group
    assert store.told == []
    await asyncio.sleep(0)
    assert len(store.told) == 1 and len(store.told[0].readings) == 3
    store.confirm_all()
    assert [await p.wait() for p in pending] == [pending[0].result] * 3
    assert pending[0].result.readings == 1 and pending[0].result.accepted
    await asyncio.sleep(GROUP_WINDOW_S * 2)  # the window's own timer finds nothing more to send
    assert len(store.told) == 1


async def test_without_seal_soon_the_group_waits_for_the_window() -> None:
    ingest, store = make_ingest()
    ingest.submit("d1", message(1), None, "coap")
    await asyncio.sleep(0)
    assert store.told == []
    await asyncio.sleep(GROUP_WINDOW_S * 2)
    assert len(store.told) == 1


async def test_messages_after_a_seal_start_a_new_group() -> None:
    ingest, store = make_ingest()
    ingest.submit("d1", message(1), None, "mqtt")
    ingest.seal_soon()
    await asyncio.sleep(0)
    ingest.submit("d1", message(2), None, "mqtt")
    ingest.seal_soon()
    await asyncio.sleep(0)
    assert [len(m.readings) for m in store.told] == [1, 1]


async def test_a_plain_run_takes_the_plain_messages_up_to_the_first_other() -> None:
    ingest, store = make_ingest()
    payloads = [message(1), message(2), b'{"t": "warm"}', message(4)]
    pending, n = ingest.submit_plain_run("d1", payloads)
    assert n == 2 and pending is not None  # the string value is for classify() to decide
    alone = ingest.submit("d1", payloads[2], None, "mqtt")  # what the front does next
    assert alone.committed is pending.committed  # one group, one commit
    ingest.seal_soon()
    await asyncio.sleep(0)
    (told,) = store.told
    assert [r.value for r in told.readings] == [1.0, 2.0, "warm"]
    store.confirm_all()
    assert (await pending.wait()).readings == 2
    stats = ingest.stats
    assert (stats.received, stats.accepted, stats.readings, ingest.in_flight) == (3, 3, 3, 0)


async def test_a_plain_run_leaves_refusals_to_submit() -> None:
    ingest, store = make_ingest()
    assert ingest.submit_plain_run("unknown", [message(1)]) == (None, 0)  # classify rejects it
    assert ingest.submit_plain_run("d1", [b'{"t": 1, "t": 2}']) == (None, 0)  # a duplicate key
    ingest.close()
    assert ingest.submit_plain_run("d1", [message(1)]) == (None, 0)  # submit() raises
    assert store.told == [] and ingest.stats.received == 0
