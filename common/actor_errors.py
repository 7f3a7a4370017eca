"""The actor runtime's exceptions, one small tree: ActorError, with MailboxFull (a full
mailbox whose policy refuses), ActorStopped (the message was not and will not be handled) and
EscalationError (a supervisor gave up, naming the path down to the actor that failed first).
Kept apart so that senders can catch them without importing the runtime's machinery."""

from __future__ import annotations


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
