"""ClockWatch: when a new clock epoch begins (boot, wall-clock jump, synchronisation change)."""

from __future__ import annotations

from common.clock import ManualClock
from common.model import ReadingFlag
from edge.sync.clock_watch import JUMP_MS, ClockWatch, kernel_clock_synchronised


def test_first_check_begins_an_epoch_then_drift_does_not() -> None:
    clock = ManualClock()
    watch = ClockWatch("boot-1", clock, synchronised=lambda: True)
    first = watch.check()
    assert first is not None and first.boot_id == "boot-1" and first.flags == 0
    assert first.mono_base_ms == clock.now_ms() - int(clock.monotonic() * 1000)
    clock.advance(3600)
    assert watch.check() is None  # both clocks moved together
    clock._ms += JUMP_MS  # drift up to the threshold is not a jump
    assert watch.check() is None


def test_a_wall_clock_jump_begins_a_new_epoch() -> None:
    clock = ManualClock()
    watch = ClockWatch("boot-1", clock, synchronised=lambda: True)
    base = watch.check()
    assert base is not None
    clock._ms -= 3_600_000  # NTP steps the clock back an hour
    jumped = watch.check()
    assert jumped is not None and jumped.mono_base_ms == base.mono_base_ms - 3_600_000
    assert watch.check() is None


def test_synchronisation_changes_are_epochs_and_checked_at_most_every_interval() -> None:
    clock = ManualClock()
    synced = [False]
    asked: list[int] = []

    def probe() -> bool:
        asked.append(1)
        return synced[0]

    watch = ClockWatch("boot-1", clock, synchronised=probe, sync_check_s=10)
    e = watch.check()
    assert e is not None and e.flags == int(ReadingFlag.GATEWAY_CLOCK_UNSYNCED)
    synced[0] = True
    clock.advance(5)
    assert watch.check() is None and len(asked) == 1  # not asked again within 10 s
    clock.advance(5)
    e = watch.check()
    assert e is not None and e.flags == 0 and len(asked) == 2


def test_unknown_synchronisation_is_not_flagged() -> None:
    watch = ClockWatch("b", ManualClock(), synchronised=lambda: None)
    e = watch.check()
    assert e is not None and e.flags == 0


def test_the_kernel_can_be_asked() -> None:
    assert kernel_clock_synchronised() in (True, False)  # adjtimex(2) works on Linux
