"""The handles other code holds on a running actor: ActorRef, the only way to reach an actor
(tell, send, ask; stable across restarts, because it points at the actor's cell, not at an
instance), and Timer, the handle of a periodic tell(). No global registry: refs are handed
around explicitly."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

from common.actor_mailbox import Envelope
from common.actor_specs import ActorStats, OverflowPolicy

if TYPE_CHECKING:
    from common.actor_cell import ActorCell

M = TypeVar("M")


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

    def __init__(self, cell: ActorCell[M]) -> None:
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
        self._cell.offer(Envelope(msg, None))

    async def send(self, msg: M) -> None:
        """Enqueue; under BLOCK wait for space (backpressure), otherwise as tell()."""
        await self._cell.put(Envelope(msg, None))

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
            await self._cell.put(Envelope(msg, reply))
            return await reply
