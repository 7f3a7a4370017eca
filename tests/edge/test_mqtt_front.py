"""MqttFront against a real Mosquitto: pass-through, audit, lockout and cooldown, lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest

from common.clock import ManualClock
from edge.ingest.mqtt.front import AuthEvent, MqttFront
from edge.security.lockout import LockoutDecision, LockoutPolicy, LockoutTracker
from tests.support.mosquitto import running_broker
from tests.support.ports import free_port

USERS = {"dev1": "secret1", "dev2": "secret2"}
V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5
PROTOCOLS = pytest.mark.parametrize("protocol", [V311, V5], ids=["v311", "v5"])


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_broker(tmp_path_factory.mktemp("mosquitto"), USERS) as broker:
        yield broker.port


@dataclass
class Harness:
    front: MqttFront
    clock: ManualClock
    tracker: LockoutTracker
    events: list[AuthEvent] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.front.port

    def reasons(self) -> list[tuple[str, str]]:
        return [(e.kind, e.reason) for e in self.events]


async def make_harness(
    upstream_port: int,
    sink: Callable[[AuthEvent], None] | None = None,
    connect_timeout_s: float = 10.0,
) -> Harness:
    clock = ManualClock()
    tracker = LockoutTracker(LockoutPolicy(), clock)
    events: list[AuthEvent] = []
    front = MqttFront(
        "127.0.0.1",
        0,
        "127.0.0.1",
        upstream_port,
        tracker,
        sink or events.append,
        clock,
        connect_timeout_s=connect_timeout_s,
    )
    await front.start()
    return Harness(front, clock, tracker, events)


@pytest.fixture
async def h(broker_port: int) -> AsyncIterator[Harness]:
    harness = await make_harness(broker_port)
    yield harness
    await harness.front.stop()


def client(h: Harness, protocol: aiomqtt.ProtocolVersion, user: str, password: str,
           identifier: str = "cid") -> aiomqtt.Client:  # fmt: skip
    return aiomqtt.Client(
        "127.0.0.1",
        h.port,
        username=user,
        password=password,
        identifier=identifier,
        protocol=protocol,
        timeout=5,
    )


async def refused_code(h: Harness, protocol: aiomqtt.ProtocolVersion, user: str, pw: str) -> int:
    with pytest.raises(aiomqtt.MqttCodeError) as err:
        async with client(h, protocol, user, pw):
            pass
    rc = err.value.rc
    assert rc is not None
    return rc if isinstance(rc, int) else rc.value


# -- raw MQTT, to see exact wire bytes -----------------------------------------------------


def _s(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def raw_connect(level: int, user: str, password: str, client_id: str = "raw") -> bytes:
    var = _s(b"MQTT") + bytes((level, 0xC2)) + (60).to_bytes(2, "big")
    if level == 5:
        var += b"\x00"
    body = var + _s(client_id.encode()) + _s(user.encode()) + _s(password.encode())
    assert len(body) < 128
    return bytes((0x10, len(body))) + body


async def raw_session(port: int, data: bytes, want: int) -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    async with asyncio.timeout(5):
        got = await reader.readexactly(want)
    return got, writer


async def raw_refusal(port: int, data: bytes) -> bytes:
    """Everything the front sends back before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        return await read_until_eof(reader)
    finally:
        writer.close()


async def read_until_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5):
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""


# -- pass-through --------------------------------------------------------------------------


@PROTOCOLS
async def test_right_password_publish_and_subscribe_through_the_front(
    h: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    topic = "devices/dev1/telemetry"
    async with (
        client(h, protocol, "dev1", "secret1", "sub") as sub,
        client(h, protocol, "dev1", "secret1", "pub") as pub,
    ):
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, b'{"temperature": 21.5}', qos=1)
        async with asyncio.timeout(5):
            message = await anext(sub.messages)
    assert message.topic.matches(topic)
    assert message.payload == b'{"temperature": 21.5}'
    assert h.events == []
    stats = h.front.stats
    assert stats.connections_total == 2
    assert stats.auth_failures == 0
    assert stats.bytes_up > 0 and stats.bytes_down > 0


