"""The actor runtime's plain values: ChildSpec (how a supervisor builds and restarts one actor),
OverflowPolicy (what a full mailbox does with one more message: overflow is a declared policy,
never an accident) and ActorStats (an actor's counters, summed over its incarnations). Frozen
and free of asyncio, so configuration and status code can use them without running anything."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from common.actors import Actor

M = TypeVar("M")
SleepFn = Callable[[float], Awaitable[None]]


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
