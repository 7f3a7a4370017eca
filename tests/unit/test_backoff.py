"""common.backoff: the one exponential backoff every retry loop uses."""

from __future__ import annotations

from common.backoff import Backoff, ceiling_s, full_jitter_s, spread


def test_the_ceiling_doubles_from_base_to_cap_and_never_overflows() -> None:
    assert ceiling_s(0, 0.5, 30.0) == 0.0
    assert [ceiling_s(n, 0.5, 30.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert ceiling_s(10**9, 0.5, 30.0) == 30.0


def test_full_jitter_is_uniform_below_the_ceiling() -> None:
    assert full_jitter_s(3, 1.0, 60.0, lambda: 0.0) == 0.0
    assert full_jitter_s(3, 1.0, 60.0, lambda: 0.5) == 2.0
    assert full_jitter_s(3, 1.0, 60.0, lambda: 7.0) == 4.0  # a bad rand() is clamped


def test_a_backoff_counts_failures_until_reset() -> None:
    backoff = Backoff(0.1, 1.0)
    assert backoff.ceiling_s == 0.1
    assert [backoff.next_s() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_s() == 0.1


def test_spread_keeps_the_order_of_magnitude() -> None:
    backoff = Backoff(2.0, 30.0, spread(lambda: 0.0))
    assert backoff.next_s() == 1.0  # 50 % of 2 s
    assert Backoff(2.0, 30.0, spread(lambda: 0.999)).next_s() < 3.0  # under 150 %
