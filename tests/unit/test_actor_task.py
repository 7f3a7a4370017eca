"""Supervised loops (Supervisor.start_task): restarted with backoff when they fail, within the
supervisor's restart budget; escalated past it; cancelled by stop()."""

from __future__ import annotations

import asyncio

import pytest

from common.actors import EscalationError, Supervisor


def supervisor(delays: list[float], max_restarts: int = 3) -> Supervisor:
    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    return Supervisor("test", max_restarts=max_restarts, backoff_base_s=0.1, sleep=sleep)


async def test_a_failing_loop_is_restarted_with_backoff() -> None:
    delays: list[float] = []
    root = supervisor(delays)
    runs: list[int] = []
    running = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ConnectionError("broker gone")
        running.set()
        await asyncio.Event().wait()  # runs until stopped

    child = root.start_task("ingress", loop)
    await asyncio.wait_for(running.wait(), 2)
    assert child.restarts == 2 and delays == [0.1, 0.2]
    await root.stop()
    await root.wait()  # stopped, no escalation
    assert len(runs) == 3


async def test_past_the_restart_budget_the_supervisor_escalates() -> None:
    delays: list[float] = []
    root = supervisor(delays, max_restarts=2)

    async def loop() -> None:
        raise RuntimeError("always")

    root.start_task("watchdog", loop)
    with pytest.raises(EscalationError, match="watchdog"):
        await asyncio.wait_for(root.wait(), 2)
    assert delays == [0.1, 0.2]


async def test_stop_cancels_the_loop_and_a_loop_that_returns_is_not_restarted() -> None:
    root = supervisor([])
    cancelled = asyncio.Event()
    finished: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def once() -> None:
        finished.append("done")

    root.start_task("forever", forever)
    child = root.start_task("once", once)
    await asyncio.sleep(0.01)
    assert finished == ["done"] and child.restarts == 0
    await root.stop()
    assert cancelled.is_set()
