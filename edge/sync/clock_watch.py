"""Watches the gateway's own clock: jumps (NTP stepping it, an RTC-less Pi booting in 1970)
and whether the kernel considers it synchronised.

The readings' receive times come from the wall clock; a clock epoch records, for a stretch of
readings, how that wall clock related to the monotonic clock (which never jumps) and whether
it was synchronised, so the cloud can tell good receive times from suspect ones without
reordering anything by them (see common.sync_wire.ClockEpoch).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from common.clock import Clock
from common.model import ReadingFlag
from edge.storage.records import EpochStart

log = logging.getLogger("iotsphere.clock")

JUMP_MS = 1_000  # wall minus monotonic moving by more than this is a jump, not drift
_TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (x86-64 / aarch64 / armhf layouts agree up to `time`
    # for the fields read here; the tail is padding the kernel may write into).
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def kernel_clock_synchronised() -> bool | None:
    """What adjtimex(2) says (read-only: modes = 0): False when the kernel marks the clock
    unsynchronised (no NTP/PTP discipline yet), None where it cannot be asked."""
    try:
        tx = _Timex()
        state = _libc().adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


@dataclass(frozen=True, slots=True)
class ClockState:
    mono_base_ms: int
    unsynced: bool

    @property
    def flags(self) -> int:
        return int(ReadingFlag.GATEWAY_CLOCK_UNSYNCED) if self.unsynced else 0


class ClockWatch:
    """Decides when a new clock epoch begins; checked by the store actor before each commit.

    The synchronisation state is asked of the kernel at most every `sync_check_s` (a syscall,
    cheap, but commits come hundreds of times a second under load).
    """

    def __init__(
        self,
        boot_id: str,
        clock: Clock,
        synchronised: Callable[[], bool | None] = kernel_clock_synchronised,
        sync_check_s: float = 10.0,
    ) -> None:
        self.boot_id = boot_id
        self._clock = clock
        self._synchronised = synchronised
        self._check_every = sync_check_s
        self._next_check = float("-inf")
        self._unsynced = False
        self._state: ClockState | None = None

    def _base(self) -> int:
        return self._clock.now_ms() - int(self._clock.monotonic() * 1000)

    def check(self) -> EpochStart | None:
        """The epoch to begin with the next commit, or None while the current one holds."""
        now = self._clock.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every
            self._unsynced = self._synchronised() is False
        base = self._base()
        state = self._state
        if (
            state is not None
            and abs(base - state.mono_base_ms) <= JUMP_MS
            and state.unsynced == self._unsynced
        ):
            return None
        if state is not None:
            log.warning(
                "gateway clock: %s (wall clock moved %+d ms against the monotonic clock)",
                "unsynchronised" if self._unsynced else "synchronised",
                base - state.mono_base_ms,
            )
        self._state = new = ClockState(base, self._unsynced)
        return EpochStart(self.boot_id, new.mono_base_ms, new.flags, self._clock.now_ms())
