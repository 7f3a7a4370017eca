"""Loopback ports for test servers: free_port for a server started once, restartable_port for
one stopped and started again on the same port (common.ports says why)."""

from __future__ import annotations

from common.ports import free_port, restartable_port

__all__ = ["free_port", "restartable_port"]
