"""Loopback ports for test servers."""

from __future__ import annotations

from common import ports


def free_port() -> int:
    """A TCP port free now, from the kernel's ephemeral range: fine for a server started once."""
    return ports.free_port()


def restartable_port() -> int:
    """A TCP port for a server that is killed and started again on the same port: below the
    ephemeral range (common.ports.restartable_port says why)."""
    return ports.restartable_port()
