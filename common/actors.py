"""A small asyncio actor runtime: bounded mailboxes, supervisors, restarts with backoff. Each
actor is an asyncio task that takes messages one at a time from its own bounded mailbox; this
module holds Actor, the class to subclass, and re-exports the rest, which lives beside it by
job: the handles (common.actor_ref), the per-actor cell that outlives restarts
(common.actor_cell) and its mailbox (common.actor_mailbox), supervision (common.actor_supervisor),
the specs and counters (common.actor_specs) and the exceptions (common.actor_errors). Import
from here; the runtime knows nothing of the gateway."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Generic, TypeVar

from common.actor_errors import ActorError, ActorStopped, EscalationError, MailboxFull
from common.actor_ref import ActorRef, Timer
from common.actor_specs import ActorStats, ChildSpec, OverflowPolicy, SleepFn
from common.actor_supervisor import Supervisor

if TYPE_CHECKING:
    from common.actor_cell import ActorCell

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

M = TypeVar("M")


class Actor(ABC, Generic[M]):
    """Subclass and override receive(); on_start()/on_stop() are optional hooks.

    on_stop() runs whenever an instance ends, after a crash too, so resources are released
    before the replacement instance opens its own.
    """

    _cell: ActorCell[M] | None = None

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

    def _bound(self) -> ActorCell[M]:
        if self._cell is None:
            raise RuntimeError("actor is not running: ref/timers exist only once it is started")
        return self._cell
