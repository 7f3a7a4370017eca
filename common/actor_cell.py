"""ActorCell: everything about one actor that outlives its instances (mailbox, counters, task,
timers) and the loop that runs one instance after another. The sending side applies the
mailbox's overflow policy, counted and logged at most once per 10 s; the lifecycle side
(start, halt, resume, stop) is driven by the actor's supervisor (common.actor_supervisor), which
the cell asks for a backoff when an instance ends unasked. A restart only builds a new Actor
from the factory, so refs held elsewhere stay valid and queued messages are not lost."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from common.actor_errors import ActorStopped, MailboxFull
from common.actor_mailbox import Envelope, Mailbox
from common.actor_ref import ActorRef, Timer
from common.actor_specs import ActorStats, ChildSpec, OverflowPolicy

if TYPE_CHECKING:
    from common.actor_supervisor import Supervisor
    from common.actors import Actor

# The runtime's one logger keeps the name it had before the runtime was split into modules.
log = logging.getLogger("common.actors")

M = TypeVar("M")

# Overflow is logged at most this often per actor (the first event always is), so a flood of
# drops cannot flood the log too; the counters in ActorStats stay exact.
_OVERFLOW_LOG_INTERVAL_S = 10.0

CellState = Literal["new", "running", "backoff", "halted", "stopped"]


class ActorCell(Generic[M]):
    """Everything about one actor that outlives its instances: mailbox, counters, task."""

    def __init__(self, spec: ChildSpec[M], supervisor: Supervisor) -> None:
        self.spec = spec
        self.mailbox: Mailbox[M] = Mailbox(spec.capacity)
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

    def offer(self, env: Envelope[M]) -> None:
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

    async def put(self, env: Envelope[M]) -> None:
        if self.spec.policy is OverflowPolicy.BLOCK:
            await self.mailbox.wait_for_space()
        self.offer(env)

    def _accept(self, env: Envelope[M]) -> None:
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
                self.offer(Envelope(msg, None))
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
