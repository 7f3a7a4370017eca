"""CoAP ingress against an in-process gateway (real aiocoap, Mosquitto and DuckDB on loopback)."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace
from typing import Any

import aiocoap
import cbor2
import pytest
from aiocoap import GET, Code, Message

from edge.app.config import GatewayConfig, LockoutConfig
from edge.app.gateway import Gateway
from edge.ingest.coap.context import SentAnswer, _send_initially
from tests.conftest import running
from tests.support.coap import coap_client, post_datagram, receive_answer, udp_socket


def problem_of(payload: bytes) -> dict:  # type: ignore[type-arg]
    doc = json.loads(payload)
    assert {"type", "title", "status", "detail", "errors"} <= set(doc)
    return doc  # type: ignore[no-any-return]


def port_of(gw: Gateway) -> int:
    assert gw.coap_port is not None
    return gw.coap_port


async def test_json_senml_and_cbor_are_stored_after_2_04(gateway: Gateway) -> None:
    dev = await gateway.add_device("c1", "thermo")
    tok = dev["token"]
    async with coap_client(port_of(gateway)) as c:
        r = await c.post(tok, b'{"temperature": 21.5, "door_open": false}', 50)
        assert r.code == Code.CHANGED
        senml = [{"bn": "c1/", "bt": 1764300000, "n": "temperature", "v": 22.0}]
        r = await c.post(tok, json.dumps(senml).encode(), 110)
        assert r.code == Code.CHANGED
        r = await c.post(
            tok, cbor2.dumps([{-2: "c1/", -3: 1764300001, 0: "temperature", 2: 23.0}]), 112
        )
        assert r.code == Code.CHANGED
        r = await c.post(
            tok, cbor2.dumps({"ts": 1764300002000, "values": {"temperature": 24.0}}), 60
        )
        assert r.code == Code.CHANGED
        # no Content-Format: recognised like an MQTT 3 payload
        r = await c.post(tok, b'{"temperature": 25.0}', None)
        assert r.code == Code.CHANGED
    # 2.04 came after the commit: the readings are there without waiting
    rows = await gateway.readings("c1", "temperature", 100)
    assert sorted(r["value"] for r in rows) == [21.5, 22.0, 23.0, 24.0, 25.0]
    assert {r["ts"] for r in rows} >= {1764300000000, 1764300001000, 1764300002000}
    status = await gateway.status()
    assert status["coap"]["accepted"] == 5 and status["coap"]["readings"] == 6
    assert status["coap"]["port"] == port_of(gateway)


async def test_bad_payload_token_format_path_and_method(gateway: Gateway) -> None:
    dev = await gateway.add_device("c2", "thermo")
    tok = dev["token"]
    async with coap_client(port_of(gateway)) as c:
        r = await c.post(tok, b'{"temperature": 999}', 50)  # above the type's max
        assert r.code == Code.BAD_REQUEST
        doc = problem_of(r.payload)
        assert doc["status"] == 400 and doc["errors"][0]["path"] == "/temperature"
        r = await c.post(tok, b"{not json", 50)
        assert r.code == Code.BAD_REQUEST
        r = await c.post(tok, b"<t>1</t>", 41)  # application/xml
        assert r.code == Code.UNSUPPORTED_CONTENT_FORMAT
        assert problem_of(r.payload)["status"] == 415
        r = await c.post("not-a-token", b'{"temperature": 20}', 50)
        assert r.code == Code.UNAUTHORIZED
        assert problem_of(r.payload)["status"] == 401
        r = await c.post(tok, b"", 50, path="/api/v1/telemetry")
        assert r.code == Code.NOT_FOUND
        r = await c.post(tok, b"", None, code=GET)
        assert r.code == Code.METHOD_NOT_ALLOWED
    assert await gateway.readings("c2", None, 10) == []
    errors = await gateway.errors(10)
    assert sorted(e["status"] for e in errors if e["device_id"] == "c2") == [400, 400, 415]
    assert all(e["transport"] == "coap" for e in errors)
    audit = await gateway.audit(10)
    assert [a["transport"] for a in audit] == ["coap"]
    assert "not-a-token" not in json.dumps(audit)  # only a digest of what was presented


async def test_non_confirmable_posts_are_stored(gateway: Gateway) -> None:
    dev = await gateway.add_device("c3", "thermo")
    # Device timestamps: flat objects sent in the same millisecond would share the receive
    # time and so be one reading (device, metric, ts).
    bodies = [json.dumps({"ts": 1764300000000 + i, "values": {"temperature": i}}) for i in range(5)]
    async with coap_client(port_of(gateway)) as c:
        replies = await asyncio.gather(
            *(c.post(dev["token"], b.encode(), confirmable=False) for b in bodies)
        )
    assert [r.code for r in replies] == [Code.CHANGED] * 5
    assert sorted(r["value"] for r in await gateway.readings("c3", None, 10)) == [0, 1, 2, 3, 4]


async def test_block1_large_payload_and_413(gateway: Gateway) -> None:
    dev = await gateway.add_device("c4", "thermo")
    batch = [{"ts": 1764300000000 + i, "values": {"temperature": 20 + i % 10}} for i in range(300)]
    body = json.dumps(batch).encode()
    assert 8_000 < len(body) < 65536  # several 1 KiB blocks
    async with coap_client(port_of(gateway)) as c:
        r = await c.post(dev["token"], body, 50)
        assert r.code == Code.CHANGED
        huge = json.dumps([{"ts": i, "values": {"temperature": 1}} for i in range(2000)]).encode()
        assert len(huge) > 65536
        r = await c.post(dev["token"], huge, 50)
        assert r.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert r.opt.size1 == 65536
        assert problem_of(r.payload)["status"] == 413
    assert len(await gateway.readings("c4", None, 1000)) == 300
    status = await gateway.status()
    assert status["coap"]["block_continues"] > 8


async def test_confirmable_retransmission_is_handled_once(gateway: Gateway) -> None:
    dev = await gateway.add_device("c5", "thermo")
    # No device timestamp: a second handling would store a second reading (another receive
    # time), so only the message-id deduplication keeps this at one.
    datagram = post_datagram(dev["token"], b'{"temperature": 30}', mid=4242, msg_token=b"rt")
    target = ("127.0.0.1", port_of(gateway))
    sock = udp_socket()
    try:
        sock.sendto(datagram, target)
        sock.sendto(datagram, target)  # retransmitted before any answer
        first, _ = await asyncio.to_thread(receive_answer, sock, b"rt")
        sock.sendto(datagram, target)  # retransmitted after the answer (the ACK was "lost")
        again, _ = await asyncio.to_thread(receive_answer, sock, b"rt")
    finally:
        sock.close()
    assert first.code == again.code == Code.CHANGED

    # the cached answer (kept as its datagram: edge.ingest.coap.context.SentAnswer) is the same one
    def fields(m: Message) -> tuple[Any, ...]:
        return m.mtype, m.mid, m.code, m.token, m.payload, m.opt

    assert fields(again) == fields(first)
    assert len(await gateway.readings("c5", None, 10)) == 1
    assert (await gateway.status())["coap"]["accepted"] == 1


async def test_revoked_device_is_refused_at_once(gateway: Gateway) -> None:
    dev = await gateway.add_device("c6", "thermo")
    async with coap_client(port_of(gateway)) as c:
        assert (await c.post(dev["token"], b'{"temperature": 1}')).code == Code.CHANGED
        await gateway.revoke_device("c6")
        assert (await c.post(dev["token"], b'{"temperature": 2}')).code == Code.UNAUTHORIZED
        # a cloud revocation goes the same way
        other = await gateway.add_device("c7", "thermo")
        assert (await c.post(other["token"], b'{"temperature": 3}')).code == Code.CHANGED
        await gateway.apply_cloud_config(0, {"version": 1, "revoked_devices": ["c7"]})
        assert (await c.post(other["token"], b'{"temperature": 4}')).code == Code.UNAUTHORIZED


async def test_token_lockout_429_with_max_age_audit_and_alert(gateway: Gateway) -> None:
    good = await gateway.add_device("c8", "thermo")
    async with coap_client(port_of(gateway)) as c:
        codes = [(await c.post("wrong-token", b'{"temperature": 1}')).code for _ in range(10)]
        assert codes == [Code.UNAUTHORIZED] * 10  # max_failures_per_user = 10 (THERMO_TOML)
        r = await c.post("wrong-token", b'{"temperature": 1}')
        assert r.code == Code.TOO_MANY_REQUESTS
        assert 0 < r.opt.max_age <= 300
        assert problem_of(r.payload)["status"] == 429
        # the token is locked, not the address: a valid device there still gets through
        assert (await c.post(good["token"], b'{"temperature": 2}')).code == Code.CHANGED
    audit = await gateway.audit(50)
    kinds = [a["kind"] for a in audit]
    assert kinds.count("lockout") == 1 and kinds.count("auth_failure") == 11
    assert {a["transport"] for a in audit} == {"coap"}
    alerts = await gateway.alerts("active")
    assert [a["rule_id"] for a in alerts] == ["security.lockout"]
    assert alerts[0]["device_id"].startswith("user:token:")


async def test_guessed_tokens_over_udp_lock_no_address(gateway_config: GatewayConfig) -> None:
    """A UDP source address proves nothing: 12 bad-token POSTs (which anyone can forge with
    the device's or a neighbour's address) must not lock that address out on any transport.
    Guessing a 190-bit token is bounded by its size, and each guessed token from an address
    is locked for that address; the audit is rate-limited."""
    cfg = replace(gateway_config, lockout=LockoutConfig(max_failures_per_address=5))
    async with running(cfg) as gw:
        good = await gw.add_device("c9", "thermo")
        async with coap_client(port_of(gw)) as c:
            for i in range(12):
                r = await c.post(f"guess-{i}", b'{"temperature": 1}')
                assert r.code == Code.UNAUTHORIZED
            r = await c.post(good["token"], b'{"temperature": 1}')
            assert r.code == Code.CHANGED  # the right token from that address still works
            for _ in range(9):  # one token tried again and again (10 in all): that pair locks
                r = await c.post("guess-0", b'{"temperature": 1}')
            r = await c.post("guess-0", b'{"temperature": 1}')
            assert r.code == Code.TOO_MANY_REQUESTS
        assert not gw._tracker.check("c9", "127.0.0.1").locked  # MQTT/HTTP from there too
        audit = await gw.audit(50)
        assert not any(a["kind"] == "lockout" and "addr:" in a["reason"] for a in audit)
        assert len(await gw.readings("c9", None, 10)) == 1


async def test_garbage_datagrams_do_not_stop_the_listener(gateway: Gateway) -> None:
    dev = await gateway.add_device("c10", "thermo")
    target = ("127.0.0.1", port_of(gateway))
    sock = udp_socket()
    try:
        for junk in (b"", b"\x00", b"\xff" * 3, b"\x40\x02\x00", bytes(range(256)) * 4,
                     b"\x44\x02\x00\x01\xff\xff\xff\xff"):  # fmt: skip
            sock.sendto(junk, target)
    finally:
        sock.close()
    async with coap_client(port_of(gateway)) as c:
        assert (await c.post(dev["token"], b'{"temperature": 5}')).code == Code.CHANGED
    assert len(await gateway.readings("c10", None, 10)) == 1


async def test_port_in_use_is_one_clear_error(gateway_config: GatewayConfig) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        cfg = replace(gateway_config, coap_port=taken.getsockname()[1])
        from edge.ingest.coap.ingress import CoapIngressError

        with pytest.raises(CoapIngressError, match="cannot listen for CoAP"):
            async with running(cfg):
                pass
    finally:
        taken.close()


def test_answer_cache_keeps_only_the_datagram_of_an_ack() -> None:
    """edge.ingest.coap.context: a piggy-backed answer is cached as bytes; anything else goes on to
    aiocoap unchanged."""
    recent: dict[tuple[Any, int], Any] = {("peer", 7): None}
    sent: list[Any] = []
    stock: list[Any] = []
    answer = Message(_mtype=aiocoap.ACK, _mid=7, code=Code.CHANGED, _token=b"t", payload=b"ok")
    answer.remote = "peer"
    _send_initially(recent, lambda m, mon: stock.append(m), sent.append, answer)
    cached = recent[("peer", 7)]
    assert isinstance(cached, SentAnswer) and sent == [cached] and not stock
    assert cached.encode() == answer.encode()
    _send_initially(recent, lambda m, mon: stock.append(m), sent.append, cached)  # a duplicate
    assert sent == [cached, cached] and recent[("peer", 7)] is cached
    separate = Message(_mtype=aiocoap.CON, _mid=8, code=Code.CHANGED, _token=b"t")
    separate.remote = "peer"
    _send_initially(recent, lambda m, mon: stock.append(m), sent.append, separate)
    unknown = Message(_mtype=aiocoap.ACK, _mid=9, code=Code.CHANGED, _token=b"u")
    unknown.remote = "peer"
    _send_initially(recent, lambda m, mon: stock.append(m), sent.append, unknown)
    assert stock == [separate, unknown] and len(sent) == 2


async def test_unknown_critical_option_is_answered_4_02_and_stores_nothing(
    gateway: Gateway,
) -> None:
    """RFC 7252 5.4.1: an unrecognised critical option (odd number, here 25) in a CON request
    is answered 4.02 Bad Option; it used to be accepted with 2.04."""
    dev = await gateway.add_device("opt1", None)
    payload = b'{"t": 1}'
    plain = post_datagram(dev["token"], payload, mid=4242)  # its last option: 12 (format)
    marker = len(plain) - len(payload) - 1
    assert plain[marker] == 0xFF
    # option 25 after 12: delta 13 (nibble 13, extended byte 0), length 0
    datagram = plain[:marker] + b"\xd0\x00" + plain[marker:]
    assert 25 in [int(o.number) for o in Message.decode(datagram).opt.option_list()]
    sock = udp_socket()
    try:
        await asyncio.to_thread(sock.sendto, datagram, ("127.0.0.1", port_of(gateway)))
        answer, _ = await asyncio.to_thread(receive_answer, sock, b"\x01\x02")
    finally:
        sock.close()
    assert answer.code == Code.BAD_OPTION
    assert problem_of(answer.payload)["status"] == 402
    assert await gateway.readings("opt1", None, 10) == []


async def test_undecodable_datagrams_are_counted_not_logged_each(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A Uri-Path that is not UTF-8 (40 02 00 01 b1 ff) raised out of aiocoap into the event
    loop, one ~2 KB traceback per datagram; other garbage was one warning per datagram."""
    dev = await gateway.add_device("garb1", None)
    sock = udp_socket()
    port = port_of(gateway)
    try:
        for mid in range(300):
            bad_utf8 = bytes((0x40, 0x02)) + mid.to_bytes(2, "big") + b"\xb1\xff"
            truncated = bytes((0x40, 0x02)) + mid.to_bytes(2, "big") + b"\xb9abc"  # 9 announced
            sock.sendto(bad_utf8, ("127.0.0.1", port))
            sock.sendto(truncated, ("127.0.0.1", port))
        # A good request after the garbage: answered, so everything before it was handled.
        sock.sendto(post_datagram(dev["token"], b'{"t": 1}', mid=9999), ("127.0.0.1", port))
        answer, _ = await asyncio.to_thread(receive_answer, sock, b"\x01\x02")
    finally:
        sock.close()
    assert answer.code == Code.CHANGED
    assert gateway._coap is not None and gateway._coap.malformed.count >= 300
    noisy = [r for r in caplog.records if r.levelno >= 30]
    assert len(noisy) <= 3, [r.getMessage()[:120] for r in noisy]
    assert not any(r.exc_info for r in caplog.records)
