"""Waiting for a condition in async tests: poll, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def until(predicate: Callable[[], Awaitable[Any] | Any], timeout_s: float = 10.0) -> Any:
    """The predicate's first truthy result (it may be sync or async); TimeoutError after
    timeout_s."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)


def wait_for(fetch: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """The first truthy result of `fetch` (a CLI call, an HTTP GET) in a synchronous test;
    AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = fetch()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
