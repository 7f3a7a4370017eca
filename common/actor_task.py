"""A long-running loop supervised like an actor: restarted with the supervisor's backoff when
it fails, counted in its restart budget, halted and resumed with its subtree.

For parts that are a loop rather than a mailbox (a broker session that reconnects, a watchdog
that restarts a child process): they handle the failures they expect themselves; anything else
ends the loop, and the supervisor starts it again or escalates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.actor_supervisor import Supervisor

log = logging.getLogger("common.actors")

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class TaskChild:
    """One supervised loop: `factory()` makes a fresh coroutine for each (re)start."""

    def __init__(self, name: str, factory: LoopFactory, supervisor: Supervisor) -> None:
        self._name = name
        self._factory = factory
        self._supervisor = supervisor
        self._task: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def name(self) -> str:
        return self._name

    def start(self) -> None:
        task = asyncio.create_task(self._factory(), name=f"task:{self._name}")
        task.add_done_callback(self._ended)
        self._task = task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task is not self._task or task.cancelled():
            return  # stopped or halted on purpose
        error = task.exception()
        if error is None:
            log.info("supervised loop %r ended", self._name)  # done: nothing to restart
            return
        log.error("supervised loop %r failed: %r", self._name, error, exc_info=error)
        delay = self._supervisor._child_exited(self, error)
        if delay is None:
            return  # the supervisor gives up (or is stopping)
        self._restart = asyncio.create_task(self._restart_after(delay))

    async def _restart_after(self, delay: float) -> None:
        await self._supervisor.sleep(delay)
        self.restarts += 1
        log.info("supervised loop %r restarting (restart #%d)", self._name, self.restarts)
        self.start()

    async def _cancel(self) -> None:
        for task in (self._restart, self._task):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
                await asyncio.wait({task})
        self._restart = None
        self._task = None

    async def halt(self) -> None:
        await self._cancel()

    async def resume(self) -> None:
        if self._task is None:
            self.start()

    async def stop(self, drain: bool) -> None:
        await self._cancel()
