"""A small asyncio actor runtime: bounded mailboxes, supervisors, restarts with backoff.

Each actor is an asyncio task that takes messages one at a time from its own bounded mailbox.
No global registry: refs are handed around explicitly. An `ActorRef` and its mailbox outlive
restarts (a restart only builds a new `Actor` instance from the factory), so refs held by other
actors stay valid and messages queued during a restart are not lost.

Supervision follows Erlang's shape: a supervisor allows `max_restarts` restarts (over all its
children) within `window_s`; one more and it gives up. A nested supervisor that gives up halts
its subtree and reports to its parent, which restarts the whole subtree (same refs, fresh
instances) or gives up in turn. At the root, `wait()` raises `EscalationError`, so the process
can exit non-zero instead of running with a dead part.

Never `await` a supervisor's `stop()` from inside one of its own actors: stop waits for that
actor to finish its current message, which is the one awaiting. Use `asyncio.create_task`.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Literal, Protocol, TypeVar

from common.clock import Clock, SystemClock

__all__ = [
    "Actor",
    "ActorError",
    "ActorRef",
    "ActorStats",
    "ActorStopped",
    "ChildSpec",
    "EscalationError",
    "MailboxFull",
    "OverflowPolicy",
    "SleepFn",
    "Supervisor",
    "Timer",
]

log = logging.getLogger(__name__)

M = TypeVar("M")
SleepFn = Callable[[float], Awaitable[None]]

# Overflow is logged at most this often per actor (the first event always is), so a flood of
# drops cannot flood the log too; the counters in ActorStats stay exact.
_OVERFLOW_LOG_INTERVAL_S = 10.0


# --- errors -----------------------------------------------------------------------------------


class ActorError(Exception):
    """Base of the runtime's errors."""


class MailboxFull(ActorError):
    """The mailbox is at capacity and the policy refuses (REJECT, or tell() under BLOCK)."""


class ActorStopped(ActorError):
    """The actor (or its supervisor) has stopped: the message was not and will not be handled."""


class EscalationError(ActorError):
    """A supervisor gave up: a child failed more often than its restart budget allows."""

    def __init__(
        self,
        supervisor: str,
        child: str,
        max_restarts: int,
        window_s: float,
        cause: BaseException | None,
    ) -> None:
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else "exited"
        super().__init__(
            f"supervisor {supervisor!r} gave up: child {child!r} exceeded the restart budget "
            f"(max {max_restarts} restarts within {window_s:g}s; last: {reason})"
        )
        self.supervisor = supervisor
        self.child = child
        self.__cause__ = cause

    @property
    def path(self) -> tuple[str, ...]:
        """Names from this supervisor's child down to the actor that failed first."""
        inner = self.__cause__
        return (self.child, *inner.path) if isinstance(inner, EscalationError) else (self.child,)


# --- values -----------------------------------------------------------------------------------


class OverflowPolicy(Enum):
    """What a full mailbox does with one more message."""

    BLOCK = "block"  # send()/ask() wait for space (backpressure); tell() raises MailboxFull
    DROP_NEWEST = "drop_newest"  # the incoming message is dropped (ask() raises MailboxFull)
    DROP_OLDEST = "drop_oldest"  # the oldest queued message is dropped to make room
    REJECT = "reject"  # raise MailboxFull to the sender


@dataclass(frozen=True, slots=True)
class ActorStats:
    """A snapshot of one actor's counters, summed over all its incarnations."""

    received: int = 0  # accepted into the mailbox
    processed: int = 0  # receive() returned
    dropped: int = 0  # discarded by DROP_NEWEST/DROP_OLDEST, or by a stop without drain
    rejected: int = 0  # refused to the sender (MailboxFull, ActorStopped)
    failures: int = 0  # exceptions in factory, on_start, receive or on_stop
    restarts: int = 0  # new instances after the first


@dataclass(frozen=True, slots=True)
class ChildSpec(Generic[M]):
    """How a supervisor builds and restarts one actor.

    restart: "permanent" restarts after any exit; "transient" only after a crash, so an actor
    that calls stop_self() stays stopped.
    """

    name: str
    factory: Callable[[], Actor[M]]
    capacity: int = 1000
    policy: OverflowPolicy = OverflowPolicy.BLOCK
    restart: Literal["permanent", "transient"] = "permanent"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ChildSpec.name must not be empty")
        if self.capacity < 1:
            raise ValueError(f"ChildSpec.capacity must be >= 1, got {self.capacity}")


# --- the actor --------------------------------------------------------------------------------


