"""Gateway behaviours checked against an in-process gateway with real Mosquitto and DuckDB."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiomqtt
import cbor2
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.model import Reading, ReadingFlag
from edge.app.gateway import Gateway
from tests.support.waiting import until


def client(gw: Gateway, dev: dict, **kw) -> aiomqtt.Client:  # type: ignore[type-arg]
    return aiomqtt.Client(
        "127.0.0.1", gw.mqtt_port, username=dev["device_id"], password=dev["token"], **kw
    )


async def test_mqtt5_response_topic_and_correlation(gateway: Gateway) -> None:
    dev = await gateway.add_device("m5", "thermo")
    async with client(gateway, dev, protocol=aiomqtt.ProtocolVersion.V5) as c:
        await c.subscribe("devices/m5/replies", qos=1)
        for body, corr in ((b'{"temperature": 20}', b"ok-1"), (b'{"temperature": 999}', b"bad-2")):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "devices/m5/replies"
            props.CorrelationData = corr
            await c.publish("devices/m5/telemetry", body, qos=1, properties=props)
        replies = {}
        async with asyncio.timeout(10):
            async for msg in c.messages:
                replies[msg.properties.CorrelationData] = json.loads(msg.payload)  # type: ignore[union-attr, arg-type]
                if len(replies) == 2:
                    break
    assert replies[b"ok-1"]["status"] == "accepted"
    assert replies[b"bad-2"]["status"] == "rejected"
    assert replies[b"bad-2"]["problem"]["status"] == 400


async def test_cbor_senml_cbor_and_clockless_readings(gateway: Gateway) -> None:
    dev = await gateway.add_device("c1", None)
    senml_cbor = cbor2.dumps([{-2: "p.", -3: 1764300000.0, 0: "pressure", 2: 1013.2}])
    async with client(gateway, dev) as c:
        await c.publish(
            "devices/c1/telemetry",
            cbor2.dumps({"ts": 1764300000500, "values": {"rpm": 1200}}),
            qos=1,
        )
        await c.publish("devices/c1/telemetry", senml_cbor, qos=1)
        await c.publish("devices/c1/telemetry", b'{"battery": 3.7}', qos=1)  # no clock
        await c.publish("devices/c1/telemetry", b'{"ts": 5000, "values": {"x": 1}}', qos=1)

    async def rows():  # type: ignore[no-untyped-def]
        r = await gateway.readings("c1", None, 100)
        return r if len(r) == 4 else None

    got = {r["metric"]: r for r in await until(rows)}
    assert got["rpm"]["ts"] == 1764300000500 and got["rpm"]["value"] == 1200
    assert got["p.pressure"]["ts"] == 1764300000000
    battery = got["battery"]
    assert (
        battery["flags"] & ReadingFlag.TS_FROM_GATEWAY and battery["ts"] == battery["received_at"]
    )
    assert got["x"]["ts"] == 5000 and got["x"]["flags"] & ReadingFlag.TS_BEFORE_2000


async def test_broker_death_is_supervised(gateway: Gateway) -> None:
    dev = await gateway.add_device("b1", None)
    status = await gateway.status()
    old_pid = status["broker"]["pid"]
    os.kill(old_pid, signal.SIGKILL)

    async def restarted():  # type: ignore[no-untyped-def]
        s = await gateway.status()
        return s if s["broker"]["restarts"] == 1 and s["broker"]["pid"] != old_pid else None

    await until(restarted, 20)

    async def published():  # type: ignore[no-untyped-def]
        try:
            async with client(gateway, dev) as c:
                await c.publish(
                    "devices/b1/telemetry", b'{"ts": 1764300000000, "values": {"t": 1}}', qos=1
                )
        except aiomqtt.MqttError:
            return False
        return True

    await until(published, 20)  # the device credentials came back from DuckDB
    await until(lambda: gateway.readings("b1", None, 10), 20)


async def test_admin_errors_are_clean(gateway: Gateway) -> None:
    from edge.admin.backend import BackendError

    for bad in ("", "has space", "x" * 65, "a/b", "#"):
        try:
            await gateway.add_device(bad, None)
        except BackendError as exc:
            assert "invalid device id" in str(exc)
        else:
            raise AssertionError(f"device id {bad!r} accepted")
    await gateway.add_device("dup", None)
    try:
        await gateway.add_device("dup", None)
    except BackendError as exc:
        assert "already exists" in str(exc)
    else:
        raise AssertionError("duplicate device accepted")


async def test_rules_replay_readings_committed_before_a_crash(gateway_config) -> None:  # type: ignore[no-untyped-def]
    """A crash between a commit and its rule evaluation must not swallow the alert."""
    from edge.admin import ops
    from edge.alerts.rules_actor import CURSOR_KEY
    from edge.storage.store import Batch, GatewayStore

    store = GatewayStore(gateway_config.db_path)
    ops.add_rule(store, {"metric": "temperature", "operator": ">", "threshold": 30})
    store.commit(Batch(kv={CURSOR_KEY: "0"}))  # evaluated up to seq 0 ...
    store.commit(  # ... then this committed and the process died before evaluating it
        Batch(readings=[Reading("r1", "temperature", 1764300000000, 45.0, 1764300000001)])
    )
    store.close()
    gw = Gateway(gateway_config)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    await gw.ready.wait()
    try:
        alerts = await until(lambda: gw.alerts("active"))
        assert [(a["device_id"], a["value"]) for a in alerts] == [("r1", 45.0)]
    finally:
        stop.set()
        await task


async def test_revoke_disconnects_a_connected_device(gateway: Gateway) -> None:
    dev = await gateway.add_device("kick1", None)
    async with client(gateway, dev) as c:
        await c.subscribe("devices/kick1/errors", qos=1)
        await gateway.revoke_device("kick1")
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(10):
                async for _ in c.messages:
                    pass
    with pytest.raises(aiomqtt.MqttError):
        async with client(gateway, dev) as c:
            pass


async def test_retained_telemetry_is_stored_once(gateway_config) -> None:  # type: ignore[no-untyped-def]
    """A retained telemetry PUBLISH is taken by the MQTT front like any other: stored once,
    never retained by the broker, so no replay on the next start can store it again."""

    async def run_gateway() -> tuple[Gateway, asyncio.Event, asyncio.Task[None]]:
        gw = Gateway(gateway_config)
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await gw.ready.wait()
        return gw, stop, task

    gw, stop, task = await run_gateway()
    dev = await gw.add_device("ret1", None)
    async with client(gw, dev) as c:  # no ts: a replay would be a second reading
        await c.publish("devices/ret1/telemetry", b'{"battery": 3.3}', qos=1, retain=True)
    assert len(await gw.readings("ret1", None, 10)) == 1  # PUBACKed: committed already
    assert gw._front is not None and gw._front.tap_counters.telemetry == 1
    stop.set()
    await task
    gw, stop, task = await run_gateway()  # the ingress subscribes again
    try:
        async with client(gw, dev) as c:  # the broker holds nothing retained to hand out
            await c.subscribe("devices/ret1/telemetry", qos=1)
            await c.publish("devices/ret1/telemetry", b'{"battery": 3.2}', qos=1)
        assert len(await gw.readings("ret1", None, 10)) == 2
        assert gw._ingress is not None and gw._ingress.stats["retained_replays"] == 0
    finally:
        stop.set()
        await task
