"""Loopback ports for test servers."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A TCP port free now, from the kernel's ephemeral range: fine for a server started once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def restartable_port() -> int:
    """A TCP port for a server that is killed and started again on the same port.

    It lies below the ephemeral range. A port from that range can be taken, while the server
    is down, by any outgoing connection's local end, or by a client retrying to connect to it
    (TCP self-connect), and the restart then fails with "address already in use"."""
    low, _ = _ephemeral_range()
    ceiling = min(low, 65536) - 1
    for _ in range(200):
        port = random.randint(max(1024, ceiling - 12000), ceiling)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
