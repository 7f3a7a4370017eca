"""systemd's notify protocol (sd_notify(3)) with the stdlib: one datagram per state change.

Under a `Type=notify` unit systemd sets NOTIFY_SOCKET (a path, or `@name` for an abstract
socket) and, with `WatchdogSec=`, WATCHDOG_USEC (and WATCHDOG_PID). `from_env()` reads and
removes them, so children (Mosquitto is built with systemd support on Debian) never speak for
the service. Without NOTIFY_SOCKET every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("iotsphere.sd_notify")


class SdNotifier:
    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s  # systemd's timeout; we ping at half of it

    @classmethod
    def from_env(cls) -> SdNotifier:
        address = os.environ.pop("NOTIFY_SOCKET", None) or None
        usec = os.environ.pop("WATCHDOG_USEC", "")
        pid = os.environ.pop("WATCHDOG_PID", "")
        watchdog_s = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls(address, watchdog_s)

    def send(self, state: str) -> bool:
        """Send one state string ("READY=1", ...); False when not under systemd or it failed."""
        if not self.address:
            return False
        target = self.address
        if target.startswith("@"):  # abstract namespace: a leading NUL byte
            target = "\0" + target[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), target)
        except OSError as exc:
            what = state.partition("\n")[0]
            log.warning("sd_notify %s to %s failed: %s", what, self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.send("STOPPING=1")

    async def watchdog(self) -> None:
        """WATCHDOG=1 every half timeout, from the event loop: a stuck loop stops the pings."""
        if not self.address or not self.watchdog_s:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)

    async def follow(self, ready: asyncio.Event, stop: asyncio.Event, status: str = "") -> None:
        """READY=1 once `ready` is set, the watchdog from then on, STOPPING=1 once `stop` is.
        Runs until cancelled (when the process has stopped)."""
        if not self.address:
            return
        await ready.wait()
        self.ready(status)
        pings = asyncio.create_task(self.watchdog(), name="sd-watchdog")
        try:
            await stop.wait()
            self.stopping()
            await pings  # pinging on while draining, until the caller cancels this
        finally:
            pings.cancel()
