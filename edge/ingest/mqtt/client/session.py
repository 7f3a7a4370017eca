"""One MQTT 5 broker connection on an asyncio Protocol, for a subscriber that acks late.

Why a Protocol and not streams or tasks: the gateway's ingress receives thousands of QoS 1
PUBLISHes a second and acknowledges them only after the store committed them. Here every
socket read is decoded at once (PacketReader) and handed to `on_publishes` as one group, so
the caller classifies and stores per group rather than per message, and `ack()` answers a
whole committed group with one write. No task is created per message.

What it does not do: reconnect (the caller does; the broker's persistent session redelivers
every PUBLISH not acknowledged), resend our own QoS 1 publishes after a reconnect (they are
best-effort replies), QoS 2, topic aliases, enhanced authentication.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edge.ingest.mqtt.client.codec import (
    PINGREQ_BYTES,
    CodecError,
    ConnAck,
    Disconnect,
    InboundPublish,
    OtherPacket,
    PacketReader,
    PingResp,
    PubAck,
    SubAck,
    encode_connect,
    encode_disconnect,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
)

log = logging.getLogger("iotsphere.mqtt_client")

PublishHandler = Callable[[list[InboundPublish]], None]

# Bytes per socket read, so per on_publishes group: ~350 telemetry messages of 10 readings.
# It bounds how long one read keeps the event loop (decode + the caller's classification)
# when a backlog arrives; asyncio's own default would be 256 KiB.
READ_BUFFER_SIZE = 64 * 1024

# DISCONNECT reason codes this client sends (MQTT 5 section 3.14.2.1).
NORMAL = 0x00
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_ERROR = 0x83


class MqttSessionError(Exception):
    """The connection could not be made, was refused or ended; the caller reconnects."""


class ConnectRefused(MqttSessionError):
    """The broker answered CONNECT with a failure reason code (e.g. 0x86 bad credentials)."""

    def __init__(self, reason_code: int, reason_string: str | None = None) -> None:
        detail = f" ({reason_string})" if reason_string else ""
        super().__init__(f"broker refused the connection: reason 0x{reason_code:02x}{detail}")
        self.reason_code = reason_code


@dataclass(frozen=True, slots=True)
class SessionConfig:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30  # a PINGREQ goes out every keepalive/2; 0 disables keepalive
    clean_start: bool = True
    session_expiry_s: int = 0  # 0xFFFFFFFF: the broker keeps the session (and queue) forever
    receive_maximum: int = 65_535  # unacknowledged QoS 1 PUBLISHes the broker may send us
    connect_timeout_s: float = 10.0  # TCP connect and CONNACK together
    # Our QoS 1 publishes waiting for the broker's Receive Maximum quota; beyond this the
    # newest is dropped (they are best-effort replies) and counted in stats["publish_dropped"].
    max_waiting_publishes: int = 10_000


@dataclass(frozen=True, slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    content_type: str | None
    response_topic: str | None
    correlation_data: bytes | None


class MqttSession(asyncio.BufferedProtocol):
    """Use `await MqttSession.connect(config, on_publishes)`; then subscribe, ack, publish.

    `on_publishes` runs inside the read callback, once per socket read that held PUBLISHes, in
    arrival order; it may run before connect() returns (a persistent session's backlog can
    arrive in the same read as the CONNACK). It must not block. QoS 2 PUBLISHes are logged and
    dropped unacknowledged: this client subscribes at QoS 1, so a broker never sends them.
    `closed` resolves with a reason once the connection has ended, whoever ended it.
    """

    def __init__(self, config: SessionConfig, on_publishes: PublishHandler) -> None:
        self._config = config
        self._on_publishes = on_publishes
        self._loop = asyncio.get_running_loop()
        self._reader = PacketReader()
        self._read_view = memoryview(bytearray(READ_BUFFER_SIZE))
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[ConnAck] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._close_reason: str | None = None
        self._subacks: dict[int, asyncio.Future[SubAck]] = {}
        self._inflight: set[int] = set()  # our QoS 1 publishes awaiting PUBACK
        self._waiting: deque[_Outgoing] = deque()
        self._dropping = False  # between the first drop of an overflow and the queue draining
        self._next_id = 1
        self._send_quota = 65_535
        self._maximum_qos = 2
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_outstanding = False
        self.session_present = False
        self.stats = {
            "published": 0,
            "publish_errors": 0,
            "publish_dropped": 0,
            "qos2_dropped": 0,
            "pings": 0,
        }

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def connect(cls, config: SessionConfig, on_publishes: PublishHandler) -> MqttSession:
        """Connect, send CONNECT, wait for CONNACK; ConnectRefused or MqttSessionError."""
        session = cls(config, on_publishes)
        loop = session._loop
        where = f"{config.host}:{config.port}"
        try:
            async with asyncio.timeout(config.connect_timeout_s):
                await loop.create_connection(lambda: session, config.host, config.port)
                connack = await session._connack
        except TimeoutError as exc:
            session.close("connect timed out", IMPLEMENTATION_ERROR)
            raise MqttSessionError(f"no CONNACK from {where} in time") from exc
        except OSError as exc:
            raise MqttSessionError(f"cannot connect to {where}: {exc}") from exc
        except MqttSessionError:
            session.close("connect failed", PROTOCOL_ERROR)
            raise
        if connack.reason_code != 0:  # v5 refusals are >= 0x80; a 3.1.1 broker answers 1
            session._abort(f"refused with 0x{connack.reason_code:02x}")
            raise ConnectRefused(connack.reason_code, connack.reason_string)
        session.session_present = connack.session_present
        session._send_quota = connack.receive_maximum
        session._maximum_qos = connack.maximum_qos
        keepalive = connack.server_keepalive
        if keepalive is None:
            keepalive = config.keepalive_s
        if keepalive > 0:
            session._schedule_ping(keepalive / 2)
        return session

    def close(self, reason: str = "closed by the client", reason_code: int = NORMAL) -> None:
        """Send DISCONNECT and close (pending writes such as PUBACKs are flushed first)."""
        transport = self._transport
        if self._close_reason is None:
            self._close_reason = reason
        if transport is not None and not transport.is_closing():
            transport.write(encode_disconnect(reason_code))
            transport.close()

    def _abort(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    # -- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        c = self._config
        transport.write(
            encode_connect(
                c.client_id,
                keepalive=c.keepalive_s,
                clean_start=c.clean_start,
                session_expiry=c.session_expiry_s,
                receive_maximum=c.receive_maximum,
                username=c.username,
                password=c.password,
            )
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        reason = self._close_reason
        if reason is None:
            reason = f"connection lost: {exc}" if exc else "connection closed by the broker"
        error = MqttSessionError(reason)
        if not self._connack.done():
            self._connack.set_exception(error)
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(error)
        self._subacks.clear()
        dropped = len(self._waiting) + len(self._inflight)
        if dropped:
            log.info("%d of our QoS 1 publishes end unconfirmed with the connection", dropped)
        if not self.closed.done():
            self.closed.set_result(reason)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self._received(bytes(self._read_view[:nbytes]))

    def _received(self, data: bytes) -> None:
        try:
            packets = self._reader.feed(data)
        except CodecError as exc:
            log.error("malformed packet from the broker: %s", exc)
            self.close(f"malformed packet from the broker: {exc}", MALFORMED_PACKET)
            return
        group: list[InboundPublish] = []
        for packet in packets:
            if type(packet) is InboundPublish:
                if packet.qos == 2:
                    self.stats["qos2_dropped"] += 1
                    log.warning("QoS 2 PUBLISH on %s dropped unacknowledged", packet.topic)
                else:
                    group.append(packet)
            elif not self._handle_control(packet):
                return
        if group and self.is_open:  # not if a write failed meanwhile: nothing could be acked
            if not self._connack.done():
                self.close("PUBLISH before CONNACK", PROTOCOL_ERROR)
                return
            try:
                self._on_publishes(group)
            except Exception as exc:
                # Nothing of this group was acknowledged: end the connection so the broker
                # redelivers it, rather than carry on with a hole in the stream.
                log.exception("publish handler failed")
                self.close(f"publish handler failed: {exc!r}", IMPLEMENTATION_ERROR)

    def _handle_control(self, packet: object) -> bool:
        """Handle a non-PUBLISH packet; False when the connection is ending because of it."""
        if isinstance(packet, PubAck):
            self._on_puback(packet)
        elif isinstance(packet, PingResp):
            self._ping_outstanding = False
        elif isinstance(packet, SubAck):
            fut = self._subacks.pop(packet.packet_id, None)
            if fut is None:
                log.warning("SUBACK for unknown packet id %d", packet.packet_id)
            elif not fut.done():
                fut.set_result(packet)
        elif isinstance(packet, ConnAck):
            if self._connack.done():
                self.close("second CONNACK", PROTOCOL_ERROR)
                return False
            self._connack.set_result(packet)
        elif isinstance(packet, Disconnect):
            detail = f" ({packet.reason_string})" if packet.reason_string else ""
            self._abort(f"broker sent DISCONNECT 0x{packet.reason_code:02x}{detail}")
            return False
        elif isinstance(packet, OtherPacket):
            log.warning("ignoring unexpected packet type %d from the broker", packet.packet_type)
        return True

    # -- subscribing and acknowledging --------------------------------------------------------

    async def subscribe(self, topic_filter: str, qos: int = 1, timeout_s: float = 10.0) -> int:
        """Subscribe and wait for SUBACK; returns the granted QoS, MqttSessionError if refused."""
        transport = self._require_open()
        packet_id = self._allocate_id()
        fut: asyncio.Future[SubAck] = self._loop.create_future()
        self._subacks[packet_id] = fut
        transport.write(encode_subscribe(packet_id, topic_filter, qos))
        try:
            async with asyncio.timeout(timeout_s):
                suback = await fut
        except TimeoutError as exc:
            self._subacks.pop(packet_id, None)
            raise MqttSessionError(f"no SUBACK for {topic_filter!r} in time") from exc
        code = suback.reason_codes[0]
        if code >= 0x80:
            raise MqttSessionError(f"subscription to {topic_filter!r} refused: 0x{code:02x}")
        return code

    def ack(self, packet_ids: Iterable[int]) -> int:
        """PUBACK these QoS 1 packets with one write; returns how many were written.

        Returns 0 when the connection is gone: the broker then redelivers them to the next
        session, which is what must happen to anything not acknowledged.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return 0
        ids = list(packet_ids)
        if ids:
            transport.write(encode_pubacks(ids))
        return len(ids)

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        """Best effort: QoS 1 is tracked to its PUBACK but never resent on a new connection."""
        if qos not in (0, 1):
            raise ValueError("this client publishes at QoS 0 or 1")
        transport = self._require_open()
        qos = min(qos, self._maximum_qos)
        if qos == 0:
            transport.write(
                encode_publish(
                    topic,
                    payload,
                    content_type=content_type,
                    response_topic=response_topic,
                    correlation_data=correlation_data,
                )
            )
            self.stats["published"] += 1
            return
        out = _Outgoing(topic, payload, content_type, response_topic, correlation_data)
        if len(self._inflight) < self._send_quota:
            self._send_qos1(transport, out)
        elif len(self._waiting) < self._config.max_waiting_publishes:
            self._waiting.append(out)
        else:
            self.stats["publish_dropped"] += 1
            if not self._dropping:  # once per episode: a flood of rejections must not flood logs
                self._dropping = True
                log.warning("outgoing queue full: dropping publishes (first to %s)", topic)

    def _send_qos1(self, transport: asyncio.Transport, out: _Outgoing) -> None:
        packet_id = self._allocate_id()
        self._inflight.add(packet_id)
        transport.write(
            encode_publish(
                out.topic,
                out.payload,
                qos=1,
                packet_id=packet_id,
                content_type=out.content_type,
                response_topic=out.response_topic,
                correlation_data=out.correlation_data,
            )
        )
        self.stats["published"] += 1

    def _on_puback(self, ack: PubAck) -> None:
        if ack.packet_id not in self._inflight:
            log.warning("PUBACK for unknown packet id %d", ack.packet_id)
            return
        self._inflight.discard(ack.packet_id)
        if ack.reason_code >= 0x80:  # e.g. 0x87 not authorized: the ACL denied the topic
            self.stats["publish_errors"] += 1
            log.warning("broker rejected our publish: reason 0x%02x", ack.reason_code)
        transport = self._transport
        while self._waiting and len(self._inflight) < self._send_quota:
            if transport is None or transport.is_closing():  # a write may fail mid-loop
                return
            self._send_qos1(transport, self._waiting.popleft())
        if self._dropping and not self._waiting:
            self._dropping = False
            dropped = self.stats["publish_dropped"]
            log.warning("outgoing queue drained; %d publishes dropped so far", dropped)

    @property
    def inflight(self) -> int:
        """Our QoS 1 publishes sent or waiting, not yet acknowledged by the broker."""
        return len(self._inflight) + len(self._waiting)

    def _allocate_id(self) -> int:
        # Packet ids are shared by our PUBLISHes and SUBSCRIBEs; the broker's own PUBLISH ids
        # are a separate space. At most Receive Maximum (<= 65535) are in use at once.
        while True:
            packet_id = self._next_id
            self._next_id = packet_id % 0xFFFF + 1
            if packet_id not in self._inflight and packet_id not in self._subacks:
                return packet_id

    def _require_open(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise MqttSessionError(self._close_reason or "not connected")
        return transport

    # -- keepalive ----------------------------------------------------------------------------

    def _schedule_ping(self, interval_s: float) -> None:
        self._ping_timer = self._loop.call_later(interval_s, self._ping, interval_s)

    def _ping(self, interval_s: float) -> None:
        self._ping_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._ping_outstanding:
            log.warning("no PINGRESP within %.1f s: dropping the connection", interval_s)
            self._abort(f"no PINGRESP within {interval_s:g} s")
            return
        self._ping_outstanding = True
        self.stats["pings"] += 1
        transport.write(PINGREQ_BYTES)
        self._schedule_ping(interval_s)
