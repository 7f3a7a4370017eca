"""Telemetry ends at the front: a device's PUBLISH on its own telemetry topic is committed by
the gateway and only then acknowledged (PUBACK, or PUBREC for QoS 2).

Why: when the private Mosquitto acknowledged a device's QoS 1 message it held it in memory
until its next autosave, so a power cut (every process SIGKILLed at once) lost readings the
devices had seen acknowledged (600 of 50,000 in a measured flood). Here the message never
reaches the broker: it goes straight into the shared ingest path (edge.ingest.intake), and
the ack is written into the broker -> device stream at a packet boundary once the DuckDB
commit holding it has returned.

What stays with Mosquitto: credentials (CONNACK), subscriptions, messages to the device, every
other topic and its ACL. Consequences handled here:
- packet ids are per direction: the device's ids for intercepted PUBLISHes are answered by us
  and never reach the broker; PUBRELs for our QoS 2 ids are answered by us too.
- a device that only publishes telemetry sends the broker nothing, so the front keeps its
  broker session alive with PINGREQs of its own (only while the device itself is active, so a
  dead device still times out at the broker) and drops the matching PINGRESPs.
- a commit that fails (disk full, I/O error) acknowledges nothing: the device is disconnected
  (v5: DISCONNECT 0x97 quota exceeded) and resends after reconnecting.
- sessions with no broker session behind them (ThingsBoard-style token login) are served by
  the front alone: telemetry only; subscriptions are refused, other topics denied.

Per session at most MAX_IN_FLIGHT messages wait for a commit; beyond that the front stops
reading the device's socket until commits catch up (TCP back-pressure, nothing dropped).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.problem import Problem
from edge.ingest.intake import IngestUnavailable, Pending
from edge.ingest.mqtt.front.packets import MalformedPacket
from edge.ingest.mqtt.front.stream import (
    DISCONNECT,
    PINGREQ,
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    V3_SUBACK_FAILURE,
    V5_NOT_AUTHORIZED,
    V5_PACKET_ID_NOT_FOUND,
    V5_PACKET_TOO_LARGE,
    V5_PAYLOAD_FORMAT_INVALID,
    V5_PROTOCOL_ERROR,
    V5_QUOTA_EXCEEDED,
    V5_TOPIC_ALIAS_INVALID,
    BrokerFramer,
    ClientPackets,
    PublishView,
    count_topic_filters,
    encode_ack,
    encode_disconnect_v5,
    encode_suback,
    encode_unsuback,
    packet_id_of,
    parse_publish,
)

log = logging.getLogger("iotsphere.mqtt_front")

TB_TELEMETRY_TOPIC = "v1/devices/me/telemetry"  # ThingsBoard firmware's topic
MAX_IN_FLIGHT = 1000  # per session; Mosquitto's max_inflight_messages is the same
DENIED_AUDITS_PER_SESSION = 3  # a misconfigured device is audited, not turned into a log flood


class Intake(Protocol):
    """The shared ingest path (edge.ingest.intake.DeviceIngest)."""

    def submit(
        self, device_id: str, payload: bytes, content_format: str | None, transport: str
    ) -> Pending: ...

    def submit_plain_run(
        self, device_id: str, payloads: Sequence[bytes]
    ) -> tuple[Pending | None, int]: ...

    def seal_soon(self) -> None: ...


# (device id, problem or None, readings stored, response topic, correlation data)
ReplySink = Callable[[str, Problem | None, int, str | None, bytes | None], None]


class TapHost(Protocol):
    """What a tap needs from its connection (edge.ingest.mqtt.front.proxy._Session)."""

    def write_client(self, data: bytes | bytearray) -> None: ...
    def write_upstream(self, data: bytes | bytearray) -> None: ...
    def pause_client(self, paused: bool) -> None: ...
    def close(self) -> None: ...
    def denied(self, topic: str) -> None: ...


@dataclass(slots=True)
class TapCounters:
    telemetry: int = 0  # device PUBLISHes taken by the front
    telemetry_qos0: int = 0  # of which QoS 0: best effort, never acknowledged
    acked: int = 0  # PUBACK/PUBREC written after the commit
    rejected: int = 0  # committed as rejections (problem document to devices/{id}/errors)
    unavailable: int = 0  # sessions ended because the store could not take or commit
    denied: int = 0  # publishes to topics the session may not use
    protocol_errors: int = 0
    keepalive_pings: int = 0  # PINGREQs the front sent to keep a device's broker session


# A message waiting for its commit: (pending, qos, packet id, response topic, correlation
# data). A tuple: one per message on the hot path, and a dataclass's __init__ costs 0.4 us.
# A run of plain QoS 1 messages (TelemetryTap._plain_run) is one entry: (pending, RUN, their
# packet ids, None, None).
_Waiting = tuple[Pending, int, int | list[int] | None, str | None, bytes | None]
RUN = -1
_PUBACK_V3 = 0x40020000  # a PUBACK as a big-endian u32: type, length 2, then the packet id
# The common sensor's PUBLISH: MQTT 3.1.1, QoS 1, no retain; 0x3A is its resend (DUP set).
_PLAIN_V3_QOS1 = (0x32, 0x3A)


def v5_reason(problem: Problem | None) -> int:
    """The PUBACK/PUBREC reason for a committed outcome (v5 only)."""
    if problem is None:
        return 0
    return V5_NOT_AUTHORIZED if problem.status in (401, 403) else V5_PAYLOAD_FORMAT_INVALID


class TelemetryTap:
    """One admitted connection's packet streams, after CONNACK."""

    def __init__(
        self,
        host: TapHost,
        device_id: str,
        *,
        v5: bool,
        keepalive_s: int,
        intake: Intake,
        replies: ReplySink,
        counters: TapCounters,
        upstream: bool,
    ) -> None:
        self._host = host
        self.device_id = device_id
        self._own_topic = f"devices/{device_id}/telemetry"
        # The start of a PUBLISH's variable header on a telemetry topic: topic length, topic.
        self._telemetry_headers = tuple(
            len(raw).to_bytes(2, "big") + raw
            for raw in (self._own_topic.encode(), TB_TELEMETRY_TOPIC.encode())
        )
        self._v5 = v5
        self._intake = intake
        self._replies = replies
        self._c = counters
        self.upstream = upstream
        self._packets = ClientPackets()
        self._framer = BrokerFramer()
        self._owed_to_client = bytearray()  # acks waiting for a packet boundary downstream
        self._waiting: deque[_Waiting] = deque()
        self._unacked = 0  # messages in _waiting (a run is one entry)
        self._last_future: asyncio.Future[None] | None = None
        self._q2_pending: set[int] = set()  # QoS 2 ids waiting for their commit
        self._rel_owed: set[int] = set()  # QoS 2 ids PUBRECed by us: their PUBREL is ours
        self._paused = False
        self._denied_audits = 0
        self.closed = False
        # Keep-alive: tick every half keep-alive (the broker allows 1.5 x before it drops).
        self._period = keepalive_s / 2 if keepalive_s else 0.0
        self._client_active = False
        self._upstream_written = False
        self._idle_ticks = 0
        self._timer: asyncio.TimerHandle | None = None
        if self._period:
            self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)

    # -- device -> gateway ---------------------------------------------------------------------

    # at packet boundaries; the hot path:
    def client_data(self, data: bytes) -> None:
        self._client_active = True
        try:
            buf, packets = self._packets.feed(data)
        except MalformedPacket as exc:
            self._protocol_error(str(exc), V5_PACKET_TOO_LARGE if "exceeds" in str(exc) else 0)
            return
        forward = bytearray()
        waiting = len(self._waiting)
        headers = self._telemetry_headers
        run_ids: list[int] = []
        run_payloads: list[bytes] = []
        for first, start, body, end in packets:
            if self.closed:
                return
            if first in _PLAIN_V3_QOS1 and not self._v5 and buf.startswith(headers, body):
                # The common sensor's message: collected, and classified as one run below.
                at = body + 2 + ((buf[body] << 8) | buf[body + 1])
                packet_id = (buf[at] << 8) | buf[at + 1] if at + 2 <= end else 0
                if packet_id:
                    run_ids.append(packet_id)
                    run_payloads.append(bytes(buf[at + 2 : end]))
                    continue
            if run_ids:
                self._plain_run(run_ids, run_payloads)
                run_ids, run_payloads = [], []
                if self.closed:
                    return
            if not self._packet(first, buf, start, body, end, forward):
                return
        if run_ids:
            self._plain_run(run_ids, run_payloads)
        if forward and not self.closed:
            self._upstream_written = True
            self._host.write_upstream(forward)
        if waiting != len(self._waiting):  # telemetry of this read: to the store now
            self._intake.seal_soon()

    # one branch per packet type:
    def _packet(
        self, first: int, buf: bytes | bytearray, start: int, body: int, end: int,
        forward: bytearray,
    ) -> bool:  # fmt: skip
        """Any packet but a plain run's: False when the connection ends with it."""
        ptype = first >> 4
        try:
            if ptype == PUBLISH:
                pub = parse_publish(first, buf, body, end, self._v5)
                if pub.topic_alias is not None:
                    # Topic aliases are switched off (Mosquitto's max_topic_alias 0, and the
                    # front's own CONNACK): using one is a protocol error.
                    self._protocol_error("topic alias used", V5_TOPIC_ALIAS_INVALID)
                    return False
                if pub.topic in (self._own_topic, TB_TELEMETRY_TOPIC):
                    self._telemetry(pub)
                elif self.upstream:
                    if pub.topic.startswith("devices/") and pub.topic.endswith("/telemetry"):
                        self._audit_denied(pub.topic)  # the broker's ACL refuses it
                    forward += buf[start:end]
                else:
                    self._deny(pub)
            elif ptype == PUBREL and packet_id_of(buf, body, end) in self._rel_owed:
                pid = packet_id_of(buf, body, end)
                self._rel_owed.discard(pid)
                self._to_client(encode_ack(PUBCOMP, pid, v5=self._v5))
            elif self.upstream:
                forward += buf[start:end]
            else:
                self._serve(ptype, buf, body, end)
        except MalformedPacket as exc:
            self._protocol_error(str(exc))
            return False
        return True

    def _plain_run(self, packet_ids: list[int], payloads: list[bytes]) -> None:
        """Consecutive QoS 1 telemetry PUBLISHes of one read: the plain JSON ones at the start
        are classified together and wait as one entry (one intake call, no PublishView, no
        Pending each); from the first that is not plain on, each goes the general way."""
        pending, n = self._intake.submit_plain_run(self.device_id, payloads)
        if pending is not None:
            self._c.telemetry += n
            self._unacked += n
            self._waiting.append((pending, RUN, packet_ids[:n], None, None))
            self._watch(pending.committed)
        for packet_id, payload in zip(packet_ids[n:], payloads[n:], strict=True):
            if self.closed:
                return
            self._telemetry(PublishView(self._own_topic, 1, packet_id, False, False, payload))

    def _watch(self, future: asyncio.Future[None]) -> None:
        """Acknowledge once `future` (a group's commit) is done; once per group."""
        if future is not self._last_future:
            self._last_future = future
            future.add_done_callback(self._committed)
        if self._unacked >= MAX_IN_FLIGHT and not self._paused:
            self._paused = True
            self._host.pause_client(True)

    def _telemetry(self, pub: PublishView) -> None:
        pid = pub.packet_id
        if pub.qos == 2 and pid is not None:
            if pid in self._rel_owed:  # a resend of a PUBLISH we have already stored
                self._to_client(encode_ack(PUBREC, pid, v5=self._v5))
                return
            if pid in self._q2_pending:
                return  # its PUBREC follows the commit
        try:
            pending = self._intake.submit(self.device_id, pub.payload, pub.content_type, "mqtt")
        except IngestUnavailable as exc:
            self._unavailable(str(exc))
            return
        self._c.telemetry += 1
        if pub.qos == 0:
            self._c.telemetry_qos0 += 1
            if pending.result.problem is None and not pub.response_topic:
                return  # best effort: nothing to answer
        elif pub.qos == 2 and pid is not None:
            self._q2_pending.add(pid)
        self._waiting.append((pending, pub.qos, pid, pub.response_topic, pub.correlation_data))
        self._unacked += 1
        self._watch(pending.committed)

    def _committed(self, _future: asyncio.Future[None]) -> None:
        acks = bytearray()
        waiting = self._waiting
        while waiting and waiting[0][0].committed.done():
            pending, qos, packet_id, response_topic, correlation = waiting.popleft()
            try:
                result = pending.outcome()
            except IngestUnavailable as exc:
                self._unavailable(str(exc))
                return
            if qos == RUN:  # accepted plain messages (v3.1.1: a PUBACK carries no reason)
                assert isinstance(packet_id, list)
                n = len(packet_id)
                acks += struct.pack(f">{n}I", *[_PUBACK_V3 | i for i in packet_id])
                self._unacked -= n
                self._c.acked += n
                continue
            assert not isinstance(packet_id, list)
            self._unacked -= 1
            problem = result.problem
            if packet_id is not None:
                reason = v5_reason(problem) if self._v5 else 0
                if qos == 1:
                    acks += encode_ack(PUBACK, packet_id, reason, v5=self._v5)
                else:
                    acks += encode_ack(PUBREC, packet_id, reason, v5=self._v5)
                    self._q2_pending.discard(packet_id)
                    if not reason:  # v5: a refused PUBREC ends the exchange (no PUBREL)
                        self._rel_owed.add(packet_id)
                self._c.acked += 1
            if problem is not None:
                self._c.rejected += 1
            if problem is not None or response_topic:
                self._replies(self.device_id, problem, result.readings, response_topic, correlation)
        if acks and not self.closed:
            self._to_client(acks)
        if self._paused and self._unacked < MAX_IN_FLIGHT // 2 and not self.closed:
            self._paused = False
            self._host.pause_client(False)

    # -- sessions the front serves alone (no broker session) ----------------------------------

    def _serve(self, ptype: int, buf: bytes | bytearray, body: int, end: int) -> None:
        if ptype == PINGREQ:
            self._to_client(PINGRESP_BYTES)
        elif ptype == SUBSCRIBE:
            pid = packet_id_of(buf, body, end)
            n = count_topic_filters(buf, body, end, self._v5, with_options=True)
            code = V5_NOT_AUTHORIZED if self._v5 else V3_SUBACK_FAILURE
            self._to_client(encode_suback(pid, [code] * n, v5=self._v5))
        elif ptype == UNSUBSCRIBE:
            pid = packet_id_of(buf, body, end)
            n = count_topic_filters(buf, body, end, self._v5, with_options=False)
            self._to_client(encode_unsuback(pid, n, v5=self._v5))
        elif ptype == PUBREL:
            pid = packet_id_of(buf, body, end)
            self._to_client(encode_ack(PUBCOMP, pid, V5_PACKET_ID_NOT_FOUND, v5=self._v5))
        elif ptype == DISCONNECT:
            self.close()
        else:
            raise MalformedPacket(f"packet type {ptype} is not expected from a client now")

    def _deny(self, pub: PublishView) -> None:
        """A publish the front serves alone and may not accept: acked as Mosquitto acks an
        ACL-denied publish (v5 with 0x87; 3.x with success, then dropped), and audited."""
        self._audit_denied(pub.topic)
        if pub.packet_id is not None:
            ptype = PUBACK if pub.qos == 1 else PUBREC
            reason = V5_NOT_AUTHORIZED if self._v5 else 0
            self._to_client(encode_ack(ptype, pub.packet_id, reason, v5=self._v5))
            if pub.qos == 2 and not self._v5:
                self._rel_owed.add(pub.packet_id)

    def _audit_denied(self, topic: str) -> None:
        self._c.denied += 1
        if self._denied_audits < DENIED_AUDITS_PER_SESSION:
            self._denied_audits += 1
            self._host.denied(topic)

    # -- broker -> device ----------------------------------------------------------------------

    def broker_data(self, data: bytes) -> None:
        try:
            out = self._framer.feed(data)
        except MalformedPacket as exc:
            log.warning("bad packet from the MQTT broker for %s: %s", self.device_id, exc)
            self.close()
            return
        if out:
            self._host.write_client(out)
        if self._owed_to_client and self._framer.at_boundary:
            self._host.write_client(self._owed_to_client)
            self._owed_to_client = bytearray()

    def _to_client(self, data: bytes | bytearray) -> None:
        if self.closed:
            return
        if self._framer.at_boundary and not self._owed_to_client:
            self._host.write_client(data)
        else:
            self._owed_to_client += data

    # -- keep-alive and endings ----------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self.upstream:
            if self._client_active and not self._upstream_written:
                self._framer.swallow_pingresps += 1
                self._c.keepalive_pings += 1
                self._host.write_upstream(PINGREQ_BYTES)
        elif self._client_active:
            self._idle_ticks = 0
        else:
            self._idle_ticks += 1
            if self._idle_ticks >= 3:  # 1.5 x the keep-alive, as a broker allows
                log.info("MQTT device %s silent past its keep-alive; closing", self.device_id)
                self.close()
                return
        self._client_active = self._upstream_written = False
        self._timer = asyncio.get_running_loop().call_later(self._period, self._tick)

    def _unavailable(self, reason: str) -> None:
        """Nothing more of this connection can be acknowledged: end it so the device resends
        what it holds after reconnecting."""
        if self.closed:
            return
        self._c.unavailable += 1
        if self._c.unavailable == 1 or self._c.unavailable % 100 == 0:
            log.warning(
                "MQTT: dropping %s's connection, nothing acknowledged (%s); %d so far",
                self.device_id,
                reason,
                self._c.unavailable,
            )
        self._disconnect(V5_QUOTA_EXCEEDED)

    def _protocol_error(self, reason: str, v5_code: int = 0) -> None:
        self._c.protocol_errors += 1
        log.info("MQTT protocol error from %s: %s", self.device_id, reason)
        self._disconnect(v5_code or V5_PROTOCOL_ERROR)

    def _disconnect(self, v5_code: int) -> None:
        if self._v5 and not self.closed:
            # Written directly: a DISCONNECT must not wait behind a partial broker packet more
            # than the broker's own would, and nothing else follows it.
            self._owed_to_client += encode_disconnect_v5(v5_code)
            if self._framer.at_boundary:
                self._host.write_client(self._owed_to_client)
            self._owed_to_client = bytearray()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.detach()
            self._host.close()

    def detach(self) -> None:
        """The connection is ending: write nothing more (commits still send their replies)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
