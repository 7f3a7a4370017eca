"""One device message in, one durable outcome out: the path CoAP and HTTP ingress share.

`DeviceIngest.ingest` classifies the message with the same pure Classifier as MQTT, hands the
readings (or the rejection record) to the store actor and returns only after the commit that
holds them, so a device is told "accepted" only for what a crash cannot lose.

Requests that arrive in the same event-loop iteration travel to the store as one Ingest (one
mailbox message, one confirmation): per-request messages would cost the store actor a wakeup
each. The number of requests waiting for a commit is bounded; beyond it, and when the store
mailbox is full, the answer is "unavailable, retry" (CoAP 5.03 / HTTP 503) rather than an
unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from common.actors import ActorRef, ActorStopped, MailboxFull
from common.clock import Clock
from common.codecs import ContentFormat, PayloadError
from common.model import Reading
from common.problem import Problem
from edge.pipeline import Classifier, Outcome
from edge.store import Rejection
from edge.store_actor import Confirm, Ingest, StoreMsg

log = logging.getLogger("iotsphere.device_ingest")

DEFAULT_MAX_IN_FLIGHT = 20_000
RETRY_AFTER_S = 1  # what an unavailable answer suggests


class IngestUnavailable(Exception):
    """The gateway cannot take this message now (overloaded, stopping, or the commit failed).

    Nothing of the message was acknowledged; the device should retry after `retry_after_s`."""

    def __init__(self, reason: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s

    @property
    def problem(self) -> Problem:
        return Problem(
            slug="unavailable",
            title="Gateway busy",
            status=503,
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
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


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
        if self._closed:
            self.stats.unavailable += 1
            raise IngestUnavailable("the gateway is stopping")
        if self._in_flight >= self._max_in_flight:
            self.stats.unavailable += 1
            raise IngestUnavailable(f"{self._in_flight} messages are waiting for storage")
        return await self._submit(self._classify(device_id, payload, content_format, transport))

    async def reject(
        self, device_id: str, payload: bytes, problem: Problem, transport: str
    ) -> IngestResult:
        """Record a rejection the transport itself decided (e.g. a block-wise body over the
        size limit) like any other: durably, then answer."""
        if self._closed:
            self.stats.unavailable += 1
            raise IngestUnavailable("the gateway is stopping")
        now = self._clock.now_ms()
        return await self._submit(_rejected(device_id, payload, now, transport, problem))

    async def _submit(self, outcome: Outcome) -> IngestResult:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group = self._group()
        group.readings.extend(outcome.readings)
        if outcome.rejection is not None:
            group.rejections.append(outcome.rejection)
        group.waiters.append(waiter)
        self.stats.received += 1
        self._in_flight += 1
        try:
            await waiter
        except IngestUnavailable:
            self.stats.unavailable += 1
            raise
        finally:
            self._in_flight -= 1
        if outcome.problem is not None:
            self.stats.rejected += 1
            return IngestResult(0, outcome.problem)
        self.stats.accepted += 1
        self.stats.readings += len(outcome.readings)
        return IngestResult(len(outcome.readings))

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
                return _rejected(device_id, payload, now, transport, exc.problem)
        else:
            fmt = content_format
        return self._classifier.classify(device_id, payload, fmt, now, transport)

    def _group(self) -> _Group:
        if self._open is None:
            self._open = _Group()
            asyncio.get_running_loop().call_soon(self._seal)
        return self._open

    def _seal(self) -> None:
        group, self._open = self._open, None
        if group is None:
            return
        if not group.readings and not group.rejections:
            # Only empty messages (e.g. an empty SenML pack): nothing to make durable, and the
            # store would hold an empty batch's confirmation until some later commit.
            _confirmer(group.waiters)(None)
            return
        self.stats.groups += 1
        try:
            self._store.tell(Ingest(group.readings, group.rejections, _confirmer(group.waiters)))
        except (MailboxFull, ActorStopped) as exc:
            stopped = isinstance(exc, ActorStopped)
            reason = "the store is not accepting" if stopped else "the store queue is full"
            log.warning("device ingest: %s; %d messages refused", reason, len(group.waiters))
            _fail(group.waiters, IngestUnavailable(reason))


def _confirmer(waiters: list[asyncio.Future[None]]) -> Confirm:
    def confirm(error: BaseException | None) -> None:
        if error is None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        else:
            _fail(waiters, IngestUnavailable(f"the store commit failed: {error}"))

    return confirm


def _fail(waiters: list[asyncio.Future[None]], error: IngestUnavailable) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


def _rejected(device_id: str, payload: bytes, at: int, transport: str, problem: Problem) -> Outcome:
    rejection = Rejection(
        at=at,
        device_id=device_id,
        transport=transport,
        status=problem.status,
        title=problem.title,
        detail=problem.detail,
        errors=tuple(problem.errors),
        payload=payload,
    )
    return Outcome([], rejection, problem)


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
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
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