class Actor(ABC, Generic[M]):
    """Subclass and override receive(); on_start()/on_stop() are optional hooks.

    on_stop() runs whenever an instance ends, after a crash too, so resources are released
    before the replacement instance opens its own.
    """

    _cell: _ActorCell[M] | None = None

    @abstractmethod
    async def receive(self, msg: M) -> object:
        """Handle one message; the return value is the reply to ask()."""

    async def on_start(self) -> None:
        """Runs before the first message of each instance; raising counts as a crash."""

    async def on_stop(self) -> None:
        """Runs after the last message of each instance; errors are logged and counted."""

    @property
    def ref(self) -> ActorRef[M]:
        return self._bound().ref

    def schedule_every(self, interval_s: float, msg: M) -> Timer:
        """tell() msg to this actor every interval_s; cancelled when this instance ends.

        A tick that meets a full mailbox is counted and logged like any overflow and skipped.
        """
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        return self._bound().schedule_every(interval_s, msg)

    def stop_self(self) -> None:
        """End this instance after the current message (a normal exit, see ChildSpec.restart)."""
        self._bound().exit_requested = True

    def _bound(self) -> _ActorCell[M]:
        if self._cell is None:
            raise RuntimeError("actor is not running: ref/timers exist only once it is started")
        return self._cell


class Timer:
    """Handle of a periodic tell(); cancel() is idempotent."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    @property
    def active(self) -> bool:
        return not self._task.done()

    def cancel(self) -> None:
        self._task.cancel()


class ActorRef(Generic[M]):
    """The only handle other code has on an actor; stable across restarts."""

    def __init__(self, cell: _ActorCell[M]) -> None:
        self._cell = cell

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r} {self.mailbox_size}/{self.capacity}>"

    @property
    def name(self) -> str:
        return self._cell.spec.name

    @property
    def capacity(self) -> int:
        return self._cell.spec.capacity

    @property
    def policy(self) -> OverflowPolicy:
        return self._cell.spec.policy

    @property
    def stats(self) -> ActorStats:
        return self._cell.stats()

    @property
    def mailbox_size(self) -> int:
        return len(self._cell.mailbox)

    def tell(self, msg: M) -> None:
        """Enqueue without waiting; a full mailbox applies the policy (BLOCK raises here)."""
        self._cell.offer(_Envelope(msg, None))

    async def send(self, msg: M) -> None:
        """Enqueue; under BLOCK wait for space (backpressure), otherwise as tell()."""
        await self._cell.put(_Envelope(msg, None))

    async def ask(
        self,
        msg: M,
        timeout: float | None = None,  # noqa: ASYNC109 - one deadline: queueing and reply
    ) -> object:
        """Enqueue like send() and return receive()'s result, or raise its exception.

        The timeout covers waiting for space and for the reply (TimeoutError). A message whose
        asker gave up is still processed: it may have been half-handled already.
        """
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            await self._cell.put(_Envelope(msg, reply))
            return await reply


# --- internals: mailbox and cell --------------------------------------------------------------


@dataclass(slots=True)
class _Envelope(Generic[M]):
    msg: M
    reply: asyncio.Future[object] | None

    def fail(self, exc: BaseException) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc)


class _Mailbox(Generic[M]):
    """A bounded FIFO with awaitable get/space and two switches: close and interrupt."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.closed = False  # final: no more messages accepted
        self._items: deque[_Envelope[M]] = deque()
        self._interrupted = False  # get() returns None until resume(): used to halt
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, env: _Envelope[M]) -> None:
        self._items.append(env)
        self._readable.set()
        if self.full:
            self._writable.clear()

    def pop_oldest(self) -> _Envelope[M]:
        env = self._items.popleft()
        self._writable.set()
        return env

    def take_all(self) -> list[_Envelope[M]]:
        items = list(self._items)
        self._items.clear()
        self._writable.set()
        return items

    async def wait_for_space(self) -> None:
        # Every waiter wakes on one free slot; those that lose the race wait again.
        while self.full and not self.closed:
            self._writable.clear()
            await self._writable.wait()

    async def get(self) -> _Envelope[M] | None:
        """The next message; None once interrupted, or closed and empty."""
        while True:
            if self._interrupted:
                return None
            if self._items:
                return self.pop_oldest()
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._writable.set()  # blocked senders wake up and see ActorStopped

    def interrupt(self) -> None:
        self._interrupted = True
        self._readable.set()

    def resume(self) -> None:
        self._interrupted = False


CellState = Literal["new", "running", "backoff", "halted", "stopped"]


