"""The gateway's LAN-facing MQTT port: a thin CONNECT-aware front for audit and lockout.

`packets` is the pure CONNECT/CONNACK codec; `proxy` is the asyncio front that uses it.
"""

from edge.ingest.mqtt.front.packets import (
    ConnectInfo,
    MalformedPacket,
    RefusalReason,
    UnsupportedProtocol,
    build_connack_refusal,
    parse_connack,
    parse_connect,
)
from edge.ingest.mqtt.front.proxy import AuthEvent, FrontStats, MqttFront, MqttFrontError

__all__ = [
    "AuthEvent",
    "ConnectInfo",
    "FrontStats",
    "MalformedPacket",
    "MqttFront",
    "MqttFrontError",
    "RefusalReason",
    "UnsupportedProtocol",
    "build_connack_refusal",
    "parse_connack",
    "parse_connect",
]