async def test_pipelined_packets_after_connect_reach_the_broker(h: Harness) -> None:
    body = b"\x00\x01" + _s(b"devices/dev1/x") + b"\x00"  # packet id 1, QoS 0
    subscribe = bytes((0x82, len(body))) + body
    got, writer = await raw_session(h.port, raw_connect(4, "dev1", "secret1") + subscribe, 9)
    assert got == b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x00"  # CONNACK ok, SUBACK qos 0
    writer.close()


async def test_client_half_close_ends_the_connection(h: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(raw_connect(4, "dev1", "secret1"))
    async with asyncio.timeout(5):
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
    writer.write(b"\xe0\x00")  # DISCONNECT
    writer.write_eof()
    assert await read_until_eof(reader) == b""
    writer.close()


# -- audit and lockout ---------------------------------------------------------------------


@PROTOCOLS
async def test_wrong_password_is_refused_and_audited(
    h: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    # Mosquitto 2.0.11 answers 5 (3.1.1) / 0x87 (v5); paho reports 3.1.1's 5 as 0x87 too.
    # The exact wire bytes are checked with a raw client below.
    assert await refused_code(h, protocol, "dev1", "wrong") == 0x87
    assert h.events == [
        AuthEvent(
            at_ms=h.clock.now_ms(),
            kind="auth_failure",
            address="127.0.0.1",
            username="dev1",
            client_id="cid",
            reason="not_authorized",
        )
    ]
    assert h.front.stats.auth_failures == 1


@pytest.mark.parametrize(
    ("level", "refusal"), [(4, b"\x20\x02\x00\x05"), (5, b"\x20\x03\x00\x87\x00")]
)
async def test_broker_refusal_reaches_the_client_unchanged(
    h: Harness, level: int, refusal: bytes
) -> None:
    assert await raw_refusal(h.port, raw_connect(level, "nobody", "x")) == refusal
    assert [(e.username, e.client_id, e.reason) for e in h.events] == [
        ("nobody", "raw", "not_authorized")
    ]


@PROTOCOLS
async def test_ten_failures_lock_out_until_the_cooldown_ends(
    h: Harness, protocol: aiomqtt.ProtocolVersion
) -> None:
    for _ in range(10):
        await refused_code(h, protocol, "dev1", "wrong")
    lockouts = [e for e in h.events if e.kind == "lockout"]
    assert [e.key for e in lockouts] == ["user:dev1@127.0.0.1", "addr:127.0.0.1"]
    assert h.reasons().count(("lockout", "too_many_failures")) == 2
    assert len(h.events) == 12

    # The right password is now refused by the front itself, without asking the broker.
    locked_code = 0x97 if protocol == V5 else 0x87  # paho maps 3.1.1's 5 to 0x87
    assert await refused_code(h, protocol, "dev1", "secret1") == locked_code
    level = 5 if protocol == V5 else 4
    data = await raw_refusal(h.port, raw_connect(level, "dev1", "secret1"))
    assert data == (b"\x20\x03\x00\x97\x00" if level == 5 else b"\x20\x02\x00\x05")
    # So is another device from the locked address.
    assert await refused_code(h, protocol, "dev2", "secret2") == locked_code
    assert h.reasons()[12:] == [("auth_failure", "locked_out")] * 3
    assert h.front.stats.refused_locked == 3
    assert h.front.stats.auth_failures == 10

    h.clock.advance(299)
    assert await refused_code(h, protocol, "dev1", "secret1") == locked_code
    h.clock.advance(2)
    async with client(h, protocol, "dev1", "secret1"):
        pass
    assert len(h.events) == 16  # the success added nothing


async def test_audit_sink_failure_is_counted_not_fatal(broker_port: int) -> None:
    def broken(event: AuthEvent) -> None:
        raise RuntimeError("audit store down")

    harness = await make_harness(broker_port, sink=broken)
    try:
        await refused_code(harness, V5, "dev1", "wrong")
        async with client(harness, V5, "dev1", "secret1"):
            pass
        assert harness.front.stats.audit_sink_errors == 1
    finally:
        await harness.front.stop()


# -- broken clients, broker down, lifecycle -----------------------------------------------


async def test_malformed_connect_is_closed_and_audited(h: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_until_eof(reader) == b""
    writer.close()
    assert len(h.events) == 1
    assert (h.events[0].reason, h.events[0].username) == ("malformed_connect", None)
    assert h.front.stats.malformed == 1


async def test_unsupported_protocol_level_gets_connack_1(h: Harness) -> None:
    pkt = bytearray(raw_connect(4, "dev1", "secret1"))
    pkt[8] = 6  # protocol level byte
    assert await raw_refusal(h.port, bytes(pkt)) == b"\x20\x02\x00\x01"
    assert h.reasons() == [("auth_failure", "unsupported_protocol")]


async def test_slow_connect_times_out_and_silent_probe_is_not_audited(broker_port: int) -> None:
    harness = await make_harness(broker_port, connect_timeout_s=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)
        writer.write(b"\x10\x20\x00")  # a CONNECT that never completes
        assert await read_until_eof(reader) == b""
        writer.close()
        probe_reader, probe = await asyncio.open_connection("127.0.0.1", harness.port)
        probe.write_eof()  # a port probe: connects, sends nothing, closes its side
        assert await read_until_eof(probe_reader) == b""
        probe.close()
        # Each EOF above arrives only after the front has counted and closed that connection.
        assert harness.reasons() == [("auth_failure", "connect_timeout")]
        assert harness.front.stats.no_connect == 1
    finally:
        await harness.front.stop()


@PROTOCOLS
async def test_broker_down_refuses_with_server_unavailable(
    protocol: aiomqtt.ProtocolVersion,
) -> None:
    harness = await make_harness(free_port())
    try:
        # paho maps 3.1.1's "server unavailable" (3) to v5's 0x88, so both read 0x88 here.
        assert await refused_code(harness, protocol, "dev1", "secret1") == 0x88
        level = 5 if protocol == V5 else 4
        data = await raw_refusal(harness.port, raw_connect(level, "dev1", "secret1"))
        assert data == (b"\x20\x03\x00\x88\x00" if level == 5 else b"\x20\x02\x00\x03")
        assert harness.front.stats.upstream_errors == 2
        assert harness.events == []  # the device did nothing wrong
    finally:
        await harness.front.stop()


async def test_stop_closes_piped_connections(broker_port: int) -> None:
    harness = await make_harness(broker_port)
    port = harness.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_connect(4, "dev1", "secret1"))
    async with asyncio.timeout(5):
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
    assert harness.front.stats.active == 1
    await harness.front.stop()
    assert await read_until_eof(reader) == b""
    assert harness.front.stats.active == 0
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# -- against a scripted broker, for orderings a real one does not let a test pin down -------


async def scripted_broker(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_bytes_sent_while_waiting_for_connack_are_not_lost() -> None:
    connect = raw_connect(4, "dev1", "secret1")
    subscribe = b"\x82\x08\x00\x01" + _s(b"a/b") + b"\x00"
    got_connect: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    got_rest: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got_connect.set_result(await reader.readexactly(len(connect)))
        await release.wait()
        writer.write(b"\x20\x02\x00\x00")
        got_rest.set_result(await reader.readexactly(len(subscribe)))

    server, port = await scripted_broker(script)
    harness = await make_harness(port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", harness.port)
        writer.write(connect)
        async with asyncio.timeout(5):
            assert await got_connect == connect
            writer.write(subscribe)  # the client does not wait for CONNACK
            await asyncio.sleep(0.05)  # let it reach the front while the broker holds CONNACK
            release.set()
            assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
            assert await got_rest == subscribe
        writer.close()
    finally:
        await harness.front.stop()
        server.close()
        await server.wait_closed()


async def test_broker_closing_without_connack_is_audited_not_counted() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    server, port = await scripted_broker(script)
    harness = await make_harness(port)
    try:
        assert await raw_refusal(harness.port, raw_connect(5, "dev1", "x")) == b""
        assert harness.reasons() == [("auth_failure", "no_connack")]
        assert harness.front.stats.upstream_errors == 1
        assert harness.tracker.check(None, "127.0.0.1") == LockoutDecision(False)
    finally:
        await harness.front.stop()
        server.close()
        await server.wait_closed()