class _ActorCell(Generic[M]):
    """Everything about one actor that outlives its instances: mailbox, counters, task."""

    def __init__(self, spec: ChildSpec[M], supervisor: Supervisor) -> None:
        self.spec = spec
        self.mailbox: _Mailbox[M] = _Mailbox(spec.capacity)
        self.ref = ActorRef(self)
        self.exit_requested = False
        self._supervisor = supervisor
        self._state: CellState = "new"
        self._halt_requested = False
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._timers: list[asyncio.Task[None]] = []
        self._counts = dict.fromkeys(
            ("received", "processed", "dropped", "rejected", "failures", "restarts"), 0
        )
        self._overflow_logged_at: float | None = None
        self._overflow_unlogged = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def stats(self) -> ActorStats:
        return ActorStats(**self._counts)

    # sending side

    def offer(self, env: _Envelope[M]) -> None:
        if self.mailbox.closed:
            self._counts["rejected"] += 1
            raise ActorStopped(f"actor {self.name!r} is stopped")
        if not self.mailbox.full:
            self._accept(env)
            return
        policy = self.spec.policy
        if policy is OverflowPolicy.DROP_OLDEST:
            oldest = self.mailbox.pop_oldest()
            oldest.fail(MailboxFull(f"actor {self.name!r}: dropped (mailbox full, drop_oldest)"))
            self._overflow("dropped")
            self._accept(env)
        elif policy is OverflowPolicy.DROP_NEWEST:
            self._overflow("dropped")
            if env.reply is not None:  # an asker would otherwise wait for a reply forever
                raise MailboxFull(f"actor {self.name!r}: mailbox full (drop_newest)")
        else:
            self._overflow("rejected")
            raise MailboxFull(
                f"actor {self.name!r}: mailbox full ({self.spec.capacity}, {policy.value})"
            )

    async def put(self, env: _Envelope[M]) -> None:
        if self.spec.policy is OverflowPolicy.BLOCK:
            await self.mailbox.wait_for_space()
        self.offer(env)

    def _accept(self, env: _Envelope[M]) -> None:
        self.mailbox.push(env)
        self._counts["received"] += 1

    def _overflow(self, counter: Literal["dropped", "rejected"]) -> None:
        self._counts[counter] += 1
        self._overflow_unlogged += 1
        now = self._supervisor.clock.monotonic()
        last = self._overflow_logged_at
        if last is None or now - last >= _OVERFLOW_LOG_INTERVAL_S:
            log.warning(
                "actor %r: mailbox full (capacity %d, policy %s): %d message(s) %s since last "
                "report; totals dropped=%d rejected=%d",
                self.name,
                self.spec.capacity,
                self.spec.policy.value,
                self._overflow_unlogged,
                counter,
                self._counts["dropped"],
                self._counts["rejected"],
            )
            self._overflow_logged_at = now
            self._overflow_unlogged = 0

    def _discard_pending(self, why: str) -> None:
        pending = self.mailbox.take_all()
        for env in pending:
            env.fail(ActorStopped(f"actor {self.name!r} stopped before handling the message"))
        if pending:
            self._counts["dropped"] += len(pending)
            log.warning("actor %r: %d queued message(s) dropped (%s)", self.name, len(pending), why)

    # lifecycle, driven by the supervisor

    async def start(self) -> None:
        """Start an instance; returns once its on_start() finished (or failed)."""
        self._ready.clear()
        self._task = asyncio.create_task(self._run(), name=f"actor:{self.name}")
        await self._ready.wait()

    async def halt(self) -> None:
        """End the current instance after its current message; keep the mailbox for resume()."""
        if self._state == "stopped":
            return
        self._halt_requested = True
        await self._end_task(self._supervisor.shutdown_timeout_s)
        self._state = "halted"

    async def resume(self) -> None:
        if self._state == "stopped":
            return
        self._halt_requested = False
        self.mailbox.resume()
        self._counts["restarts"] += 1
        await self.start()

    async def stop(self, drain: bool) -> None:
        """Refuse new messages, handle (drain) or drop the queued ones, then end for good."""
        if self._state == "stopped":
            return
        self.mailbox.close()
        if not drain:
            self._discard_pending("stopped without drain")
        await self._end_task(self._supervisor.shutdown_timeout_s)
        # Left over when there was no instance to drain them: halted, in backoff, or crashed.
        self._discard_pending("stopped while not running")
        self._state = "stopped"

    async def _end_task(self, timeout_s: float | None) -> None:
        task = self._task
        if task is None or task.done():
            return
        if self._state == "backoff":
            task.cancel()  # nothing in flight: only the restart wait is interrupted
        elif self._halt_requested:
            self.mailbox.interrupt()
        # else: stopping, and the mailbox is closed: the loop ends once it is empty.
        done, _ = await asyncio.wait({task}, timeout=timeout_s)  # never raises
        if not done:
            # A receive() that never returns must not hang shutdown or escalation forever.
            log.error("actor %r did not end within %gs: cancelling it", self.name, timeout_s)
            task.cancel()
            await asyncio.wait({task}, timeout=timeout_s)

    def schedule_every(self, interval_s: float, msg: M) -> Timer:
        task = asyncio.create_task(self._tick(interval_s, msg), name=f"timer:{self.name}")
        self._timers.append(task)
        return Timer(task)

    async def _tick(self, interval_s: float, msg: M) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.offer(_Envelope(msg, None))
            except MailboxFull:
                pass  # counted and logged in offer(); the next tick will try again
            except ActorStopped:
                return

    async def _run(self) -> None:
        while True:
            error = await self._incarnation()
            if self._halt_requested or self.mailbox.closed:
                return  # ended from outside: the supervisor is halting or stopping us
            if error is None and self.spec.restart == "transient":
                log.info("actor %r exited normally", self.name)
                self.mailbox.close()
                self._discard_pending("exited")
                self._state = "stopped"
                return
            delay = self._supervisor._child_exited(self, error)
            if delay is None:
                return  # the supervisor gave up; it will halt or stop us
            self._state = "backoff"
            log.info("actor %r: restarting in %.3gs", self.name, delay)
            await self._supervisor.sleep(delay)
            self._counts["restarts"] += 1

    async def _incarnation(self) -> Exception | None:
        """Run one instance until it ends; return its crash, or None for a normal end."""
        self._state = "running"
        self.exit_requested = False
        try:
            instance = self.spec.factory()
        except Exception as exc:
            self._crashed("factory", exc)
            self._ready.set()
            return exc
        instance._cell = self
        try:
            try:
                await instance.on_start()
            except Exception as exc:
                self._crashed("on_start", exc)
                return exc
            finally:
                self._ready.set()
            while not (self._halt_requested or self.exit_requested):
                env = await self.mailbox.get()
                if env is None:
                    break
                try:
                    result = await instance.receive(env.msg)
                except Exception as exc:
                    self._crashed("receive", exc)
                    env.fail(exc)  # the asker sees it too, and it still counts as a crash
                    return exc
                except BaseException:
                    env.fail(ActorStopped(f"actor {self.name!r} was cancelled"))
                    raise
                self._counts["processed"] += 1
                if env.reply is not None and not env.reply.done():
                    env.reply.set_result(result)
            return None
        finally:
            await self._end_instance(instance)

    async def _end_instance(self, instance: Actor[M]) -> None:
        timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if timers:
            await asyncio.wait(timers)
        try:
            await instance.on_stop()
        except Exception as exc:
            self._counts["failures"] += 1
            log.error("actor %r: on_stop failed", self.name, exc_info=exc)

    def _crashed(self, where: str, exc: Exception) -> None:
        self._counts["failures"] += 1
        log.error("actor %r crashed in %s", self.name, where, exc_info=exc)


