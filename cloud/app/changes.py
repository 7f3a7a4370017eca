"""What changed, per org, for the dashboard's live pages (issue 15, item 3: live by push).

One ChangeFeed per worker process. While at least one page is connected it polls the database
every `interval_s` with ONE cheap statement: per subscribed org and source, the newest change
stamp (devices: last_seen, and the cloud's time of the newest sync batch stored, since
last_seen is the gateways' clock and only moves forward: a gateway behind the others, or
draining a backlog, would move no org-wide maximum; gateways: last_seen; alerts and
deliveries: updated_at), each a scalar that PostgreSQL answers from indexes (CHANGE_INDEXES)
without reading the rows.
A stamp that moved is a change of that kind (a deletion moves none: pages see it at their
30 s refresh); the feed tells that org's
subscribers which kinds moved, nothing else, and the page fetches what it shows through the
ordinary API (so what a page may see is decided where it always was).

Why a poll per worker and not per page, nor LISTEN/NOTIFY: a change committed by worker A must
reach a page connected to worker B, and on DuckDB the cloud is one process anyway. The poll sees
every commit on both engines, whoever made it, without a hook in each writer (sync, the
monitoring loop, the notification worker, the API) and without a held connection per worker
outside the pool; its cost is one indexed aggregate per interval per worker, independent of the
number of pages (measured in docs/decisions/dashboard-push.md).

The store unavailable (or back): every subscriber hears "store" once, and its page refetches,
meets the 503 and shows the outage banner with its Retry-After countdown, as a poll would.

Bounded: each subscriber has a queue of `queue_max` notices. A page that does not keep up (its
socket does not drain, so its stream does not read its queue) is dropped, its queue emptied,
and its stream ends; the browser reconnects and reloads what it shows (resume by refetch: the
notices carry no data, so nothing is lost by dropping them).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cloud.storage.sql import Migration, Migrations, SqlDatabase

log = logging.getLogger("iotsphere.cloud.changes")

KINDS = ("devices", "gateways", "alerts", "deliveries")
STORE = frozenset({"store"})  # the store went away or came back: refetch whatever is shown
# source -> (the kind it announces, a scalar query of its newest stamp for the org `?`);
# notifications belong to the notify area, sync_batches to the sync area
_SOURCES = {
    "devices": ("devices", "SELECT max(last_seen) FROM devices WHERE org_id = ?"),
    # each gateway's newest batch by the index (gateway_id, acked_at): one probe per gateway
    "batches": (
        "devices",
        "SELECT max(b.acked_at) FROM gateways g, LATERAL (SELECT acked_at FROM sync_batches"
        " WHERE gateway_id = g.id ORDER BY acked_at DESC LIMIT 1) b WHERE g.org_id = ?",
    ),
    "gateways": ("gateways", "SELECT max(last_seen) FROM gateways WHERE org_id = ?"),
    "alerts": ("alerts", "SELECT max(updated_at) FROM alerts WHERE org_id = ?"),
    "deliveries": ("deliveries", "SELECT max(updated_at) FROM notifications WHERE org_id = ?"),
}


# PostgreSQL: max(stamp) per org from an index, not a scan of the org's 100,000 alerts (66 ms
# per poll without them at 10,000 devices and 100,000 alerts). devices.last_seen gets none: it
# changes with every batch, and an index on it would cost every sync its HOT updates; the
# org's devices are read through the primary key (org_id, device_id) instead. DuckDB: none
# (its indexes do not serve aggregates; a scan of these columns is milliseconds).
CHANGE_INDEXES: Migrations = {
    "duckdb": (),
    "postgresql": (
        Migration(
            1,
            (
                "CREATE INDEX alerts_org_updated ON alerts (org_id, updated_at)",
                "CREATE INDEX notifications_org_updated ON notifications (org_id, updated_at)",
            ),
        ),
        Migration(
            2, ("CREATE INDEX sync_batches_gateway_acked ON sync_batches (gateway_id, acked_at)",)
        ),
    ),
}


def install_indexes(db: SqlDatabase) -> None:
    """Called once the core, notify and sync tables exist (cloud.app.services.build_services)."""
    db.migrate("change_feed", CHANGE_INDEXES)


@dataclass(eq=False)
class Subscriber:
    org_id: str
    queue: asyncio.Queue[frozenset[str] | None]
    dropped: bool = False  # did not keep up: its stream ends, the page reconnects


@dataclass
class ChangeFeed:
    db: SqlDatabase
    interval_s: float = 0.5
    queue_max: int = 32
    kinds: tuple[str, ...] = KINDS
    batches: bool = False  # the sync area's table is there (build_services: where gateways sync)
    _subs: dict[str, set[Subscriber]] = field(default_factory=dict)
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _failing: bool = False
    closed: bool = False

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, org_id: str) -> Subscriber:
        sub = Subscriber(org_id, asyncio.Queue(self.queue_max))
        self._subs.setdefault(org_id, set()).add(sub)
        if self.closed:
            sub.queue.put_nowait(None)
        elif self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="change-feed")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._subs.get(sub.org_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.org_id]
                self._seen = {k: v for k, v in self._seen.items() if k[0] != sub.org_id}
        if not self._subs and self._task is not None:
            self._task.cancel()  # no page open in this worker: no polling either
            self._task = None

    def subscribers(self, org_id: str | None = None) -> int:
        if org_id is not None:
            return len(self._subs.get(org_id, ()))
        return sum(len(s) for s in self._subs.values())

    def publish(self, org_id: str, kinds: frozenset[str]) -> None:
        """Tell `org_id`'s pages (only theirs) that these kinds changed."""
        for sub in list(self._subs.get(org_id, ())):
            try:
                sub.queue.put_nowait(kinds)
            except asyncio.QueueFull:
                self._drop(sub)

    def _tell_everyone(self) -> None:
        """The store went away or came back: every page refetches (and meets the 503 with its
        Retry-After, or recovers), as polling pages would. Only the fact, nothing of any org."""
        for org_id in list(self._subs):
            self.publish(org_id, STORE)

    def _drop(self, sub: Subscriber) -> None:
        sub.dropped = True
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)  # ends its stream
        self.unsubscribe(sub)
        log.info("dropped a live page of org %s: it did not keep up", sub.org_id)

    def close(self) -> None:
        """Server shutdown: end every stream now (a stream would otherwise hold the graceful
        shutdown for its whole timeout)."""
        self.closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                sub.queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _sources(self) -> list[str]:
        return [
            name
            for name, (kind, _) in _SOURCES.items()
            if kind in self.kinds and (self.batches or name != "batches")
        ]

    async def baseline(self, org_id: str) -> None:
        """Poll now if `org_id` has no baseline yet, so that anything committed after a page's
        stream says "ready" (and the page refetched) is seen as a change."""
        if any((org_id, source) not in self._seen for source in self._sources()):
            await self.poll_once()

    # -- the poll ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._subs and not self.closed:
            await self.poll_once()
            await asyncio.sleep(self.interval_s)

    async def poll_once(self) -> None:
        orgs = sorted(self._subs)
        if not orgs:
            return
        try:
            rows = await self.db.run(lambda c: c.execute(*self._statement(orgs)).fetchall())
        except Exception as exc:  # the store's outage: try again next interval
            if not self._failing:
                log.warning("change feed cannot read the store (%s); retrying", exc)
                self._failing = True
                self._tell_everyone()
            return
        if self._failing:
            log.info("change feed reads the store again")
            self._failing = False
            self._tell_everyone()
        # a source without rows (no alert yet) is 0: its first row is a change too
        current = {(org_id, source): 0 for org_id in orgs for source in self._sources()}
        for org_id, source, stamp in rows:
            current[(str(org_id), str(source))] = int(stamp or 0)
        moved: dict[str, set[str]] = {}
        for key, now in current.items():
            before = self._seen.get(key)
            self._seen[key] = now
            if before is not None and before != now:  # None: the org's first poll
                moved.setdefault(key[0], set()).add(_SOURCES[key[1]][0])
        for org_id, kinds in moved.items():
            self.publish(org_id, frozenset(kinds))

    def _statement(self, orgs: list[str]) -> tuple[str, list[str]]:
        # one scalar subquery per org and kind: PostgreSQL's min/max rule turns each into one
        # index probe (a GROUP BY over an IN list would read every row)
        parts, params = [], []
        for org_id in orgs:
            for source in self._sources():
                parts.append(
                    f"SELECT CAST(? AS VARCHAR) AS org_id, '{source}' AS source,"
                    f" ({_SOURCES[source][1]}) AS stamp"
                )
                params += [org_id, org_id]
        return " UNION ALL ".join(parts), params
