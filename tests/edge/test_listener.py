"""edge.ingest.listener: the caps' sizing and bookkeeping (pure), then BoundedListener on loopback:
refusals at the caps, a place freed when a connection ends, and accept() out of descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.app.config import ConfigError, load_config
from edge.ingest.listener import (
    AcceptBackoff,
    BoundedListener,
    ConnectionCaps,
    ConnectionGate,
    LogThrottle,
    Refusal,
    plain_address,
    plan_caps,
)
from tests.support.waiting import until

# -- sizing ------------------------------------------------------------------------------------


def test_default_caps_fit_in_1024_descriptors_and_shrink_in_proportion() -> None:
    plan = plan_caps(1024, 128, mqtt_max=4096, http_max=1024, per_address=128)
    assert plan.scaled and plan.wanted_nofile == 128 + 2 * 4096 + 1024
    assert (plan.mqtt.max_connections, plan.http.max_connections) == (398, 99)
    # two descriptors per MQTT connection, one per HTTP connection: within the limit
    assert 2 * plan.mqtt.max_connections + plan.http.max_connections <= 1024 - 128
    # one address never holds more than a quarter of a listener
    assert (plan.mqtt.max_per_address, plan.http.max_per_address) == (99, 24)


def test_caps_are_as_configured_when_the_limit_allows() -> None:
    plan = plan_caps(9344, 128, mqtt_max=4096, http_max=1024, per_address=128)
    assert not plan.scaled
    assert plan.mqtt == ConnectionCaps(4096, 128) and plan.http == ConnectionCaps(1024, 128)
    tiny = plan_caps(100, 128, mqtt_max=4096, http_max=1024, per_address=128)
    assert tiny.mqtt == ConnectionCaps(1, 1) and tiny.http == ConnectionCaps(1, 1)


def test_gate_counts_per_address_and_in_all() -> None:
    gate = ConnectionGate(ConnectionCaps(max_connections=3, max_per_address=2))
    assert gate.admit("10.0.0.1") is None and gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is Refusal.PER_ADDRESS
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("10.0.0.3") is Refusal.MAX_CONNECTIONS
    gate.release("10.0.0.1")
    assert gate.held_by("10.0.0.1") == 1 and gate.open == 2
    assert gate.admit("10.0.0.3") is None
    with pytest.raises(ValueError):
        gate.release("10.0.0.9")


def test_backoff_doubles_to_one_second_and_resets() -> None:
    backoff = AcceptBackoff()
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.succeeded()
    assert backoff.failed() == 0.1


def test_log_throttle_says_when_and_how_many() -> None:
    throttle = LogThrottle(every_s=10.0)
    assert throttle.event(100.0) and throttle.pending == 1
    throttle.logged()
    assert not any(throttle.event(100.0 + i) for i in range(1, 10))
    assert throttle.event(110.0) and throttle.pending == 10


def test_ipv4_mapped_addresses_count_as_their_ipv4_address() -> None:
    assert plain_address("::ffff:192.168.1.7") == "192.168.1.7"
    assert plain_address("fe80::1%eth0") == "fe80::1"


# -- the listener --------------------------------------------------------------------------------


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@contextlib.asynccontextmanager
async def listening(caps: ConnectionCaps, refusal: bytes | None = None
                    ) -> AsyncIterator[BoundedListener]:  # fmt: skip
    listener = BoundedListener(
        "test", Echo, caps, refusal=(lambda _why: refusal) if refusal is not None else None
    )
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        listener.close()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(port: int, source: str = "127.0.0.1") -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def echoes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"ping")
    return await asyncio.wait_for(reader.read(4), 5) == b"ping"


async def test_connections_over_the_caps_are_closed_at_once_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "iotsphere.listener")
    caps = ConnectionCaps(max_connections=6, max_per_address=3)
    async with listening(caps, refusal=b"busy") as listener:
        held = [await connect(listener.port, "127.0.0.2") for _ in range(3)]
        assert all([await echoes(r, w) for r, w in held])
        # a fourth from the same address: refused before anything is read
        refused = [await connect(listener.port, "127.0.0.2") for _ in range(20)]
        assert [await asyncio.wait_for(r.read(), 5) for r, _ in refused] == [b"busy"] * 20
        # another address still gets in, up to the listener's cap
        others = [await connect(listener.port, f"127.0.0.{3 + i}") for i in range(3)]
        assert all([await echoes(r, w) for r, w in others])
        reader, _ = await connect(listener.port, "127.0.0.9")
        assert await asyncio.wait_for(reader.read(), 5) == b"busy"
        st = listener.stats
        assert (st.open, st.accepted) == (6, 6)
        assert (st.refused_per_address, st.refused_max_connections) == (20, 1)
        # a connection that ends frees its place
        held[0][1].close()
        await until(lambda: listener.stats.open == 5)
        assert await echoes(*await connect(listener.port, "127.0.0.2"))
        for _, writer in held[1:] + others + refused:
            writer.close()
    lines = [r for r in caplog.records if r.name == "iotsphere.listener"]
    assert len(lines) == 1 and "max_connections_per_address=3" in lines[0].getMessage()


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[list[int]]:
    """Every free descriptor of this process taken (under a soft limit lowered to just above
    the ones in use), so the next accept() fails with EMFILE; all given back at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 32, hard))
    taken: list[int] = []
    try:
        while True:
            try:
                taken.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        yield taken
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_out_of_descriptors_pauses_accepting_with_one_log_line_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    async with listening(ConnectionCaps(100, 100)) as listener:
        clients = [socket.socket() for _ in range(5)]  # their descriptors taken beforehand
        try:
            for sock in clients:
                sock.setblocking(False)
            with descriptors_exhausted() as taken:
                assert taken
                started = loop.time()
                for sock in clients:  # handshakes complete; they wait in the backlog
                    await loop.sock_connect(sock, ("127.0.0.1", listener.port))
                await until(lambda: listener.stats.accept_failures >= 3, timeout_s=5)
                # backing off: 0.1 + 0.2 s between the first three attempts, not a busy loop
                assert loop.time() - started >= 0.25
                assert listener.stats.accept_failures < 10 and listener.stats.accepted == 0
            # descriptors back: the next attempt (within 1 s) takes the queued connections
            await until(lambda: listener.stats.accepted == 5, timeout_s=5)
            for sock in clients:
                await loop.sock_sendall(sock, b"ping")
                assert await asyncio.wait_for(loop.sock_recv(sock, 4), 5) == b"ping"
        finally:
            for sock in clients:
                sock.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "out of file descriptors" in errors[0].getMessage()
    assert errors[0].exc_info is None  # a line, not a traceback
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_caps_in_gateway_toml_must_be_whole_numbers(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("[gateway]\nmqtt_max_connections = 200\n")
    assert load_config(tmp_path).mqtt_max_connections == 200
    (tmp_path / "gateway.toml").write_text("[gateway]\nmax_connections_per_address = 0\n")
    with pytest.raises(ConfigError, match="max_connections_per_address"):
        load_config(tmp_path)
