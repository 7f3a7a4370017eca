"""OSCORE requests that aiocoap refuses itself (unknown kid, failed decryption, replay) are
audited and counted for lockout like bad tokens (edge.ingest.coap.oscore_guard); real gateways
in-process, real aiocoap clients, real UDP on loopback."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiocoap.oscore
from aiocoap import CON, GET, POST, Code, Message

from edge.app.config import GatewayConfig, LockoutConfig
from edge.app.gateway import Gateway
from edge.ingest.coap.oscore_contexts import new_device_params
from firmware_stubs.oscore_device import write_context_dir
from tests.conftest import running
from tests.edge.test_gateway_coap import port_of, problem_of
from tests.edge.test_gateway_oscore import device_dir, is_protected, oscore_client, post, replay
from tests.support.coap import coap_client, receive_answer, udp_socket
from tests.support.udp_relay import udp_relay
from tests.support.waiting import until

BODY = {"temperature": 21}


async def refusal(ctx: aiocoap.Context, port: int) -> Message:
    """The unprotected answer to a protected request (the client library raises on it)."""
    try:
        answer = await post(ctx, port, BODY)
    except aiocoap.oscore.NotAProtectedMessage as exc:
        plain: Message = exc.plain_message
        return plain
    raise AssertionError(f"answered {answer.code} under the context")


def assert_locked(answer: Message) -> None:
    assert answer.code == Code.TOO_MANY_REQUESTS
    assert answer.opt.oscore is None
    assert 0 < answer.opt.max_age <= 300
    assert problem_of(answer.payload)["status"] == 429


def stranger(tmp_path: Path, name: str, params: dict[str, Any] | None = None) -> Path:
    """A context directory the gateway never issued (by default: an unknown kid)."""
    oscore = params if params is not None else new_device_params(set()).to_json()
    return write_context_dir(tmp_path / name, {"oscore": oscore})


def kid_of(printed_or_params: dict[str, Any]) -> str:
    params = printed_or_params.get("oscore", printed_or_params)
    return f"oscore:{params['sender-id_hex']}"


def as_non(datagram: bytes) -> bytes:
    """The same CoAP message sent non-confirmable (the type is outside OSCORE's protection)."""
    assert (datagram[0] >> 4) & 0b11 == 0, "expected a confirmable message"
    return bytes([datagram[0] | 0x10]) + datagram[1:]


async def send_only(datagram: bytes, port: int) -> None:
    """Send one datagram from a new socket (a new source port: no message-id deduplication);
    a refused NON request gets no answer to wait for."""

    def send() -> None:
        sock = udp_socket()
        try:
            sock.sendto(datagram, ("127.0.0.1", port))
        finally:
            sock.close()

    await asyncio.to_thread(send)


async def audit(gw: Gateway) -> Counter[tuple[str, str]]:
    """(kind, reason) of the audit rows, counted (rows of one millisecond have no order)."""
    rows = await gw.audit(100)
    assert {r["transport"] for r in rows} <= {"coap"}
    return Counter((r["kind"], r["reason"]) for r in rows)


async def auth_stats(gw: Gateway) -> dict[str, Any]:
    stats: dict[str, Any] = (await gw.status())["coap"]["auth"]
    return stats


def lockout(per_user: int, per_address: int) -> LockoutConfig:
    return LockoutConfig(
        max_failures_per_user=per_user, max_failures_per_address=per_address, cooldown_s=300
    )


async def test_unknown_kid_is_audited_but_locks_no_address(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    """Failed OSCORE attempts are audited and counted, but a UDP source proves nothing:
    anyone could forge them from a device's or a neighbour's address (issue 11), so they
    never lock the address out, on CoAP or any other transport."""
    cfg = replace(gateway_config, lockout=lockout(per_user=10, per_address=3))
    async with running(cfg) as gw:
        token_dev = await gw.add_device("t1", "thermo")
        port = port_of(gw)
        params = new_device_params(set()).to_json()
        key = kid_of(params)
        async with oscore_client(stranger(tmp_path, "stranger", params)) as ctx:
            for _ in range(4):  # more than per_address
                answer = await refusal(ctx, port)
                assert answer.code == Code.UNAUTHORIZED
        async with coap_client(port) as plain:  # the token path from that address
            answer = await plain.post(token_dev["token"], json.dumps(BODY).encode())
            assert answer.code == Code.CHANGED
        assert await audit(gw) == {("auth_failure", f"unknown_context ({key})"): 4}
        stats = await auth_stats(gw)
        assert stats["failures"] == {"unknown_context": 4} and stats["lockouts"] == 0
        assert not gw._tracker.check("t1", "127.0.0.1").locked  # MQTT/HTTP from there
        assert not await gw.alerts("active")
        assert len(await gw.readings(None, None, 10)) == 1


async def test_forged_requests_under_a_known_kid_never_lock_out_its_device(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    """The kid is sent in clear: whoever saw one datagram could lock the device out by
    sending garbage under its kid. Failures are audited under the kid and counted against
    the address only."""
    cfg = replace(gateway_config, lockout=lockout(per_user=2, per_address=1000))
    async with running(cfg) as gw:
        victim = await gw.add_device("o1", "thermo", oscore=True)
        port = port_of(gw)
        key = kid_of(victim)
        wrong_secret = {**victim["oscore"], "secret_hex": "00" * 32}
        async with oscore_client(stranger(tmp_path, "forger", wrong_secret)) as ctx:
            for _ in range(5):  # more than per_user
                assert (await refusal(ctx, port)).code == Code.BAD_REQUEST  # decryption failed
        async with oscore_client(device_dir(tmp_path, victim)) as ctx:
            assert (await post(ctx, port, BODY)).code == Code.CHANGED
        assert await audit(gw) == {("auth_failure", f"decrypt_failed ({key})"): 5}
        stats = await auth_stats(gw)
        assert stats["failures"] == {"decrypt_failed": 5} and stats["lockouts"] == 0
        assert stats["admitted"] == 1
        assert not await gw.alerts("active")
        assert [r["device_id"] for r in await gw.readings(None, None, 10)] == ["o1"]


async def test_replayed_datagram_is_audited_and_counted(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    cfg = replace(gateway_config, lockout=lockout(per_user=10, per_address=3))
    async with running(cfg) as gw:
        printed = await gw.add_device("o1", "thermo", oscore=True)
        port = port_of(gw)
        key = kid_of(printed)
        async with oscore_client(device_dir(tmp_path, printed)) as ctx, udp_relay(port) as relay:
            assert (await post(ctx, relay.port, BODY)).code == Code.CHANGED
            captured = [d for d in relay.sent if is_protected(d)]
        assert len(captured) == 1
        for _ in range(4):  # a replay can come from anywhere: counted, never a lock
            answer = await replay(captured[0], port)
            assert (answer.code, answer.payload) == (Code.UNAUTHORIZED, b"Replay detected")
        assert await audit(gw) == {("auth_failure", f"replay ({key})"): 4}
        stats = await auth_stats(gw)
        assert stats["failures"] == {"replay": 4} and stats["admitted"] == 1
        assert stats["lockouts"] == 0
        assert len(await gw.readings("o1", None, 10)) == 1


async def test_refused_non_confirmable_requests_are_counted_though_unanswered(
    gateway: Gateway, tmp_path: Path
) -> None:
    """aiocoap drops a bad NON request without a word; the guard still audits it, with the
    reason found before handing it over (unknown kid; a sequence number already seen)."""
    printed = await gateway.add_device("o1", "thermo", oscore=True)
    port = port_of(gateway)
    params = new_device_params(set()).to_json()
    async with udp_relay(port) as relay:
        async with oscore_client(stranger(tmp_path, "stranger", params)) as ctx:
            assert (await refusal(ctx, relay.port)).code == Code.UNAUTHORIZED
        async with oscore_client(device_dir(tmp_path, printed)) as ctx:
            assert (await post(ctx, relay.port, BODY)).code == Code.CHANGED
        foreign, genuine = [d for d in relay.sent if is_protected(d)]
    await send_only(as_non(foreign), port)
    await send_only(as_non(genuine), port)
    expected = {
        ("auth_failure", f"unknown_context ({kid_of(params)})"): 2,  # the CON one, the NON one
        ("auth_failure", f"replay ({kid_of(printed)})"): 1,
    }

    async def all_audited() -> bool:
        return await audit(gateway) == expected

    await until(all_audited)
    stats = await auth_stats(gateway)
    assert stats["failures"] == {"unknown_context": 2, "replay": 1}
    assert len(await gateway.readings("o1", None, 10)) == 1


async def test_valid_client_is_not_counted_as_a_failure(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    cfg = replace(gateway_config, lockout=lockout(per_user=2, per_address=3))
    async with running(cfg) as gw:
        printed = await gw.add_device("o1", "thermo", oscore=True)
        port = port_of(gw)
        wrong_secret = {**printed["oscore"], "secret_hex": "00" * 32}
        async with (
            oscore_client(device_dir(tmp_path, printed)) as good,
            oscore_client(stranger(tmp_path, "forger", wrong_secret)) as forger,
        ):
            for i in range(5):  # more than per_address
                assert (await post(good, port, {"temperature": i})).code == Code.CHANGED
            assert not await audit(gw)
            stats = await auth_stats(gw)
            assert stats["failures"] == {} and stats["admitted"] == 5
            # a forger beside the device (or spoofing its address) is audited; the device
            # goes on: no failure over UDP locks anything
            for i in range(3):
                assert (await refusal(forger, port)).code == Code.BAD_REQUEST
                assert (await post(good, port, {"temperature": 10 + i})).code == Code.CHANGED
        key = kid_of(printed)
        assert await audit(gw) == {("auth_failure", f"decrypt_failed ({key})"): 3}
        stats = await auth_stats(gw)
        assert stats["failures"] == {"decrypt_failed": 3} and stats["lockouts"] == 0
        assert len(await gw.readings("o1", None, 10)) == 8


async def test_malformed_oscore_requests_are_decode_errors(gateway: Gateway) -> None:
    """An OSCORE option that does not parse, or a protected GET (OSCORE requests are POST or
    FETCH outside): refused as before, audited as decode_error (no kid to name)."""
    port = port_of(gateway)
    kid6 = bytes(6)

    def exchange(code: Code, option: bytes, token: bytes) -> Message:
        msg = Message(_mtype=CON, _mid=int.from_bytes(token, "big"), _token=token, code=code)
        msg.opt.oscore = option
        msg.payload = bytes(16)
        sock = udp_socket()
        try:
            sock.sendto(msg.encode(), ("127.0.0.1", port))
            return receive_answer(sock, token)[0]
        finally:
            sock.close()

    # reserved bits set in the option's flag byte
    answer = await asyncio.to_thread(exchange, POST, b"\xe0", b"m1")
    # aiocoap 0.4's answer (its wrapper does not catch this DecodeError), kept as it was
    assert answer.code == Code.INTERNAL_SERVER_ERROR
    # a well-formed option (partial IV 1, kid) on a GET
    answer = await asyncio.to_thread(exchange, GET, b"\x09\x01" + kid6, b"m2")
    assert answer.code == Code.METHOD_NOT_ALLOWED
    assert await audit(gateway) == {
        ("auth_failure", "decode_error"): 1,
        ("auth_failure", f"decode_error (oscore:{kid6.hex()})"): 1,
    }
    assert (await auth_stats(gateway))["failures"] == {"decode_error": 2}
