"""An actor's mailbox: Envelope (one message and the future its asker awaits) and Mailbox, a
bounded FIFO with awaitable get and space and two switches, close (final: no more messages) and
interrupt (get() returns None until resume(), used to halt an actor without losing its queue).
It knows nothing of policies or counters: the actor's cell (common.actor_cell) decides what a
full mailbox does."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

M = TypeVar("M")


@dataclass(slots=True)
class Envelope(Generic[M]):
    msg: M
    reply: asyncio.Future[object] | None

    def fail(self, exc: BaseException) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc)


class Mailbox(Generic[M]):
    """A bounded FIFO with awaitable get/space and two switches: close and interrupt."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.closed = False  # final: no more messages accepted
        self._items: deque[Envelope[M]] = deque()
        self._interrupted = False  # get() returns None until resume(): used to halt
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, env: Envelope[M]) -> None:
        self._items.append(env)
        self._readable.set()
        if self.full:
            self._writable.clear()

    def pop_oldest(self) -> Envelope[M]:
        env = self._items.popleft()
        self._writable.set()
        return env

    def take_all(self) -> list[Envelope[M]]:
        items = list(self._items)
        self._items.clear()
        self._writable.set()
        return items

    async def wait_for_space(self) -> None:
        # Every waiter wakes on one free slot; those that lose the race wait again.
        while self.full and not self.closed:
            self._writable.clear()
            await self._writable.wait()

    async def get(self) -> Envelope[M] | None:
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
