"""Each synced reading's clock, as the cloud stores it: the gateway lists the clock epochs a
batch's readings fall in (common.sync_batch.ClockEpoch), and reading_clocks turns them into
per-reading flags, boot id and monotonic receive time. An epoch is a stretch of one boot during
which wall clock minus monotonic clock stayed constant (a new one begins at boot and whenever
the wall clock jumps), so a reading's monotonic receive time is received_at - mono_base_ms, and
an epoch's clock state (unsynchronised, skewed against the cloud) applies to all its readings.
Nothing is ever ordered or deduplicated by wall-clock time alone: readings carry the gateway's
seq. Pure: the cloud's own measurement of the skew comes in as an argument."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Final

from common.model import ReadingFlag
from common.sync_batch import SyncBatch

CLOCK_SKEW_FLAG_MS: Final = 5 * 60_000  # a gateway clock further off the cloud's is flagged


@dataclass(frozen=True, slots=True)
class ReadingClock:
    """Per-reading clock columns the cloud stores (aligned with batch.readings)."""

    flags: list[int]
    boot_id: list[str | None]
    mono_ms: list[int | None]


def reading_clocks(batch: SyncBatch, *, request_skew_ms: int | None = None) -> ReadingClock:
    """Each reading's flags (its own | its epoch's), boot id and monotonic receive time.

    An epoch whose skew the gateway had not measured yet is judged by request_skew_ms (what
    the cloud measured on this request) when it is the gateway's current epoch (the gateway
    always lists it last): the clock has not jumped since, so today's skew is its skew.
    """
    cols = batch.readings
    epochs = sorted(batch.epochs, key=lambda e: e.first_seq)
    if not epochs:
        n = len(cols)
        return ReadingClock(list(cols.flags), [None] * n, [None] * n)
    starts = [e.first_seq for e in epochs]  # sorted() is stable: listing order breaks ties
    last = len(epochs) - 1
    current = last if epochs[last].boot_id == batch.boot_id else None
    epoch_flags = []
    for i, e in enumerate(epochs):
        skew = e.skew_ms if e.skew_ms is not None else (request_skew_ms if i == current else None)
        skewed = skew is not None and abs(skew) > CLOCK_SKEW_FLAG_MS
        epoch_flags.append(e.flags | (int(ReadingFlag.GATEWAY_CLOCK_SKEWED) if skewed else 0))
    flags: list[int] = []
    boots: list[str | None] = []
    monos: list[int | None] = []
    for seq, rx, f in zip(cols.seq, cols.received_at, cols.flags, strict=True):
        i = bisect.bisect_right(starts, seq) - 1
        if i < 0:
            flags.append(f)
            boots.append(None)
            monos.append(None)
        else:
            flags.append(f | epoch_flags[i])
            boots.append(epochs[i].boot_id)
            monos.append(rx - epochs[i].mono_base_ms)
    return ReadingClock(flags, boots, monos)
