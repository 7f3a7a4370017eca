"""Telemetry ends at the gateway's MQTT front: PUBACK after the commit, ThingsBoard-style token
logins, foreign topics denied and audited, the broker session kept alive (in-process gateway,
real Mosquitto, real clients)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.app.gateway import Gateway
from edge.ingest.mqtt.client.codec import encode_connect, encode_publish
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(120)


async def mosquitto_pub(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def raw_connect(
    gateway: Gateway, user: str, token: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An MQTT 5 session on a plain socket, to see the exact bytes the gateway sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.mqtt_port)
    writer.write(
        encode_connect("raw", keepalive=30, clean_start=True, username=user, password=token)
    )
    connack = await asyncio.wait_for(reader.readexactly(2), 10)
    rest = await reader.readexactly(connack[1])
    assert rest[1] == 0, f"CONNACK refused: {rest!r}"
    return reader, writer


async def test_puback_means_the_reading_is_already_committed(gateway: Gateway) -> None:
    dev = await gateway.add_device("ack1", None)
    reader, writer = await raw_connect(gateway, "ack1", dev["token"])
    try:
        for i in range(1, 21):
            body = json.dumps({"ts": 1_764_300_000_000 + i, "values": {"t": i}}).encode()
            writer.write(encode_publish("devices/ack1/telemetry", body, qos=1, packet_id=i))
            puback = await asyncio.wait_for(reader.readexactly(4), 10)
            assert puback == b"\x40\x02" + i.to_bytes(2, "big")
            # No waiting: what the device saw acknowledged is in DuckDB already.
            stored = await gateway.readings("ack1", None, 100)
            assert len(stored) == i
    finally:
        writer.close()
    assert gateway._front is not None and gateway._front.tap_counters.acked >= 20


async def test_thingsboard_token_login_stores_and_wrong_token_is_refused(
    gateway: Gateway,
) -> None:
    dev = await gateway.add_device("tb1", None)
    port = gateway.mqtt_port
    code, out = await mosquitto_pub(
        port, "-u", dev["token"], "-t", "v1/devices/me/telemetry", "-m", '{"temperature": 21}'
    )
    assert code == 0, out
    stored = await until(lambda: gateway.readings("tb1", None, 10))
    assert [(r["metric"], r["value"]) for r in stored] == [("temperature", 21)]

    code, out = await mosquitto_pub(
        port, "-u", "not-a-token", "-t", "v1/devices/me/telemetry", "-m", '{"temperature": 1}'
    )
    assert code != 0 and "not authori" in out.lower()
    audit = await until(lambda: audit_rows(gateway, "bad_token"))
    assert audit[0]["transport"] == "mqtt" and "not-a-token" not in json.dumps(audit)
    assert gateway._tracker.check(None, "127.0.0.1").locked is False  # counted, below limit


async def audit_rows(gateway: Gateway, reason: str) -> list[dict[str, Any]]:
    return [a for a in await gateway.audit(50) if reason in (a["reason"] or "")]


async def test_thingsboard_device_over_mqtt5_with_paho(gateway: Gateway) -> None:
    dev = await gateway.add_device("tb5", None)
    async with aiomqtt.Client(
        "127.0.0.1", gateway.mqtt_port, username=dev["token"],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:  # fmt: skip
        await c.publish("v1/devices/me/telemetry", b'{"ts": 1764300000000, "values": {"h": 40}}',
                        qos=1)  # fmt: skip
        await c.publish("v1/devices/me/telemetry", b'{"h": 41}', qos=2)
    stored = await until(lambda: _len_at_least(gateway.readings("tb5", None, 10), 2))
    assert sorted(r["value"] for r in stored) == [40, 41]


async def _len_at_least(coro: Any, n: int) -> Any:
    rows = await coro
    return rows if len(rows) >= n else None


def _connect_v311(client_id: str, *, clean: bool, username: str, password: str | None = None
                  ) -> bytes:  # fmt: skip
    """A 3.1.1 CONNECT (the gateway's own codec only writes v5)."""

    def utf8(text: str) -> bytes:
        raw = text.encode()
        return len(raw).to_bytes(2, "big") + raw

    flags = (0x02 if clean else 0) | 0x80 | (0x40 if password is not None else 0)
    body = utf8("MQTT") + bytes((4, flags)) + (30).to_bytes(2, "big") + utf8(client_id)
    body += utf8(username) + (utf8(password) if password is not None else b"")
    return bytes((0x10, len(body))) + body


async def _connack(port: int, connect: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(connect)
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        return head + await asyncio.wait_for(reader.readexactly(head[1]), 10)
    finally:
        writer.close()


async def test_an_empty_client_id_is_answered_by_token_as_mosquitto_answers_it(
    gateway: Gateway,
) -> None:
    """Found by Paho's interoperability tests (test_zero_length_clientid and
    test_assigned_clientid) run over a token login, which the front serves alone; the
    password login's answers come from Mosquitto (docs/decisions/mqtt-interop.md)."""
    dev = await gateway.add_device("zid", None)
    port, token = gateway.mqtt_port, dev["token"]
    # 3.1.1 without a clean session: identifier rejected [MQTT-3.1.3-8]
    by_password = await _connack(port, _connect_v311("", clean=False, username="zid",
                                                     password=token))  # fmt: skip
    by_token = await _connack(port, _connect_v311("", clean=False, username=token))
    assert by_password == by_token == b"\x20\x02\x00\x02"
    # with a clean session: accepted
    assert await _connack(port, _connect_v311("", clean=True, username=token)) == (
        b"\x20\x02\x00\x00"
    )
    # MQTT 5: accepted, with the client id the server assigned [MQTT-3.2.2-16]
    for credentials in ({"username": "zid", "password": token}, {"username": token}):
        connack = await _connack(port, encode_connect("", keepalive=30, clean_start=True,
                                                      **credentials))  # fmt: skip
        assert connack[3] == 0, connack
        assigned = re.search(rb"\x12\x00(.)(auto-[0-9A-Fa-f-]+)", connack, re.DOTALL)
        assert assigned is not None, connack
        assert assigned[1][0] == len(assigned[2]) == 41
    assert not await audit_rows(gateway, "bad_token")


async def test_publish_to_another_devices_telemetry_is_denied_and_audited(
    gateway: Gateway,
) -> None:
    mallory = await gateway.add_device("mallory", None)
    await gateway.add_device("victim", None)
    reader, writer = await raw_connect(gateway, "mallory", mallory["token"])
    try:
        writer.write(encode_publish("devices/victim/telemetry", b'{"t": 9}', qos=1, packet_id=1))
        puback = await asyncio.wait_for(reader.readexactly(2), 10)
        body = await reader.readexactly(puback[1])
    finally:
        writer.close()
    got = [body[2]]
    assert got == [0x87]  # Mosquitto's own answer: not authorized
    audit = await until(lambda: audit_rows(gateway, "publish_denied"))
    assert audit[0]["username"] == "mallory"
    assert await gateway.readings("victim", None, 10) == []


async def test_telemetry_only_device_outlives_three_keepalives_and_gets_its_errors(
    gateway: Gateway,
) -> None:
    dev = await gateway.add_device("ka1", None)
    keepalive = 1
    async with aiomqtt.Client(
        "127.0.0.1", gateway.mqtt_port, username="ka1", password=dev["token"],
        keepalive=keepalive,
    ) as c:  # fmt: skip
        await c.subscribe("devices/ka1/errors", qos=1)
        # paho pings only when it sent nothing for a keep-alive; telemetry every 0.3 s means
        # the broker sees no packet of this device's for 4 x its keep-alive but the front's.
        for i in range(14):
            await c.publish("devices/ka1/telemetry", json.dumps({"t": i}).encode(), qos=1)
            await asyncio.sleep(0.3)
        await c.publish("devices/ka1/telemetry", b"not json", qos=1)
        async with asyncio.timeout(10):
            async for msg in c.messages:
                problem = json.loads(msg.payload)  # type: ignore[arg-type]
                break
    assert problem["status"] == 400
    assert gateway._front is not None and gateway._front.tap_counters.keepalive_pings >= 2
    assert len(await gateway.readings("ka1", None, 100)) == 14


async def test_qos2_telemetry_is_stored_once_and_v5_response_topic_answered(
    gateway: Gateway,
) -> None:
    dev = await gateway.add_device("q2", None)
    async with aiomqtt.Client(
        "127.0.0.1", gateway.mqtt_port, username="q2", password=dev["token"],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:  # fmt: skip
        await c.subscribe("devices/q2/replies", qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "devices/q2/replies"
        props.CorrelationData = b"r1"
        await c.publish("devices/q2/telemetry", b'{"ts": 1764300000000, "values": {"p": 1}}',
                        qos=2, properties=props)  # fmt: skip
        async with asyncio.timeout(10):
            async for msg in c.messages:
                reply = json.loads(msg.payload)  # type: ignore[arg-type]
                break
    assert reply == {"status": "accepted", "readings": 1}
    assert len(await gateway.readings("q2", None, 10)) == 1


async def test_a_device_may_share_a_subscription_under_its_own_prefix(gateway: Gateway) -> None:
    """MQTT 5 shared subscriptions ($share/GROUP/FILTER) are a device's right under its own
    prefix too (Paho's interoperability suite found them refused where Mosquitto allows)."""
    dev = await gateway.add_device("sh1", None)
    async with aiomqtt.Client(
        "127.0.0.1", gateway.mqtt_port, username="sh1", password=dev["token"],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:  # fmt: skip
        granted = await c.subscribe("$share/workers/devices/sh1/jobs", qos=1)
        assert [code.value for code in granted] == [1]  # type: ignore[union-attr]
        await c.publish("devices/sh1/jobs", b"job-1", qos=1)
        async with asyncio.timeout(10):
            async for msg in c.messages:
                assert msg.payload == b"job-1"
                break
        refused = await c.subscribe("$share/workers/devices/other/jobs", qos=1)
        assert [code.value for code in refused] == [0x87]  # type: ignore[union-attr]


async def _connack_code(gateway: Gateway, user: str, password: str, source: str) -> int:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", gateway.mqtt_port, local_addr=(source, 0)
    )
    try:
        writer.write(
            encode_connect("c", keepalive=30, clean_start=True, username=user, password=password)
        )
        head = await asyncio.wait_for(reader.readexactly(2), 10)
        body = await reader.readexactly(head[1])
        return body[1]
    finally:
        writer.close()


async def test_wrong_passwords_from_an_attacker_do_not_lock_the_device_out(
    gateway: Gateway,
) -> None:
    """Found by an attack run: 10 wrong passwords for a device's id locked that device out
    from every address. Now they lock that id from the attacker's address only."""
    dev = await gateway.add_device("target", None)
    for _ in range(10):
        assert await _connack_code(gateway, "target", "wrong", "127.0.0.2") in (0x86, 0x87)
    # the attacker, even with the right password, is refused (locked, v5 0x97) ...
    assert await _connack_code(gateway, "target", dev["token"], "127.0.0.2") == 0x97
    # ... the device, from its own address, is not
    assert await _connack_code(gateway, "target", dev["token"], "127.0.0.3") == 0
