"""The reading model shared by gateway and cloud: frozen, typed values only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

Value = float | bool | str


class ReadingFlag(IntFlag):
    """Why a reading's timestamp should not be blindly trusted (stored as a bit set)."""

    NONE = 0
    TS_FROM_GATEWAY = 1  # the device sent no timestamp; ts is the gateway receive time
    TS_IN_FUTURE = 2  # device ts more than the allowed skew ahead of the gateway clock
    TS_BEFORE_2000 = 4  # device ts before 2000-01-01: a device without a set clock
    # The gateway's own clock when it received the reading (received_at is not to be trusted):
    GATEWAY_CLOCK_UNSYNCED = 8  # the kernel reported the clock unsynchronised (no NTP yet)
    GATEWAY_CLOCK_SKEWED = 16  # more than 5 minutes off the cloud's clock


@dataclass(frozen=True, slots=True)
class RawReading:
    """One decoded value before validation; ts is None when the device sent none."""

    metric: str
    value: object
    ts: int | None = None  # ms since the epoch, device clock
    seq: int | None = None  # the device's own message sequence number, if sent


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, 1.66 us
# against 0.30 us for the gateway's most made object (one per reading). Immutable by
# convention (nothing assigns a field; dataclasses.replace makes a changed copy), and hashed by
# value as a frozen one is.
@dataclass(slots=True, unsafe_hash=True)
class Reading:
    """A validated reading, identified by (device_id, metric, ts)."""

    device_id: str
    metric: str
    ts: int  # ms since the epoch: device time, or receive time when the device sent none
    value: Value
    received_at: int  # ms since the epoch, gateway clock
    flags: ReadingFlag = ReadingFlag.NONE
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one part of a payload (RFC 9457 'errors' member)."""

    path: str
    message: str
