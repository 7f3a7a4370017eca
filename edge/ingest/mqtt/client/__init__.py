"""A minimal MQTT 5 client for one job: the gateway's acknowledge-after-commit ingress.

`codec` is the pure wire format (bytes in, packets out; no I/O); `session` runs one broker
connection on an asyncio (buffered) Protocol. Only what the ingress needs is implemented: no QoS 2
publishing, no topic aliases, no enhanced authentication, no automatic reconnect (the caller
reconnects, and the broker's persistent session redelivers what was never acknowledged).
"""

from edge.ingest.mqtt.client.codec import CodecError, InboundPublish, PacketReader
from edge.ingest.mqtt.client.session import (
    ConnectRefused,
    MqttSession,
    MqttSessionError,
    SessionConfig,
)

__all__ = [
    "CodecError",
    "ConnectRefused",
    "InboundPublish",
    "MqttSession",
    "MqttSessionError",
    "PacketReader",
    "SessionConfig",
]
