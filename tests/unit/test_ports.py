"""The private broker's port (and every test server that restarts) lies below the ephemeral
range, where no outgoing connection can take it while its server is down."""

from __future__ import annotations

import socket

from common.ports import ephemeral_range, restartable_port


def test_a_restartable_port_is_free_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    assert 1024 <= low <= high
    for _ in range(20):
        port = restartable_port()
        assert 1024 <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free
