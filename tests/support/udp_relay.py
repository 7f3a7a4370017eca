"""A UDP relay on loopback that records what a client sends: how a test captures the exact
datagrams a real aiocoap client put on the wire (to replay them later)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast


@dataclass
class UdpRelay:
    port: int = 0
    sent: list[bytes] = field(default_factory=list)  # client -> server, in order


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, back: asyncio.DatagramTransport, client: tuple[Any, ...]) -> None:
        self._back = back
        self._client = client

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._back.sendto(data, self._client)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, target: tuple[str, int]) -> None:
        self._relay = relay
        self._target = target
        self._transport: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple[Any, ...], asyncio.DatagramTransport] = {}
        self._opening: dict[tuple[Any, ...], list[bytes]] = {}
        self._pending: list[asyncio.Task[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._relay.sent.append(data)
        upstream = self._upstreams.get(addr)
        if upstream is not None:
            upstream.sendto(data)
        elif addr in self._opening:
            self._opening[addr].append(data)
        else:
            self._opening[addr] = [data]
            self._pending.append(asyncio.ensure_future(self._open(addr)))

    async def _open(self, addr: tuple[Any, ...]) -> None:
        assert self._transport is not None
        back = self._transport
        upstream, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Upstream(back, addr), remote_addr=self._target
        )
        self._upstreams[addr] = upstream
        for data in self._opening.pop(addr):
            upstream.sendto(data)

    def close(self) -> None:
        for task in self._pending:
            task.cancel()
        for upstream in self._upstreams.values():
            upstream.close()
        if self._transport is not None:
            self._transport.close()


@contextlib.asynccontextmanager
async def udp_relay(target_port: int) -> AsyncIterator[UdpRelay]:
    relay = UdpRelay()
    front_transport, front = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Front(relay, ("127.0.0.1", target_port)), local_addr=("127.0.0.1", 0)
    )
    relay.port = int(front_transport.get_extra_info("sockname")[1])
    try:
        yield relay
    finally:
        front.close()
