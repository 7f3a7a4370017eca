"""Block-wise transfers of request bodies (RFC 7959 Block1), reassembled with a bound.

Pure: no I/O, the clock injected. aiocoap's own Block1 spool keeps any size; this one refuses a
body over the per-message limit (4.13) and forgets transfers left incomplete.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from common.clock import Clock
from common.codecs import Limits


@dataclass(frozen=True, slots=True)
class Block1:
    number: int
    more: bool
    size_exponent: int

    @property
    def size(self) -> int:
        return 1 << (self.size_exponent + 4)


# -- block-wise assembly (pure) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockContinue:
    pass


@dataclass(frozen=True, slots=True)
class BlockComplete:
    payload: bytes


@dataclass(frozen=True, slots=True)
class BlockTooLarge:
    pass


@dataclass(frozen=True, slots=True)
class BlockIncomplete:
    reason: str


BlockResult = BlockContinue | BlockComplete | BlockTooLarge | BlockIncomplete


@dataclass(slots=True)
class _Transfer:
    data: bytearray
    touched: float


class Block1Assembler:
    """Reassembles Block1 request bodies (RFC 7959), bounded in size, count and age.

    Memory is at most max_transfers x max_bytes (256 x 64 KiB = 16 MiB by default); the least
    recently touched transfer is dropped to make room, and a transfer idle for timeout_s is
    dropped (its sender gets 4.08 Request Entity Incomplete if it ever continues)."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_bytes: int = Limits().max_bytes,
        max_transfers: int = 256,
        timeout_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._max_transfers = max_transfers
        self._timeout_s = timeout_s
        self._transfers: OrderedDict[tuple[Any, ...], _Transfer] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._transfers)

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def feed(  # noqa: PLR0911 - one result per RFC 7959 case
        self, key: tuple[Any, ...], block: Block1, payload: bytes, size1: int | None = None
    ) -> BlockResult:
        now = self._clock.monotonic()
        self._expire(now)
        offset = block.number * block.size
        if block.number == 0:
            if size1 is not None and size1 > self._max_bytes:
                self._transfers.pop(key, None)
                return BlockTooLarge()
            transfer = self._start(key, now)
        else:
            found = self._transfers.get(key)
            if found is None:
                return BlockIncomplete("no transfer in progress (block 0 missing or expired)")
            transfer = found
        data = transfer.data
        if offset < len(data) and data[offset : offset + len(payload)] == payload:
            # The same block again under a new message id (the sender missed our answer).
            if not block.more and offset + len(payload) == len(data):
                del self._transfers[key]
                return BlockComplete(bytes(data))
            return BlockContinue()
        if offset != len(data):
            del self._transfers[key]
            return BlockIncomplete(f"block {block.number} does not follow byte {len(data)}")
        if block.more and len(payload) != block.size:
            del self._transfers[key]
            return BlockIncomplete("a block before the last one must fill its block size")
        if len(data) + len(payload) > self._max_bytes:
            del self._transfers[key]
            return BlockTooLarge()
        data.extend(payload)
        transfer.touched = now
        self._transfers.move_to_end(key)
        if block.more:
            return BlockContinue()
        del self._transfers[key]
        return BlockComplete(bytes(data))

    def _start(self, key: tuple[Any, ...], now: float) -> _Transfer:
        self._transfers.pop(key, None)
        while len(self._transfers) >= self._max_transfers:
            self._transfers.popitem(last=False)
            self.evicted += 1
        transfer = _Transfer(bytearray(), now)
        self._transfers[key] = transfer
        return transfer

    def _expire(self, now: float) -> None:
        while self._transfers:
            transfer = next(iter(self._transfers.values()))
            if now - transfer.touched < self._timeout_s:
                return
            self._transfers.popitem(last=False)


# -- the request handler -------------------------------------------------------------------------
