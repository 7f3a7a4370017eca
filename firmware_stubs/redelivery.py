"""How a simulated device gets every message through lost connections, without any I/O: the
Outbox keeps what the broker has not acknowledged and queues it all again after a reconnect
(bounded, dropping and counting the oldest beyond its capacity, as firmware with a fixed
buffer would), and Backoff spaces reconnects exponentially with jitter so a fleet that lost its
broker together does not reconnect in lockstep."""

from __future__ import annotations

import random
from collections import deque

from firmware_stubs.telemetry import OutgoingMessage


class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    min(maximum, initial * 2**n), so a fleet that lost its broker together does not
    reconnect in lockstep."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng

    def delay(self, attempt: int) -> float:
        ceiling = min(self._maximum, self._initial * 2.0 ** min(attempt, 32))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


class Outbox:
    """A device's messages that still need the broker's acknowledgement, in seq order.

    Sending does not remove a message; only `ack` does. After a reconnect, `rewind` queues
    every unacknowledged message again, so nothing the broker did not confirm is lost.
    Bounded: beyond `capacity` the oldest message is dropped and counted, as firmware with a
    fixed buffer would.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._unacked: dict[int, OutgoingMessage] = {}  # insertion order = seq order
        self._to_send: deque[int] = deque()
        self._sent_once: set[int] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._unacked)

    def add(self, message: OutgoingMessage) -> None:
        while len(self._unacked) >= self._capacity:
            oldest = next(iter(self._unacked))
            self._forget(oldest)
            self.dropped += 1
        self._unacked[message.seq] = message
        self._to_send.append(message.seq)

    def next_to_send(self) -> tuple[OutgoingMessage, bool] | None:
        """The next message to publish and whether this is its first send (not a resend)."""
        while self._to_send:
            seq = self._to_send.popleft()
            message = self._unacked.get(seq)
            if message is None:  # dropped or acked while queued
                continue
            first = seq not in self._sent_once
            self._sent_once.add(seq)
            return message, first
        return None

    def ack(self, seq: int) -> bool:
        """Mark a message delivered; False if it was no longer pending."""
        if seq not in self._unacked:
            return False
        self._forget(seq)
        return True

    def rewind(self) -> None:
        """A new connection: everything unacknowledged goes out again, oldest first."""
        self._to_send = deque(self._unacked)

    def _forget(self, seq: int) -> None:
        del self._unacked[seq]
        self._sent_once.discard(seq)
