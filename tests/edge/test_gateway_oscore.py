"""OSCORE (RFC 8613) devices: `POST coap://GATEWAY/telemetry` protected with the context that
`gateway device add ID --oscore` created; real aiocoap clients, real gateways on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.oscore
from aiocoap import POST, Code, Message

from edge.app.config import GatewayConfig
from edge.app.gateway import Gateway
from edge.ingest.coap.oscore_contexts import (
    ContextParams,
    OscoreKeystore,
    new_device_params,
)
from firmware_stubs.oscore_device import client_credentials, write_context_dir
from tests.conftest import IOTSPHERE, REPO, GatewayProcess, cli, cli_json, running
from tests.support.coap import coap_client, udp_socket
from tests.support.udp_relay import udp_relay


@contextlib.asynccontextmanager
async def oscore_client(context_dir: Path) -> AsyncIterator[aiocoap.Context]:
    """An aiocoap client whose requests to 127.0.0.1 are protected with the device context."""
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials.load_from_dict(client_credentials(context_dir, "127.0.0.1"))
    try:
        yield ctx
    finally:
        await ctx.shutdown()
        # aiocoap saves a context's counters and releases its lock only when it is collected
        for entry in list(ctx.client_credentials.values()):
            destroy = getattr(entry, "_destroy", None)
            if destroy is not None and getattr(entry, "lockfile", None) is not None:
                destroy()


async def post(ctx: aiocoap.Context, port: int, body: dict[str, Any]) -> Message:
    msg = Message(
        code=POST, uri=f"coap://127.0.0.1:{port}/telemetry", payload=json.dumps(body).encode()
    )
    msg.opt.content_format = 50
    return await ctx.request(msg).response


async def refused(ctx: aiocoap.Context, port: int, body: dict[str, Any]) -> Code:
    """The code of an unprotected refusal (unknown context, failed decryption, replay): the
    client library raises, as a protected request must get a protected answer."""
    try:
        answer = await post(ctx, port, body)
    except aiocoap.oscore.NotAProtectedMessage as exc:
        code: Code = exc.plain_message.code
        return code
    raise AssertionError(f"answered {answer.code} under the context")


def device_dir(tmp_path: Path, printed: dict[str, Any]) -> Path:
    return write_context_dir(tmp_path / f"device-{printed['device_id']}", printed)


async def replay(datagram: bytes, port: int) -> Message:
    """Send a captured datagram again, raw, from a new socket (a new source address, so CoAP's
    message-id deduplication cannot be what stops it)."""

    def exchange() -> Message:
        sock = udp_socket()
        try:
            sock.sendto(datagram, ("127.0.0.1", port))
            return Message.decode(sock.recvfrom(2048)[0])
        finally:
            sock.close()

    return await asyncio.to_thread(exchange)


async def count(gw: Gateway, device_id: str) -> int:
    return len(await gw.readings(device_id, None, 1000))


def is_protected(datagram: bytes) -> bool:
    return Message.decode(datagram).opt.oscore is not None


# -- pure parts ----------------------------------------------------------------------------------


def test_keystore_writes_private_files_and_unique_kids(tmp_path: Path) -> None:
    keys = OscoreKeystore(tmp_path)
    device = keys.create("d1")
    gw_side = keys.gateway_params("d1")
    assert gw_side == device.mirrored()
    assert len(device.secret) == 32 and device.algorithm == "AES-CCM-16-64-128"
    assert stat.S_IMODE(keys.dir_of("d1").stat().st_mode) == 0o700
    assert stat.S_IMODE((keys.dir_of("d1") / "secret.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.root.stat().st_mode) == 0o700
    # device ids such as ".." never become path components of their own
    keys.create("..")
    assert keys.dir_of("..").parent == keys.root and keys.has("..")
    assert keys.device_ids() == ["..", "d1"]
    assert keys.kids() == {device.sender_id, keys.gateway_params("..").recipient_id}
    # a kid in use is never handed out again
    params = new_device_params({device.sender_id})
    assert params.sender_id != device.sender_id
    assert ContextParams.from_json(device.to_json()) == device
    # re-creating replaces; removing deletes everything
    again = keys.create("d1")
    assert again.secret != device.secret and keys.gateway_params("d1") == again.mirrored()
    assert keys.remove("d1") and not keys.dir_of("d1").exists() and not keys.remove("d1")


# -- against a running gateway -------------------------------------------------------------------


async def test_protected_post_is_stored_and_plain_or_foreign_is_refused(
    gateway: Gateway, tmp_path: Path
) -> None:
    printed = await gateway.add_device("o1", "thermo", oscore=True)
    assert set(printed["oscore"]) >= {"secret_hex", "salt_hex", "sender-id_hex", "recipient-id_hex"}
    port = gateway.coap_port
    assert port is not None
    async with oscore_client(device_dir(tmp_path, printed)) as ctx:
        r = await post(ctx, port, {"temperature": 21.5})
        assert r.code == Code.CHANGED
        # a reading outside the device type's limits: rejected with a problem document,
        # which travels back protected as well
        r = await post(ctx, port, {"temperature": 999})
        assert r.code == Code.BAD_REQUEST
        assert json.loads(r.payload)["errors"][0]["path"] == "/temperature"
        r = await ctx.request(
            Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/telemetry")
        ).response
        assert r.code == Code.METHOD_NOT_ALLOWED
    rows = await gateway.readings("o1", None, 10)
    assert [(r["metric"], r["value"]) for r in rows] == [("temperature", 21.5)]
    assert [e["transport"] for e in await gateway.errors(10) if e["device_id"] == "o1"] == ["coap"]
    # the same request without OSCORE: 4.01, nothing stored
    async with coap_client(port) as plain:
        r = await plain.post("", b'{"temperature": 22}', path="/telemetry")
        assert r.code == Code.UNAUTHORIZED
        assert json.loads(r.payload)["title"] == "OSCORE required"
    # a context the gateway never issued (unknown kid), and a known kid with a wrong secret
    stranger = new_device_params(set()).to_json()
    wrong_secret = {**printed["oscore"], "secret_hex": "00" * 32}
    for i, params in enumerate((stranger, wrong_secret)):
        other = write_context_dir(tmp_path / f"other-{i}", {"oscore": params})
        async with oscore_client(other) as ctx:
            expected = Code.UNAUTHORIZED if i == 0 else Code.BAD_REQUEST
            assert await refused(ctx, port, {"temperature": 23}) == expected
    assert await count(gateway, "o1") == 1
    status = await gateway.status()
    assert status["coap"]["oscore_requests"] == 2 and status["coap"]["oscore_required"] == 1
    assert status["coap"]["oscore_contexts"] == 1


async def test_replayed_datagram_is_refused_before_and_after_a_restart(
    gateway_config: GatewayConfig, tmp_path: Path
) -> None:
    async with running(gateway_config) as gw:
        printed = await gw.add_device("o2", "thermo", oscore=True)
        port = gw.coap_port
        assert port is not None
        context = device_dir(tmp_path, printed)
        async with oscore_client(context) as ctx, udp_relay(port) as relay:
            # flat objects: every handling would store a new reading (receive time)
            assert (await post(ctx, relay.port, {"temperature": 20})).code == Code.CHANGED
            captured = [d for d in relay.sent if is_protected(d)]
            assert len(captured) == 1
            r = await replay(captured[0], port)
            assert r.code == Code.UNAUTHORIZED
            assert await count(gw, "o2") == 1
            # the client itself goes on (its sequence number moved past the captured one)
            assert (await post(ctx, relay.port, {"temperature": 21})).code == Code.CHANGED
            assert await count(gw, "o2") == 2
    # restart: the replay window and sequence numbers come back from the data dir
    async with running(gateway_config) as gw:
        port = gw.coap_port
        assert port is not None
        async with oscore_client(context) as ctx, udp_relay(port) as relay:
            assert (await post(ctx, relay.port, {"temperature": 22})).code == Code.CHANGED
            after = [d for d in relay.sent if is_protected(d)]
        for old in (captured[0], *after):
            assert (await replay(old, port)).code == Code.UNAUTHORIZED
        assert await count(gw, "o2") == 3
        # revoking removes the context: the device is refused at once, the keys are gone
        await gw.revoke_device("o2")
        assert not OscoreKeystore(gateway_config.data_dir).dir_of("o2").exists()
        async with oscore_client(context) as ctx:
            assert await refused(ctx, port, {"temperature": 23}) == Code.UNAUTHORIZED
        assert await count(gw, "o2") == 3
        assert (await gw.status())["coap"]["oscore_contexts"] == 0


async def test_cli_oscore_device_survives_a_killed_gateway(
    gateway_process: GatewayProcess, tmp_path: Path
) -> None:
    """`gateway device add --oscore` with the gateway stopped and running; a gateway killed
    with SIGKILL (its replay window not saved) still refuses an old datagram and lets the device
    continue (aiocoap's Echo recovery, RFC 8613 B.1.2)."""
    data = gateway_process.data_dir
    stopped = cli_json("gateway", "device", "add", "s1", "--oscore", data_dir=data)
    assert stopped["device_id"] == "s1" and "secret_hex" in stopped["oscore"]
    keys = OscoreKeystore(data)
    assert stat.S_IMODE((keys.dir_of("s1") / "secret.json").stat().st_mode) == 0o600
    gateway_process.start()
    running_add = cli_json("gateway", "device", "add", "s2", "--oscore", data_dir=data)
    port = gateway_process.coap_port()
    dirs = {p["device_id"]: device_dir(tmp_path, p) for p in (stopped, running_add)}
    async with oscore_client(dirs["s1"]) as c1, oscore_client(dirs["s2"]) as c2:
        async with udp_relay(port) as relay:
            assert (await post(c1, relay.port, {"temperature": 1})).code == Code.CHANGED
            captured = [d for d in relay.sent if is_protected(d)]
        assert (await post(c2, port, {"temperature": 2})).code == Code.CHANGED
        assert gateway_process.stop(signal.SIGKILL) == -signal.SIGKILL
        gateway_process.start()
        port = gateway_process.coap_port()
        # The killed gateway did not save s1's replay window, so it cannot tell an old request
        # from a new one: it answers with a protected 4.01 + Echo challenge (outer code 2.04,
        # RFC 8613 B.1.2) that only the device can answer, and handles nothing.
        answer = await replay(captured[0], port)
        assert answer.code == Code.UNAUTHORIZED or answer.opt.oscore is not None
        coap = cli_json("gateway", "status", data_dir=data)["coap"]
        assert coap["oscore_requests"] == 0 and coap["accepted"] == 0
        # the device answers the challenge (aiocoap does that itself) and carries on
        assert (await post(c1, port, {"temperature": 3})).code == Code.CHANGED
        cli("gateway", "device", "revoke", "s2", data_dir=data)
        assert await refused(c2, port, {"temperature": 4}) == Code.UNAUTHORIZED
    values = [r["value"] for r in cli_json("gateway", "readings", data_dir=data)]
    assert sorted(values) == [1, 2, 3]
    assert not keys.dir_of("s2").exists() and keys.has("s1")
    gateway_process.stop()
    # revoked with the gateway stopped: the context goes too
    cli("gateway", "device", "revoke", "s1", data_dir=data)
    assert not keys.dir_of("s1").exists()


async def test_sim_coap_oscore_continues_across_runs(gateway: Gateway, tmp_path: Path) -> None:
    """`iotsphere sim coap --oscore FILE`: the device's sequence numbers are kept beside the
    file, so a second run is accepted too (starting again at 0 would be refused as replays)."""
    printed = await gateway.add_device("o3", "thermo", oscore=True)
    context = tmp_path / "o3.json"
    context.write_text(json.dumps(printed))
    argv = [*IOTSPHERE, "sim", "coap", "--oscore", str(context), "--port", str(gateway.coap_port),
            "--count", "3", "--rate", "50", "--metrics", "temperature", "--json"]  # fmt: skip

    def run() -> dict[str, Any]:
        proc = subprocess.run(
            argv, capture_output=True, text=True, cwd=REPO, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    for total in (3, 6):
        stats = await asyncio.to_thread(run)
        assert stats["answers"] == {"2.04": 3}
        assert await count(gateway, "o3") == total
    assert (tmp_path / "o3.json.state" / "sequence.json").exists()


async def test_block_wise_protected_batch_is_assembled(gateway: Gateway, tmp_path: Path) -> None:
    printed = await gateway.add_device("o4", "thermo", oscore=True)
    batch = [{"ts": 1764300000000 + i, "values": {"temperature": 20 + i % 10}} for i in range(300)]
    body = json.dumps(batch).encode()
    assert len(body) > 8_000  # several inner Block1 blocks, each protected on its own
    port = gateway.coap_port
    assert port is not None
    async with oscore_client(device_dir(tmp_path, printed)) as ctx:
        msg = Message(code=POST, uri=f"coap://127.0.0.1:{port}/telemetry", payload=body)
        msg.opt.content_format = 50
        assert (await ctx.request(msg).response).code == Code.CHANGED
    assert await count(gateway, "o4") == 300
    coap = (await gateway.status())["coap"]
    assert coap["block_continues"] > 5 and coap["oscore_requests"] > 5
