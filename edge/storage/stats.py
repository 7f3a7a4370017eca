"""What the store actor counts for display: one writer (the store actor), readers for display.

`StoreStats` is created by the gateway (filled from the store before the actor starts) and
handed to the store actor alone, so it outlives a restart of that actor; status, the CLI and
the status page only read it. No other actor decides anything from it: the rules actor asks
the store (`StoreState`), the sync actor tells it what to protect (`ProtectThrough`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from common.model import Reading
from edge.storage.health import StorageHealth


class LagWindow:
    """Ingest lag of recent commits: commit time minus the reading's device timestamp.

    With device clocks in sync (simulators on the same host, NTP on site) this is the
    publish-to-durable latency; readings whose ts the gateway supplied measure receive-to-commit.
    A fixed window of recent samples keeps memory bounded.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._samples: deque[int] = deque(maxlen=size)

    def add_batch(self, readings: list[Reading], now: int) -> None:
        """Samples for readings committed at `now` (ms since the epoch)."""
        # one sample per distinct message timestamp: a 10-value message counts once (the
        # window's order does not matter: only percentiles are read)
        stamps = {(r.device_id, r.ts) for r in readings}
        self._samples.extend([now - ts for _device, ts in stamps])

    def summary(self) -> dict[str, int | None]:
        if not self._samples:
            return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        ordered = sorted(self._samples)
        n = len(ordered)
        return {
            "samples": n,
            "p50_ms": ordered[n // 2],
            "p99_ms": ordered[min(n - 1, (n * 99) // 100)],
            "max_ms": ordered[-1],
        }

    def reset(self) -> None:
        self._samples.clear()


@dataclass
class StoreStats:
    """What `status` shows without queuing behind ingest; written by the store actor only."""

    readings_stored: int = 0
    duplicates: int = 0
    rejections: int = 0
    auth_failures: int = 0
    last_seq: int = 0
    commits: int = 0
    last_commit_at: int | None = None
    oldest_unsynced_at: int | None = None  # receive time of the oldest reading not yet synced
    # Readings up to this seq are in a batch sent to the cloud (the sync actor's ProtectThrough):
    # the disk cap keeps them. Here, not in the actor, so it survives a restart of the actor.
    protect_through: int = 0
    readings_dropped: int = 0  # since start: unsynced readings deleted by the disk cap
    readings_pruned: int = 0  # since start: synced readings deleted after retention
    storage: StorageHealth = field(default_factory=StorageHealth)  # can the store write

    def storing(self) -> bool:
        """Whether storage is available now: a read-only view for a fast check at the edge."""
        return self.storage.available
