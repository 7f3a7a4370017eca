"""One device message in, one durable outcome out: the path CoAP and HTTP ingress share.

`DeviceIngest.ingest` classifies the message with the same pure Classifier as MQTT, hands the
readings (or the rejection record) to the store actor and returns only after the commit that
holds them, so a device is told "accepted" only for what a crash cannot lose.

Requests that arrive within GROUP_WINDOW_S travel to the store as one Ingest (one mailbox
message, one confirmation): per-request messages would cost the store actor a wakeup each, and
aiocoap hands over few datagrams per event-loop iteration (one, stock), so grouping by
iteration made groups of one or a few. The window is small next to the store's own batching
delay (batch_max_delay_ms).

The number of requests waiting for a commit is bounded; beyond it, and when the store mailbox is
full, the answer is "unavailable, retry" (CoAP 5.03 / HTTP 503) rather than an unbounded queue.
When the store cannot write (a full disk, an I/O error) the answer says so: HTTP 507 Insufficient
Storage for a full disk (503 otherwise), CoAP 5.03 (CoAP has no 5.07), both with Retry-After /
Max-Age STORAGE_RETRY_AFTER_S and a problem document; nothing of the message was stored.

Two ways in: `submit` classifies at once and returns a Pending whose `committed` future is
shared by every message of the group (the CoAP fast path answers from a done-callback: no task,
no future and no coroutine chain per request), and the `ingest` coroutine, which awaits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from common.actors import ActorRef, ActorStopped, MailboxFull
from common.clock import Clock
from common.codecs import ContentFormat, PayloadError
from common.model import Reading
from common.problem import Problem
from edge.ingest.classify import Classifier, Outcome, rejected
from edge.storage.actor import Confirm, Ingest, StoreMsg
from edge.storage.store import Rejection, StoreUnavailable

log = logging.getLogger("iotsphere.device_ingest")

DEFAULT_MAX_IN_FLIGHT = 20_000
RETRY_AFTER_S = 1  # what an unavailable answer suggests
# A full disk rarely clears within a second: a longer wait keeps every device's retries to a
# trickle while the store probes (every second) and resumes by itself.
STORAGE_RETRY_AFTER_S = 5
SERVICE_UNAVAILABLE = 503
INSUFFICIENT_STORAGE = 507  # RFC 4918: the server cannot store what it was sent
GROUP_WINDOW_S = 0.005


class IngestUnavailable(Exception):
    """The gateway cannot take this message now (overloaded, stopping, or the commit failed).

    Nothing of the message was acknowledged; the device should retry after `retry_after_s`.
    `storage`: the store cannot write (`storage_full`: its disk is full)."""

    def __init__(
        self,
        reason: str,
        retry_after_s: int = RETRY_AFTER_S,
        *,
        storage: bool = False,
        storage_full: bool = False,
    ) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s
        self.storage = storage or storage_full
        self.storage_full = storage_full

    @classmethod
    def from_store(cls, error: StoreUnavailable) -> IngestUnavailable:
        # The device learns that storage failed, not DuckDB's message (it names local paths).
        full = error.failure.disk_full
        reason = "the gateway's storage is full" if full else "the gateway cannot store data"
        return cls(reason, STORAGE_RETRY_AFTER_S, storage=True, storage_full=full)

    @property
    def status(self) -> int:
        """The HTTP status: 507 for a full disk, else 503."""
        return INSUFFICIENT_STORAGE if self.storage_full else SERVICE_UNAVAILABLE

    @property
    def problem(self) -> Problem:
        return self.problem_as(self.status)

    def problem_as(self, status: int) -> Problem:
        """The problem document with this status (CoAP answers a full disk with 5.03)."""
        slug, title = "unavailable", "Gateway busy"
        if self.storage_full:
            slug, title = "insufficient-storage", "Gateway storage full"
        elif self.storage:
            slug, title = "storage-unavailable", "Gateway storage unavailable"
        return Problem(
            slug=slug,
            title=title,
            status=status,
            detail=f"{self}; nothing was stored, retry after {self.retry_after_s} s",
            extra={"retry_after": self.retry_after_s},
        )


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Durably committed: either `readings` stored (or already there) or a recorded rejection."""

    readings: int
    problem: Problem | None = None  # set when rejected; its status is the wire code

    @property
    def accepted(self) -> bool:
        return self.problem is None


