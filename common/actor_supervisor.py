"""Supervisor: starts actors, loops and nested supervisors, restarts them with backoff, escalates.
Supervision follows Erlang's shape: a supervisor allows max_restarts restarts (over all its
children) within window_s; one more and it gives up. A nested supervisor that gives up halts
its subtree and reports to its parent, which restarts the whole subtree (same refs, fresh
instances) or gives up in turn. At the root, wait() raises EscalationError, so the process can
exit non-zero instead of running with a dead part. Never await a supervisor's stop() from
inside one of its own actors: stop waits for that actor to finish its current message, which is
the one awaiting; use asyncio.create_task."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Literal, Protocol, TypeVar

from common.actor_cell import ActorCell
from common.actor_errors import ActorStopped, EscalationError
from common.actor_ref import ActorRef
from common.actor_specs import ChildSpec, SleepFn
from common.actor_task import LoopFactory, TaskChild
from common.backoff import ceiling_s
from common.clock import Clock, SystemClock

# The runtime's one logger keeps the name it had before the runtime was split into modules.
log = logging.getLogger("common.actors")

M = TypeVar("M")


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
        cell = ActorCell(spec, self)
        self._children.append(cell)
        await cell.start()
        return cell.ref

    def start_task(self, name: str, factory: LoopFactory) -> TaskChild:
        """Run a loop (`factory()` makes it) as a child: restarted with backoff when it fails,
        within this supervisor's restart budget."""
        self._check_can_add(name)
        child = TaskChild(name, factory, self)
        self._children.append(child)
        child.start()
        return child

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
        return ceiling_s(n, self.backoff_base_s, self.backoff_max_s)

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
