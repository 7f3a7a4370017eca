"""What a simulated sensor measures and sends, without any I/O: RandomWalk (a value that drifts
inside a plausible range for its metric), TelemetryGenerator (a device's messages, seq from 1
and strictly increasing ts, optionally malformed or without a clock) and OutgoingMessage (one
message, sent again unchanged on a resend, so the gateway can deduplicate it)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One telemetry message as it goes on the wire, and again unchanged on a resend."""

    seq: int
    ts: int  # ms since the epoch; generation time (also the payload's "ts" unless no_clock)
    payload: bytes
    malformed: bool = False


# (start, step, low, high): plausible ranges so dashboards and rules see sane values.
_PROFILES: dict[str, tuple[float, float, float, float]] = {
    "temperature": (21.0, 0.15, -40.0, 85.0),
    "humidity": (45.0, 0.8, 0.0, 100.0),
    "pressure": (1013.25, 0.3, 870.0, 1085.0),
    "co2": (600.0, 12.0, 400.0, 5000.0),
    "battery": (3.9, 0.005, 3.0, 4.2),
    "voltage": (230.0, 0.8, 180.0, 260.0),
    "current": (2.0, 0.1, 0.0, 16.0),
    "light": (300.0, 20.0, 0.0, 10_000.0),
    "vibration": (0.2, 0.02, 0.0, 5.0),
}
_GENERIC_PROFILE = (50.0, 1.0, 0.0, 100.0)


class RandomWalk:
    """A value that drifts by small random steps inside a range, like a real sensor."""

    def __init__(self, metric: str, rng: random.Random) -> None:
        start, self._step, self._low, self._high = _PROFILES.get(metric, _GENERIC_PROFILE)
        self._value = start + rng.uniform(-10, 10) * self._step
        self._rng = rng

    def next(self) -> float:
        self._value += self._rng.gauss(0.0, self._step)
        # Reflect at the bounds instead of clamping, so the walk does not stick to a limit.
        if self._value > self._high:
            self._value = 2 * self._high - self._value
        if self._value < self._low:
            self._value = 2 * self._low - self._value
        return round(self._value, 2)


class TelemetryGenerator:
    """Produces a device's messages: seq counts from 1, ts strictly increases.

    Strictly increasing ts makes every message a distinct reading (the gateway identifies a
    reading by device, metric and ts), even at rates above 1000/s or when the clock steps back.
    """

    def __init__(
        self,
        metrics: Sequence[str],
        rng: random.Random,
        *,
        malformed_every: int = 0,
        no_clock: bool = False,
    ) -> None:
        self._walks = {m: RandomWalk(m, rng) for m in metrics}
        self._malformed_every = malformed_every
        self._no_clock = no_clock
        self._seq = 0
        self._last_ts = -1

    def next(self, now_ms: int) -> OutgoingMessage:
        self._seq += 1
        ts = max(now_ms, self._last_ts + 1)
        self._last_ts = ts
        values = {metric: walk.next() for metric, walk in self._walks.items()}
        doc: dict[str, Any] = (
            values if self._no_clock else {"ts": ts, "seq": self._seq, "values": values}
        )
        payload = json.dumps(doc, separators=(",", ":")).encode()
        malformed = self._malformed_every > 0 and self._seq % self._malformed_every == 0
        if malformed:
            # Cut the closing brace: still recognisable to a human, invalid to any parser.
            payload = payload[:-1]
        return OutgoingMessage(self._seq, ts, payload, malformed)