# The results of accepted messages of up to 64 readings, made once (they are immutable).
_ACCEPTED = tuple(IngestResult(n) for n in range(65))


@dataclass(slots=True)
class IngestStats:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    readings: int = 0
    unavailable: int = 0
    groups: int = 0


@dataclass(slots=True)
class _Group:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    messages: int = 0
    accepted: int = 0
    sealing: bool = False  # seal_soon() has scheduled it
    # The Pending of an accepted message of n readings, made once per group: all are alike.
    accepted_pending: dict[int, Pending] = field(default_factory=dict)
    committed: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(slots=True)  # not frozen: one per message, and a frozen __init__ costs twice as much
class Pending:
    """A message handed to the store: `result` holds once `committed` is done without an
    exception (IngestUnavailable: nothing of it was stored). `committed` is shared by the
    messages of one group: never cancel it; `wait` shields it for a waiting coroutine."""

    committed: asyncio.Future[None]
    result: IngestResult

    async def wait(self) -> IngestResult:
        await asyncio.shield(self.committed)
        return self.result

    def outcome(self) -> IngestResult:
        """For a done-callback: the result, or raises the commit's IngestUnavailable."""
        self.committed.result()
        return self.result


class DeviceIngest:
    def __init__(
        self,
        store: ActorRef[StoreMsg],
        classifier: Classifier,
        clock: Clock,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self._store = store
        self._classifier = classifier
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._open: _Group | None = None
        self._closed = False
        self.stats = IngestStats()

    @property
    def in_flight(self) -> int:
        """Messages classified and waiting for their commit."""
        return self._in_flight

    def close(self) -> None:
        """Refuse new messages (the gateway is stopping); those in flight still complete."""
        self._closed = True

    async def ingest(
        self,
        device_id: str,
        payload: bytes,
        content_format: ContentFormat | int | str | None,
        transport: str,
    ) -> IngestResult:
        """Classify, store, await the commit. `content_format`: a ContentFormat, a CoAP
        Content-Format number, an HTTP media type, or None to recognise the payload."""
        return await self.submit(device_id, payload, content_format, transport).wait()

    async def reject(
        self, device_id: str, payload: bytes, problem: Problem, transport: str
    ) -> IngestResult:
        """Record a rejection the transport itself decided (e.g. a block-wise body over the
        size limit) like any other: durably, then answer."""
        return await self.submit_rejection(device_id, payload, problem, transport).wait()

    def submit(
        self,
        device_id: str,
        payload: bytes,
        content_format: ContentFormat | int | str | None,
        transport: str,
    ) -> Pending:
        """Classify now and join the open group; raises IngestUnavailable when closed or
        over max_in_flight (nothing stored)."""
        self._admit(check_load=True)
        return self._join(self._classify(device_id, payload, content_format, transport))

    def submit_plain_run(
        self, device_id: str, payloads: Sequence[bytes]
    ) -> tuple[Pending | None, int]:
        """(one Pending for them, how many): the longest prefix of `payloads` (one device's
        messages without a content type, in order) that are plain JSON messages, classified
        and joined to the open group together. (None, 0) when the first is not plain, or when
        the gateway is closed or full: submit() then answers for it (and raises)."""
        if self._closed or self._in_flight >= self._max_in_flight:
            return None, 0
        readings, n = self._classifier.plain_json_run(device_id, payloads, self._clock.now_ms())
        if not n:
            return None, 0
        group = self._group()
        group.readings += readings
        group.messages += n
        group.accepted += n
        self.stats.received += n
        self._in_flight += n
        return Pending(group.committed, IngestResult(len(readings))), n

    def submit_rejection(
        self, device_id: str, payload: bytes, problem: Problem, transport: str
    ) -> Pending:
        self._admit(check_load=False)
        return self._join(rejected(device_id, payload, self._clock.now_ms(), transport, problem))

    def _admit(self, *, check_load: bool) -> None:
        if self._closed:
            self.stats.unavailable += 1
            raise IngestUnavailable("the gateway is stopping")
        if check_load and self._in_flight >= self._max_in_flight:
            self.stats.unavailable += 1
            raise IngestUnavailable(f"{self._in_flight} messages are waiting for storage")

    def _join(self, outcome: Outcome) -> Pending:
        group = self._group()
        group.readings.extend(outcome.readings)
        if outcome.rejection is not None:
            group.rejections.append(outcome.rejection)
        group.messages += 1
        self.stats.received += 1
        self._in_flight += 1
        if outcome.problem is not None:
            return Pending(group.committed, IngestResult(0, outcome.problem))
        group.accepted += 1
        count = len(outcome.readings)
        pending = group.accepted_pending.get(count)
        if pending is None:
            result = _ACCEPTED[count] if count < len(_ACCEPTED) else IngestResult(count)
            pending = group.accepted_pending[count] = Pending(group.committed, result)
        return pending

    def _classify(
        self,
        device_id: str,
        payload: bytes,
        content_format: ContentFormat | int | str | None,
        transport: str,
    ) -> Outcome:
        now = self._clock.now_ms()
        fmt: ContentFormat | str | None
        if isinstance(content_format, int) and not isinstance(content_format, ContentFormat):
            try:
                fmt = ContentFormat.from_code(content_format)
            except PayloadError as exc:
                return rejected(device_id, payload, now, transport, exc.problem)
        else:
            fmt = content_format
        return self._classifier.classify(device_id, payload, fmt, now, transport)

    def _group(self) -> _Group:
        if self._open is None:
            self._open = _Group()
            asyncio.get_running_loop().call_later(GROUP_WINDOW_S, self._seal)
        return self._open

    def seal_soon(self) -> None:
        """Send the open group once this event-loop iteration ends, not after the window.

        For a transport that hands over many messages per iteration (the MQTT front reads a
        device's whole TCP segment at once): waiting GROUP_WINDOW_S would add 5 ms to every
        PUBACK, and a device's in-flight window turns latency into lost throughput."""
        if self._open is not None and not self._open.sealing:
            self._open.sealing = True
            asyncio.get_running_loop().call_soon(self._seal_group, self._open)

    def _seal_group(self, group: _Group) -> None:
        if self._open is group:
            self._seal()

    def _seal(self) -> None:
        group, self._open = self._open, None
        if group is None:
            return
        if not group.readings and not group.rejections:
            # Only empty messages (e.g. an empty SenML pack): nothing to make durable, and the
            # store would hold an empty batch's confirmation until some later commit.
            self._settle(group, None)
            return
        self.stats.groups += 1
        try:
            self._store.tell(Ingest(group.readings, group.rejections, self._confirmer(group)))
        except (MailboxFull, ActorStopped) as exc:
            stopped = isinstance(exc, ActorStopped)
            reason = "the store is not accepting" if stopped else "the store queue is full"
            log.warning("device ingest: %s; %d messages refused", reason, group.messages)
            self._settle(group, IngestUnavailable(reason))

    def _confirmer(self, group: _Group) -> Confirm:
        def confirm(error: BaseException | None) -> None:
            if error is None:
                self._settle(group, None)
            elif isinstance(error, StoreUnavailable):
                self._settle(group, IngestUnavailable.from_store(error))
            else:
                self._settle(group, IngestUnavailable(f"the store commit failed: {error}"))

        return confirm

    def _settle(self, group: _Group, failure: IngestUnavailable | None) -> None:
        if group.committed.done():
            return
        self._in_flight -= group.messages
        stats = self.stats
        if failure is None:
            stats.accepted += group.accepted
            stats.rejected += group.messages - group.accepted
            stats.readings += len(group.readings)
            group.committed.set_result(None)
        else:
            stats.unavailable += group.messages
            group.committed.set_exception(failure)
            group.committed.exception()  # retrieved: a group nobody awaits any more is no error


class InFlight:
    """Requests of one transport waiting for their commit, so stop() can let them be answered
    before the listener closes (CoAP and HTTP alike)."""

    def __init__(self, grace_s: float = 5.0) -> None:
        self.count = 0
        self.closing = False  # set by drain(): new requests are refused from then on
        self._grace_s = grace_s
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        """One more request waiting (for callers that answer from a callback)."""
        self.count += 1
        self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self) -> bool:
        """Refuse new requests, wait up to the grace period; False when some are still open."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), self._grace_s)
        except TimeoutError:
            return False
        return True
