"""A simulated OSCORE device (`iotsphere sim coap --oscore CONTEXT.json`): protected
`POST /telemetry` with the context `gateway device add ID --oscore` printed.

Unlike the token simulator (its own few-dozen-line codec), this one uses aiocoap's client: the
protection itself (COSE, AES-CCM, key derivation, the Echo exchange after a gateway crash) is not
something firmware writes by hand either. The device's sequence numbers live next to the context
file (`CONTEXT.json.state/`), so a second run continues where the first stopped, as firmware
that keeps them in flash does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiocoap
import aiocoap.error
import aiocoap.oscore
from aiocoap import POST, Message, Reliable, Unreliable

from firmware_stubs.coap_sim import CoapSimConfig, CoapSimStats
from firmware_stubs.credentials import DeviceCredentials
from firmware_stubs.oscore_device import (
    OscoreDeviceError,
    client_credentials,
    context_of,
    write_context_dir,
)
from firmware_stubs.request_sim import FORMATS, payload_for

REQUEST_TIMEOUT_S = 30.0


def load_oscore_device(path: Path) -> tuple[DeviceCredentials, Path]:
    """(the device, its context directory) from a file holding what `device add --oscore`
    printed."""
    try:
        printed = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OscoreDeviceError(f"cannot read {path}: {exc}") from None
    if not isinstance(printed, dict):
        raise OscoreDeviceError(f"{path}: expected a JSON object")
    device_id, _ = context_of(printed)
    if device_id is None:
        raise OscoreDeviceError(f"{path}: no device_id (save all of `device add --oscore` output)")
    state = write_context_dir(path.with_name(path.name + ".state"), printed)
    return DeviceCredentials(device_id, ""), state


def _release(ctx: aiocoap.Context) -> None:
    # aiocoap saves a context's sequence number and releases its lock only from __del__.
    for entry in list(ctx.client_credentials.values()):
        if getattr(entry, "lockfile", None) is not None:
            entry._destroy()


async def run_oscore_simulation(
    config: CoapSimConfig, context_dir: Path, stop: asyncio.Event | None = None
) -> CoapSimStats:
    """One device (config.devices[0]) sending config.count readings at config.rate."""
    stop = stop or asyncio.Event()
    device = config.devices[0]
    stats = CoapSimStats(devices=1)
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials.load_from_dict(client_credentials(context_dir, config.host))
    uri = f"coap://{config.host}:{config.port}/telemetry"
    started = time.perf_counter()
    retry: list[tuple[int, int]] = []
    seqs = itertools.count(1)
    try:
        next_at = time.perf_counter()
        while not stop.is_set():
            if retry:
                stats.resent += 1
                seq, ts = retry.pop(0)
            else:
                seq = next(seqs)
                if config.count and seq > config.count:
                    break
                ts = time.time_ns() // 1_000_000
            body = payload_for(config.fmt, device.device_id, config.metrics, seq, ts)
            code = await _post(ctx, uri, body, config)
            stats.sent += 1
            stats.answered(code)
            if code == "2.04":
                stats.acked += 1
            elif code == "timeout" or code.startswith("5."):
                stats.timeouts += code == "timeout"
                retry.append((seq, ts))
            if not config.saturate:
                next_at += 1.0 / config.rate
                delay = next_at - time.perf_counter()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
    finally:
        stats.elapsed_s = time.perf_counter() - started
        await ctx.shutdown()
        _release(ctx)
    return stats


async def _post(ctx: aiocoap.Context, uri: str, body: bytes, config: CoapSimConfig) -> str:
    tuning: Any = Reliable if config.confirmable else Unreliable
    msg = Message(code=POST, uri=uri, payload=body, transport_tuning=tuning)
    msg.opt.content_format = FORMATS[config.fmt]
    try:
        answer = await asyncio.wait_for(ctx.request(msg).response, REQUEST_TIMEOUT_S)
    except aiocoap.oscore.NotAProtectedMessage as exc:
        # refused before decryption (unknown context, replay, revoked): a plain answer
        return str(exc.plain_message.code).split(" ")[0]
    except (TimeoutError, aiocoap.error.Error):
        return "timeout"
    return str(answer.code).split(" ")[0]