# --- supervision ------------------------------------------------------------------------------


class _Child(Protocol):
    @property
    def name(self) -> str: ...
    async def halt(self) -> None: ...
    async def resume(self) -> None: ...
    async def stop(self, drain: bool) -> None: ...


SupervisorState = Literal["running", "failing", "halted", "stopping", "stopped", "failed"]


class Supervisor:
    """Starts actors (and nested supervisors), restarts them with backoff, escalates.

    The restart budget is shared by all children (Erlang's intensity): more than max_restarts
    restarts within window_s and this supervisor gives up. The backoff before a restart is
    backoff_base_s * 2**(n-1), capped at backoff_max_s, where n counts that child's restarts
    inside the window, so a child that has been quiet for window_s starts again from base.

    shutdown_timeout_s bounds, per actor, how long stop() (including its drain) and a halt
    for escalation wait before cancelling the actor's task (real time, like Erlang's shutdown);
    the in-flight asker then gets ActorStopped and on_stop() still runs.
    """

    def __init__(
        self,
        name: str = "root",
        *,
        max_restarts: int = 3,
        window_s: float = 60.0,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 30.0,
        shutdown_timeout_s: float | None = 30.0,
        clock: Clock | None = None,
        sleep: SleepFn | None = None,
    ) -> None:
        if max_restarts < 0 or window_s <= 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("max_restarts, window_s and the backoff times must be positive")
        if shutdown_timeout_s is not None and shutdown_timeout_s <= 0:
            raise ValueError("shutdown_timeout_s must be positive (or None: wait forever)")
        self._name = name
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.sleep: SleepFn = sleep if sleep is not None else asyncio.sleep
        self._state: SupervisorState = "running"
        self._parent: Supervisor | None = None
        self._children: list[_Child] = []
        self._history: deque[tuple[float, str]] = deque()  # (monotonic time, child name)
        self._failure_task: asyncio.Task[None] | None = None
        self._error: EscalationError | None = None
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Supervisor {self._name!r} {self._state} children={len(self._children)}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> SupervisorState:
        return self._state

    async def start_child(self, spec: ChildSpec[M]) -> ActorRef[M]:
        """Start an actor; returns once its first on_start() has run."""
        self._check_can_add(spec.name)
        cell = _ActorCell(spec, self)
        self._children.append(cell)
        await cell.start()
        return cell.ref

    async def start_supervisor(self, child: Supervisor) -> Supervisor:
        """Adopt a fresh supervisor as a child: its escalations come here."""
        self._check_can_add(child.name)
        if child is self or child._parent is not None or child._state != "running":
            raise ValueError(f"supervisor {child.name!r} cannot be adopted by {self.name!r}")
        child._parent = self
        self._children.append(child)
        return child

    async def stop(self, drain: bool = True) -> None:
        """Stop the children in reverse start order; each drains its mailbox unless drain=False.

        Stopping does not hide a failure: wait() still raises if this supervisor had given up.
        """
        if self._state in ("stopping", "stopped", "failed"):
            return
        self._state = "stopping"
        await self._cancel_failure_task()
        for child in reversed(self._children):
            await child.stop(drain)
        self._state = "stopped"
        self._done.set()

    async def wait(self) -> None:
        """Return when stopped; raise EscalationError if this (root) supervisor gave up."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    # as a child of another supervisor

    async def halt(self) -> None:
        if self._state in ("stopping", "stopped", "failed"):
            return
        self._state = "halted"
        await self._cancel_failure_task()
        for child in reversed(self._children):
            await child.halt()

    async def resume(self) -> None:
        if self._state != "halted":
            return
        self._history.clear()
        self._state = "running"
        for child in self._children:
            await child.resume()

    # failure handling

    def _child_exited(self, child: _Child, error: BaseException | None) -> float | None:
        """Called when a child ends unasked: the backoff before restarting it, or None."""
        if self._state != "running":
            return None  # halting, stopping or already escalating: no restarts now
        now = self.clock.monotonic()
        while self._history and now - self._history[0][0] > self.window_s:
            self._history.popleft()
        self._history.append((now, child.name))
        if len(self._history) > self.max_restarts:
            self._escalate(child.name, error)
            return None
        n = sum(1 for _, name in self._history if name == child.name)
        return float(min(self.backoff_max_s, self.backoff_base_s * 2 ** (n - 1)))

    def _escalate(self, child: str, error: BaseException | None) -> None:
        err = EscalationError(self._name, child, self.max_restarts, self.window_s, error)
        log.error("supervisor %r: %s", self._name, err)
        self._state = "failing"
        if self._parent is None:
            self._error = err  # kept even if stop() interrupts the handling below
        self._failure_task = asyncio.create_task(
            self._handle_failure(err), name=f"supervisor:{self._name}:failure"
        )

    async def _handle_failure(self, err: EscalationError) -> None:
        for child in reversed(self._children):
            await child.halt()
        parent = self._parent
        if parent is None:
            self._state = "failed"
            for child in reversed(self._children):
                await child.stop(False)
            self._done.set()
            return
        self._state = "halted"
        delay = parent._child_exited(self, err)
        if delay is None:
            return  # the parent gave up too; it halts or stops this subtree
        log.info("supervisor %r: restarting subtree %r in %.3gs", parent.name, self._name, delay)
        await parent.sleep(delay)
        await self.resume()

    async def _cancel_failure_task(self) -> None:
        task = self._failure_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait({task})

    def _check_can_add(self, name: str) -> None:
        if self._state != "running":
            raise ActorStopped(f"supervisor {self._name!r} is {self._state}")
        if any(c.name == name for c in self._children):
            raise ValueError(f"supervisor {self._name!r} already has a child named {name!r}")
