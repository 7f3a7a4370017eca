"""Waiting for a condition in async tests: poll, never sleep a fixed time."""

from __future__ import annotations

import asyncio
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
