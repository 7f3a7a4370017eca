"""Helpers for CoAP tests: an aiocoap client, raw datagrams, and a UDP socket to send them."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiocoap
from aiocoap import CON, NON, POST, Code, Message, Reliable, Unreliable


@dataclass
class CoapClient:
    ctx: aiocoap.Context
    port: int

    async def post(
        self,
        token: str,
        payload: bytes,
        content_format: int | None = 50,
        *,
        confirmable: bool = True,
        path: str | None = None,
        code: Code = POST,
    ) -> Message:
        uri = f"coap://127.0.0.1:{self.port}" + (path or f"/api/v1/{token}/telemetry")
        tuning = Reliable if confirmable else Unreliable
        msg = Message(code=code, transport_tuning=tuning, uri=uri, payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        return await self.ctx.request(msg).response


@contextlib.asynccontextmanager
async def coap_client(port: int) -> AsyncIterator[CoapClient]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        yield CoapClient(ctx, port)
    finally:
        await ctx.shutdown()


def post_datagram(
    token: str,
    payload: bytes,
    *,
    mid: int,
    msg_token: bytes = b"\x01\x02",
    content_format: int | None = 50,
    confirmable: bool = True,
) -> bytes:
    """One encoded CoAP POST to the telemetry path, with a chosen message id."""
    msg = Message(
        _mtype=CON if confirmable else NON,
        _mid=mid,
        _token=msg_token,
        code=POST,
        uri_path=("api", "v1", token, "telemetry"),
        payload=payload,
    )
    if content_format is not None:
        msg.opt.content_format = content_format
    encoded: bytes = msg.encode()
    return encoded


def udp_socket(timeout_s: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout_s)
    return sock


def receive_answer(sock: socket.socket, msg_token: bytes) -> tuple[Message, list[Message]]:
    """Read datagrams until the response carrying msg_token (ACKing a separate CON response).

    Returns (the response, every datagram seen on the way, e.g. an empty ACK)."""
    seen: list[Message] = []
    while True:
        data, addr = sock.recvfrom(2048)
        msg = Message.decode(data)
        seen.append(msg)
        if msg.code.is_response() and msg.token == msg_token:
            if msg.mtype is CON:
                ack = Message(_mtype=aiocoap.ACK, _mid=msg.mid, code=aiocoap.EMPTY)
                sock.sendto(ack.encode(), addr)
            return msg, seen
