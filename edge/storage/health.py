"""Whether the gateway's store can write, and why not: one small state table, no I/O.

DuckDB reports a full disk, an I/O error or a database it has invalidated as exceptions whose
text carries the OS error (it exposes no errno). `storage_failure` turns such an exception into
a StorageFailure, our own value, and returns None for anything else: a bug stays a crash.

`StorageHealth` is the lifecycle the store actor walks and `gateway status` shows:

    available --a commit fails--> unavailable --a probe commits--> available

While unavailable the store actor refuses ingest at once (the senders are told to retry) and
probes with a small write; the alert and the status line are derived from this one value.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import duckdb

# How the OS error reads inside DuckDB's messages ("Could not write file ...: <strerror>").
DISK_FULL_ERRORS = tuple(os.strerror(e) for e in (errno.ENOSPC, errno.EDQUOT))
# DuckDB's wording for file-level failures other than a full disk (EIO, a lost device...).
_IO_MARKERS = (
    "Could not write file",
    "Could not read from file",
    "Could not fsync",
    "Could not truncate",
    "Could not open file",
    "Failed to create checkpoint",
    os.strerror(errno.EIO),
)
# DuckDB invalidates the whole database after an error it cannot roll back (a failed
# checkpoint, a failed WAL sync): every later statement fails until the file is reopened.
_INVALIDATED_MARKERS = ("database has been invalidated", "Connection already closed")
REASON_MAX_CHARS = 200


@dataclass(frozen=True, slots=True)
class StorageFailure:
    """Why a write failed, as our own value (no DuckDB object travels further)."""

    reason: str  # short, for status and alerts: "No space left on device"
    detail: str  # DuckDB's whole message (file paths included): log and status only
    disk_full: bool
    invalidated: bool  # DuckDB invalidated the database: only a reopen makes it usable

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "disk_full": self.disk_full}


def storage_failure(exc: BaseException) -> StorageFailure | None:
    """The storage failure behind a DuckDB exception, or None when it is something else."""
    if not isinstance(exc, duckdb.Error):
        return None
    text = str(exc)
    full = next((m for m in DISK_FULL_ERRORS if m in text), None)
    invalidated = isinstance(exc, duckdb.FatalException | duckdb.ConnectionException) or any(
        m in text for m in _INVALIDATED_MARKERS
    )
    io = isinstance(exc, duckdb.IOException) or any(m in text for m in _IO_MARKERS)
    if full is None and not invalidated and not io:
        return None
    return StorageFailure(
        reason=full or _short(text),
        detail=text,
        disk_full=full is not None,
        invalidated=invalidated,
    )


def _short(text: str) -> str:
    # A fatal error repeats the one that caused it after "Original error:"; that one says why.
    cause = text.rsplit("Original error:", 1)[-1].strip().strip('"')
    line = cause.splitlines()[0] if cause else text
    return line[:REASON_MAX_CHARS]


class StorageState(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class StorageHealth:
    """The store's ability to write. Replaced whole on every change (a frozen value), so a
    reader in another task never sees half an update. Times are ms on the gateway clock."""

    state: StorageState = StorageState.AVAILABLE
    failure: StorageFailure | None = None  # the last one; kept after recovery for status
    since: int | None = None  # unavailable since (the first failure of this outage)
    last_failure_at: int | None = None
    recovered_at: int | None = None  # when the last outage ended
    failed_commits: int = 0  # since start: commits with data that failed
    failed_probes: int = 0  # since start: probe writes that failed
    refused_readings: int = 0  # since start: readings refused while unavailable
    reopens: int = 0  # since start: the database reopened after DuckDB invalidated it
    last_probe_at: int | None = None

    @property
    def available(self) -> bool:
        return self.state is StorageState.AVAILABLE

    def failed(
        self,
        failure: StorageFailure,
        now_ms: int,
        *,
        probe: bool = False,
        reopened: bool = False,
        refused: int = 0,
    ) -> StorageHealth:
        """A write failed (a commit with data, or a probe when `probe`); `refused`: readings
        of that commit, which were not acknowledged."""
        return replace(
            self,
            state=StorageState.UNAVAILABLE,
            failure=failure,
            since=now_ms if self.available or self.since is None else self.since,
            last_failure_at=now_ms,
            failed_commits=self.failed_commits + (not probe),
            failed_probes=self.failed_probes + probe,
            refused_readings=self.refused_readings + refused,
            reopens=self.reopens + reopened,
            last_probe_at=now_ms if probe else self.last_probe_at,
        )

    def probed(self, now_ms: int) -> StorageHealth:
        """A probe that did not write (not enough free space yet): still unavailable."""
        return replace(self, last_probe_at=now_ms)

    def refused(self, readings: int) -> StorageHealth:
        return replace(self, refused_readings=self.refused_readings + readings)

    def recovered(self, now_ms: int) -> StorageHealth:
        return replace(
            self,
            state=StorageState.AVAILABLE,
            since=None,
            recovered_at=now_ms,
            last_probe_at=now_ms,
        )

    def to_dict(self, now_ms: int) -> dict[str, Any]:
        """For `gateway status`: state, why and since when, and the counts since start."""
        failure = self.failure
        down_s = None if self.since is None else max(0, now_ms - self.since) // 1000
        return {
            "state": self.state.value,
            "reason": failure.reason if failure is not None and not self.available else None,
            "disk_full": bool(failure and failure.disk_full and not self.available),
            "since": self.since,
            "unavailable_for_s": down_s,
            "failed_commits": self.failed_commits,
            "failed_probes": self.failed_probes,
            "refused_readings": self.refused_readings,
            "reopens": self.reopens,
            "last_probe_at": self.last_probe_at,
            "last_failure": None
            if failure is None
            else {**failure.to_dict(), "at": self.last_failure_at},
            "recovered_at": self.recovered_at,
        }
