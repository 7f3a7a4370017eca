"""Free loopback TCP ports: any, or one for a server that may be restarted on the same port."""

from __future__ import annotations

import random
import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, from the kernel's ephemeral range: for a server started once."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def restartable_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now, below the ephemeral range.

    A port from that range can be taken, while its server is down, by any outgoing
    connection's local end, or by a client retrying to connect to it (TCP self-connect: the
    kernel may pick the destination port as the source port), and the restart then fails
    with "address already in use" or, worse, the client talks to itself."""
    low, _ = ephemeral_range()
    ceiling = min(low, 65536) - 1
    for _ in range(200):
        port = random.randint(max(1024, ceiling - 12000), ceiling)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)  # every one tried was taken
