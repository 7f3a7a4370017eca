"""Exponential backoff: one implementation for every retry loop (sync to the cloud, the MQTT
ingress and the private broker, accepting connections, actor restarts, notifications).

The delay after the n-th failure in a row is min(cap, base * 2^(n-1)); loops that many clients
run at once spread it with jitter so that they do not retry in step.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_MAX_EXPONENT = 62  # 2**62 * any base is past any cap: no float overflow for absurd counts


def ceiling_s(failures: int, base_s: float, cap_s: float) -> float:
    """min(cap, base * 2^(failures-1)); 0 before any failure."""
    if failures <= 0:
        return 0.0
    return float(min(cap_s, base_s * 2.0 ** min(failures - 1, _MAX_EXPONENT)))


def full_jitter_s(failures: int, base_s: float, cap_s: float, rand: Callable[[], float]) -> float:
    """Uniform in [0, ceiling]: the widest spread, for many clients of one server."""
    return float(min(max(rand(), 0.0), 1.0) * ceiling_s(failures, base_s, cap_s))


def spread(rand: Callable[[], float] = random.random) -> Callable[[float], float]:
    """Jitter of 50-150 % around the delay: keeps its order of magnitude."""
    return lambda delay: delay * (0.5 + rand())


class Backoff:
    """The delays of one thing that keeps failing; `reset()` once it works again."""

    def __init__(
        self, base_s: float, cap_s: float, jitter: Callable[[float], float] | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._jitter = jitter
        self.failures = 0

    @property
    def ceiling_s(self) -> float:
        """The delay the next failure gets, before jitter."""
        return ceiling_s(self.failures + 1, self.base_s, self.cap_s)

    def next_s(self) -> float:
        """One more failure: how long to wait before trying again."""
        delay = self.ceiling_s
        self.failures += 1
        return self._jitter(delay) if self._jitter is not None else delay

    def reset(self) -> None:
        self.failures = 0
