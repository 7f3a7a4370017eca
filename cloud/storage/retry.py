"""Retrying store reads, as the seed's dashboard flow asks: try up to N times, log each failure
with details, back off exponentially, then give up with StoreUnavailable (-> 503)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cloud.storage.errors import StoreError, StoreUnavailable

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

log = logging.getLogger("iotsphere.cloud.store")


async def with_store_retries(
    what: str,
    op: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    backoff_s: float,
    sleep: Sleep,
) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except StoreError as exc:
            log.warning(
                "store query failed: query=%s attempt=%d/%d error=%s: %s",
                what,
                attempt,
                attempts,
                type(exc).__name__,
                exc,
            )
            if attempt == attempts:
                raise StoreUnavailable(f"{what}: failed {attempts} times: {exc}") from exc
            await sleep(backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable: attempts must be >= 1")
