"""The actor runtime: messaging, overflow policies, supervision, escalation, graceful stop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from common.actors import (
    Actor,
    ActorRef,
    ActorStopped,
    ChildSpec,
    EscalationError,
    MailboxFull,
    OverflowPolicy,
    Supervisor,
    Timer,
)
from common.clock import ManualClock

T = TypeVar("T")
GUARD_S = 2.0  # only a hang guard: every wait below completes in a few loop iterations


async def guarded(aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, GUARD_S)


class FakeSleep:
    """Records the requested delays and returns at once: backoff without waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


class Boom(Exception):
    pass


class Counter(Actor[str]):
    """Counts "inc"; "get" replies with the count; "boom" crashes."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.count = 0
        self.log = log if log is not None else []

    async def receive(self, msg: str) -> object:
        if msg == "boom":
            raise Boom("kaboom")
        if msg == "quit":
            self.stop_self()
            return "bye"
        if msg == "inc":
            self.count += 1
        return self.count

    async def on_start(self) -> None:
        self.log.append("start")

    async def on_stop(self) -> None:
        self.log.append("stop")


class Gated(Actor[int]):
    """Holds every message at a gate, so a test can fill the mailbox behind it."""

    def __init__(self, gate: asyncio.Event, entered: asyncio.Event, seen: list[object]) -> None:
        self.gate, self.entered, self.seen = gate, entered, seen

    async def receive(self, msg: int) -> object:
        self.entered.set()
        await self.gate.wait()
        self.seen.append(msg)
        return msg * 10

    async def on_stop(self) -> None:
        self.seen.append("on_stop")


@pytest.fixture
def fake_sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def root(
    fake_sleep: FakeSleep, clock: ManualClock, gate: asyncio.Event
) -> AsyncIterator[Supervisor]:
    sup = Supervisor("root", max_restarts=10, clock=clock, sleep=fake_sleep)
    yield sup
    gate.set()  # a test that failed half-way must not leave an actor stuck at the gate
    await guarded(sup.stop(drain=False))


async def start_gated(
    sup: Supervisor, policy: OverflowPolicy, gate: asyncio.Event, capacity: int = 2
) -> tuple[ActorRef[int], list[object]]:
    """A gated actor already holding message 1, with an empty mailbox of `capacity`."""
    entered = asyncio.Event()
    seen: list[object] = []
    ref = await sup.start_child(
        ChildSpec("gated", lambda: Gated(gate, entered, seen), capacity=capacity, policy=policy)
    )
    ref.tell(1)
    await guarded(entered.wait())
    assert ref.mailbox_size == 0
    return ref, seen


# --- messaging --------------------------------------------------------------------------------


async def test_tell_then_ask_round_trip(root: Supervisor) -> None:
    ref = await root.start_child(ChildSpec("counter", Counter))
    for _ in range(3):
        ref.tell("inc")
    assert await guarded(ref.ask("get")) == 3
    stats = ref.stats
    assert (stats.received, stats.processed, stats.failures) == (4, 4, 0)
    assert ref.name == "counter"


async def test_ask_raises_the_actors_exception_and_it_counts_as_a_crash(
    root: Supervisor,
) -> None:
    instances: list[Counter] = []

    def factory() -> Counter:
        instances.append(Counter())
        return instances[-1]

    ref = await root.start_child(ChildSpec("counter", factory))
    ref.tell("inc")
    with pytest.raises(Boom, match="kaboom"):
        await guarded(ref.ask("boom"))
    assert await guarded(ref.ask("get")) == 0  # a fresh instance answered
    assert len(instances) == 2
    assert (ref.stats.failures, ref.stats.restarts) == (1, 1)


async def test_ask_timeout(root: Supervisor, gate: asyncio.Event) -> None:
    ref, _ = await start_gated(root, OverflowPolicy.BLOCK, gate)
    with pytest.raises(TimeoutError):
        await ref.ask(2, timeout=0.01)
    gate.set()


# --- supervision ------------------------------------------------------------------------------


async def test_crashed_child_is_restarted_and_the_same_ref_keeps_working(
    root: Supervisor,
) -> None:
    log: list[str] = []
    ref = await root.start_child(ChildSpec("counter", lambda: Counter(log)))
    ref.tell("inc")
    ref.tell("boom")
    ref.tell("inc")  # queued behind the crash: handled by the new instance
    ref.tell("inc")
    assert await guarded(ref.ask("get")) == 2
    # the crashed instance was stopped before its replacement started
    assert log == ["start", "stop", "start"]
    assert ref.stats.restarts == 1
    assert root.state == "running"


async def test_backoff_delays_grow_cap_and_reset_after_the_window(
    fake_sleep: FakeSleep, clock: ManualClock
) -> None:
    sup = Supervisor(
        "root",
        max_restarts=10,
        window_s=60,
        backoff_base_s=0.1,
        backoff_max_s=0.3,
        clock=clock,
        sleep=fake_sleep,
    )
    ref = await sup.start_child(ChildSpec("counter", Counter))
    for _ in range(4):
        with pytest.raises(Boom):
            await guarded(ref.ask("boom"))
    await guarded(ref.ask("get"))  # waits until the last restart happened
    assert fake_sleep.delays == pytest.approx([0.1, 0.2, 0.3, 0.3])

    clock.advance(61)  # the earlier crashes fall out of the window: backoff starts over
    with pytest.raises(Boom):
        await guarded(ref.ask("boom"))
    await guarded(ref.ask("get"))
    assert fake_sleep.delays[-1] == pytest.approx(0.1)
    assert ref.stats.restarts == 5
    await sup.stop()


async def test_repeated_crashes_escalate_to_the_root(
    fake_sleep: FakeSleep, clock: ManualClock
) -> None:
    sup = Supervisor("root", max_restarts=2, window_s=60, clock=clock, sleep=fake_sleep)
    bystander_log: list[str] = []
    bystander = await sup.start_child(ChildSpec("bystander", lambda: Counter(bystander_log)))
    flaky = await sup.start_child(ChildSpec("flaky", Counter))
    for _ in range(3):
        flaky.tell("boom")

    with pytest.raises(EscalationError) as info:
        await guarded(sup.wait())
    assert info.value.child == "flaky"
    assert info.value.path == ("flaky",)
    assert isinstance(info.value.__cause__, Boom)
    assert sup.state == "failed"
    assert flaky.stats.failures == 3 and flaky.stats.restarts == 2
    # the supervisor stopped its other children too, and the refs now refuse messages
    assert bystander_log == ["start", "stop"]
    with pytest.raises(ActorStopped):
        bystander.tell("inc")
    with pytest.raises(EscalationError):  # stopping afterwards does not hide the failure
        await sup.stop()
        await guarded(sup.wait())


async def test_crashes_spread_beyond_the_window_do_not_escalate(
    fake_sleep: FakeSleep, clock: ManualClock
) -> None:
    sup = Supervisor("root", max_restarts=1, window_s=10, clock=clock, sleep=fake_sleep)
    ref = await sup.start_child(ChildSpec("flaky", Counter))
    for _ in range(3):
        with pytest.raises(Boom):
            await guarded(ref.ask("boom"))
        assert await guarded(ref.ask("get")) == 0
        clock.advance(11)
    assert sup.state == "running"
    assert ref.stats.restarts == 3
    await sup.stop()


async def test_nested_supervisor_failure_restarts_the_whole_subtree_with_the_same_refs(
    fake_sleep: FakeSleep, clock: ManualClock
) -> None:
    root = Supervisor("root", max_restarts=5, clock=clock, sleep=fake_sleep)
    sub_sleep = FakeSleep()
    sub = await root.start_supervisor(
        Supervisor("sub", max_restarts=0, clock=clock, sleep=sub_sleep)
    )
    sibling_log: list[str] = []
    sibling = await sub.start_child(ChildSpec("sibling", lambda: Counter(sibling_log)))
    flaky = await sub.start_child(ChildSpec("flaky", Counter))
    sibling.tell("inc")

    with pytest.raises(Boom):
        await guarded(flaky.ask("boom"))  # sub allows no restarts: it escalates to root
    assert await guarded(flaky.ask("get")) == 0
    assert await guarded(sibling.ask("get")) == 0  # the sibling was restarted too
    assert sibling_log == ["start", "stop", "start"]
    assert fake_sleep.delays == pytest.approx([0.1])  # root's backoff for the subtree
    assert sub_sleep.delays == []
    assert (root.state, sub.state) == ("running", "running")
    assert flaky.stats.restarts == 1 and sibling.stats.restarts == 1
    await root.stop()
    assert sub.state == "stopped"


async def test_nested_escalation_reaches_the_root(
    fake_sleep: FakeSleep, clock: ManualClock
) -> None:
    class NeverStarts(Counter):
        async def on_start(self) -> None:
            raise Boom("no device")

    root = Supervisor("root", max_restarts=1, clock=clock, sleep=fake_sleep)
    sub = await root.start_supervisor(
        Supervisor("sub", max_restarts=1, clock=clock, sleep=fake_sleep)
    )
    ref = await sub.start_child(ChildSpec("flaky", NeverStarts))

    with pytest.raises(EscalationError) as info:
        await guarded(root.wait())
    err = info.value
    assert (err.supervisor, err.child, err.path) == ("root", "sub", ("sub", "flaky"))
    assert isinstance(err.__cause__, EscalationError) and err.__cause__.child == "flaky"
    assert isinstance(err.__cause__.__cause__, Boom)
    # sub escalated twice (1 restart allowed each time), root restarted it once, then gave up
    assert ref.stats.failures == 4
    assert (root.state, sub.state) == ("failed", "stopped")
    with pytest.raises(ActorStopped):
        ref.tell("inc")


async def test_transient_child_stays_down_after_a_normal_exit_permanent_restarts(
    root: Supervisor,
) -> None:
    transient = await root.start_child(ChildSpec("t", Counter, restart="transient"))
    permanent = await root.start_child(ChildSpec("p", Counter))
    assert await guarded(transient.ask("quit")) == "bye"
    assert await guarded(permanent.ask("quit")) == "bye"
    assert await guarded(permanent.ask("get")) == 0
    assert permanent.stats.restarts == 1
    with pytest.raises(ActorStopped):
        transient.tell("get")
    assert transient.stats.restarts == 0


# --- overflow policies ------------------------------------------------------------------------


async def test_drop_newest_drops_and_counts_the_incoming(
    root: Supervisor, gate: asyncio.Event
) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.DROP_NEWEST, gate)
    for msg in (2, 3, 4, 5):
        ref.tell(msg)
    with pytest.raises(MailboxFull):  # an ask would never get its reply: it fails instead
        await guarded(ref.ask(6))
    assert ref.mailbox_size == 2
    gate.set()
    await guarded(root.stop())
    assert seen == [1, 2, 3, "on_stop"]
    assert (ref.stats.dropped, ref.stats.rejected, ref.stats.received) == (3, 0, 3)


async def test_drop_oldest_drops_and_counts_the_queued(
    root: Supervisor, gate: asyncio.Event
) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.DROP_OLDEST, gate)
    pushed_out = asyncio.ensure_future(ref.ask(2))
    await asyncio.sleep(0)
    for msg in (3, 4, 5):
        ref.tell(msg)
    with pytest.raises(MailboxFull):  # its asker learns the message was dropped
        await guarded(pushed_out)
    gate.set()
    await guarded(root.stop())
    assert seen == [1, 4, 5, "on_stop"]
    assert (ref.stats.dropped, ref.stats.rejected) == (2, 0)


async def test_reject_raises_and_counts(root: Supervisor, gate: asyncio.Event) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.REJECT, gate)
    ref.tell(2)
    ref.tell(3)
    with pytest.raises(MailboxFull):
        ref.tell(4)
    with pytest.raises(MailboxFull):
        await guarded(ref.send(5))
    gate.set()
    await guarded(root.stop())
    assert seen == [1, 2, 3, "on_stop"]
    assert (ref.stats.rejected, ref.stats.dropped) == (2, 0)


async def test_block_applies_backpressure_to_send_and_tell_raises(
    root: Supervisor, gate: asyncio.Event
) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.BLOCK, gate)
    await guarded(ref.send(2))
    await guarded(ref.send(3))
    with pytest.raises(MailboxFull):
        ref.tell(99)
    waiting_send = asyncio.ensure_future(ref.send(4))
    waiting_ask = asyncio.ensure_future(ref.ask(5))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting_send.done() and not waiting_ask.done()  # held back: the mailbox is full
    gate.set()
    await guarded(waiting_send)
    assert await guarded(waiting_ask) == 50
    await guarded(root.stop())
    assert seen == [1, 2, 3, 4, 5, "on_stop"]
    assert (ref.stats.rejected, ref.stats.dropped, ref.stats.processed) == (1, 0, 5)


# --- graceful stop ----------------------------------------------------------------------------


async def test_stop_drains_the_mailbox_then_calls_on_stop(
    root: Supervisor, gate: asyncio.Event
) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.BLOCK, gate, capacity=10)
    for msg in (2, 3, 4):
        ref.tell(msg)
    reply = asyncio.ensure_future(ref.ask(5))
    stopping = asyncio.ensure_future(root.stop())
    await asyncio.sleep(0)
    with pytest.raises(ActorStopped):  # closed to new messages while draining
        ref.tell(6)
    gate.set()
    await guarded(stopping)
    assert await guarded(reply) == 50
    assert seen == [1, 2, 3, 4, 5, "on_stop"]
    assert ref.stats.dropped == 0


async def test_stop_without_drain_drops_the_queue(root: Supervisor, gate: asyncio.Event) -> None:
    ref, seen = await start_gated(root, OverflowPolicy.BLOCK, gate, capacity=10)
    ref.tell(2)
    ref.tell(3)
    reply = asyncio.ensure_future(ref.ask(4))
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(root.stop(drain=False))
    await asyncio.sleep(0)
    gate.set()  # the message in hand still completes
    await guarded(stopping)
    with pytest.raises(ActorStopped):
        await guarded(reply)
    assert seen == [1, "on_stop"]
    assert ref.stats.dropped == 3


async def test_stop_goes_in_reverse_start_order(root: Supervisor) -> None:
    order: list[str] = []

    class Named(Counter):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def on_stop(self) -> None:
            order.append(self.name)

    for name in ("store", "rules", "ingress"):
        await root.start_child(ChildSpec(name, functools.partial(Named, name)))
    await guarded(root.stop())
    assert order == ["ingress", "rules", "store"]
    await guarded(root.wait())  # a clean stop: wait() returns


# --- timers -----------------------------------------------------------------------------------


async def test_schedule_every_ticks_and_is_cancelled_when_the_instance_ends(
    root: Supervisor,
) -> None:
    timers: list[Timer] = []
    three_ticks = asyncio.Event()

    class Ticker(Actor[str]):
        def __init__(self) -> None:
            self.ticks = 0

        async def on_start(self) -> None:
            timers.append(self.schedule_every(0.001, "tick"))

        async def receive(self, msg: str) -> object:
            if msg == "boom":
                raise Boom("tick tock")
            self.ticks += 1
            if self.ticks == 3:
                three_ticks.set()
            return self.ticks

    ref = await root.start_child(ChildSpec("ticker", Ticker))
    await guarded(three_ticks.wait())
    assert timers[0].active
    ref.tell("boom")
    three_ticks.clear()
    await guarded(three_ticks.wait())  # the new instance ticks with its own timer
    assert len(timers) == 2
    assert not timers[0].active and timers[1].active
    await guarded(root.stop())
    assert not timers[1].active


async def test_stop_cancels_an_actor_stuck_past_the_shutdown_timeout(
    fake_sleep: FakeSleep, clock: ManualClock, gate: asyncio.Event
) -> None:
    sup = Supervisor("root", shutdown_timeout_s=0.01, clock=clock, sleep=fake_sleep)
    ref, seen = await start_gated(sup, OverflowPolicy.BLOCK, gate)  # the gate never opens
    queued = asyncio.ensure_future(ref.ask(2))
    await asyncio.sleep(0)
    await guarded(sup.stop())
    with pytest.raises(ActorStopped):
        await guarded(queued)
    assert seen == ["on_stop"]  # message 1 never completed, the queued ask was dropped
    assert ref.stats.dropped == 1
