"""The MQTT sensor simulator against a real Mosquitto (password file, no anonymous access)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import random
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from common.cli import CliError, main
from common.clock import ManualClock
from firmware_stubs.cli import register
from firmware_stubs.mqtt_sim import (
    Backoff,
    DeviceCredentials,
    Outbox,
    OutgoingMessage,
    SimConfig,
    SimConfigError,
    TelemetryGenerator,
    parse_credentials,
    run_simulation,
)
from tests.support.mosquitto import PlainBroker
from tests.support.waiting import until

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICES = (DeviceCredentials("dev-a", "tok-a"), DeviceCredentials("dev-b", "tok-b"))
OBSERVER = ("observer", "observer-pw")


# --------------------------------------------------------------------------- broker fixture


USERS = {**{d.device_id: d.token for d in DEVICES}, OBSERVER[0]: OBSERVER[1]}


def make_broker(workdir: Path, *, open_access: bool = False) -> PlainBroker:
    return PlainBroker(workdir, USERS, open_access=open_access)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PlainBroker]:
    b = make_broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@contextlib.asynccontextmanager
async def subscribed(broker: PlainBroker) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Everything published to devices/+/telemetry while the block runs, in arrival order."""
    received: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, username=OBSERVER[0], password=OBSERVER[1]
    ) as client:
        await client.subscribe("devices/+/telemetry", qos=1)

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append((str(message.topic), message.payload))

        task = asyncio.create_task(collect())
        try:
            yield received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def config_for(broker: PlainBroker, **overrides: object) -> SimConfig:
    base = SimConfig(
        devices=DEVICES,
        host=broker.host,
        port=broker.port,
        rate=500.0,
        count=20,
        qos=1,
        protocol=5,
        backoff_initial=0.02,
        backoff_max=0.2,
        seed=7,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def acked_lines(path: Path) -> list[tuple[str, int, int]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        device, seq, ts = line.split(" ")
        rows.append((device, int(seq), int(ts)))
    return rows


# --------------------------------------------------------------------------- against Mosquitto


async def test_two_devices_publish_all_messages_qos1(broker: PlainBroker, tmp_path: Path) -> None:
    log_path = tmp_path / "acked.log"
    async with subscribed(broker) as received:
        stats = await run_simulation(config_for(broker, acked_log=log_path))
        await until(lambda: len(received) >= 40, timeout_s=5.0)

    assert (stats.sent, stats.acked, stats.refused, stats.errors) == (40, 40, 0, 0)
    assert stats.unacked == 0
    assert len(received) == 40
    for device in ("dev-a", "dev-b"):
        docs = [json.loads(p) for t, p in received if t == f"devices/{device}/telemetry"]
        assert [d["seq"] for d in docs] == list(range(1, 21))
        stamps = [d["ts"] for d in docs]
        assert all(a < b for a, b in itertools.pairwise(stamps))
        assert all(set(d["values"]) == {"temperature", "humidity"} for d in docs)
        assert all(-40 <= d["values"]["temperature"] <= 85 for d in docs)
    assert {t for t, _ in received} == {"devices/dev-a/telemetry", "devices/dev-b/telemetry"}

    rows = acked_lines(log_path)
    assert len(rows) == 40
    assert sorted((d, s) for d, s, _ in rows) == sorted(
        (d, s) for d in ("dev-a", "dev-b") for s in range(1, 21)
    )
    # The acked log carries the same ts as the payload, so tests can match stored readings.
    sent_ts = {(t.split("/")[1], json.loads(p)["seq"]): json.loads(p)["ts"] for t, p in received}
    assert all(sent_ts[(d, s)] == ts for d, s, ts in rows)


@pytest.mark.parametrize("protocol", [5, 311])
async def test_wrong_password_is_refused_and_reported(broker: PlainBroker, protocol: int) -> None:
    config = config_for(broker, devices=DEVICES[:1], wrong_password=True, protocol=protocol)
    async with subscribed(broker) as received:
        stats = await run_simulation(config)
        # The observer shares the broker: a message let through would have arrived by now
        # (the refusal took three CONNACKs), so an empty list is meaningful.
        await asyncio.sleep(0.05)
    assert stats.refused == 1
    assert stats.refused_devices == ("dev-a",)
    assert (stats.sent, stats.acked) == (0, 0)
    assert received == []


async def test_malformed_every_fifth_message(broker: PlainBroker) -> None:
    config = config_for(broker, devices=DEVICES[:1], count=12, malformed_every=5)
    async with subscribed(broker) as received:
        stats = await run_simulation(config)
        await until(lambda: len(received) >= 12, timeout_s=5.0)
    assert stats.acked == 12  # the broker acknowledges broken payloads too; the gateway rejects
    valid: list[int] = []
    broken: list[int] = []
    for _, payload in received:
        try:
            valid.append(json.loads(payload)["seq"])
        except json.JSONDecodeError:
            match = re.search(rb'"seq":(\d+)', payload)
            assert match is not None
            broken.append(int(match.group(1)))
    assert broken == [5, 10]
    assert valid == [s for s in range(1, 13) if s % 5]


async def test_no_clock_sends_flat_objects_without_ts(broker: PlainBroker) -> None:
    config = config_for(
        broker, devices=DEVICES[1:], count=5, no_clock=True, metrics=("temperature", "co2")
    )
    async with subscribed(broker) as received:
        stats = await run_simulation(config)
        await until(lambda: len(received) >= 5, timeout_s=5.0)
    assert stats.acked == 5
    for topic, payload in received:
        doc = json.loads(payload)
        assert topic == "devices/dev-b/telemetry"
        assert set(doc) == {"temperature", "co2"}
        assert all(isinstance(v, float) for v in doc.values())


async def test_qos0_publishes_without_acks(broker: PlainBroker, tmp_path: Path) -> None:
    log_path = tmp_path / "acked.log"
    config = config_for(broker, devices=DEVICES[:1], count=10, qos=0, acked_log=log_path)
    async with subscribed(broker) as received:
        stats = await run_simulation(config)
        await until(lambda: len(received) >= 10, timeout_s=5.0)
    assert (stats.sent, stats.acked, stats.unacked) == (10, 0, 0)
    assert acked_lines(log_path) == []


async def test_reconnects_and_resends_after_broker_restart(
    broker: PlainBroker, tmp_path: Path
) -> None:
    log_path = tmp_path / "acked.log"
    config = config_for(broker, devices=DEVICES[:1], count=60, rate=100.0, acked_log=log_path)
    sim = asyncio.create_task(run_simulation(config))
    await until(lambda: len(acked_lines(log_path)) >= 10, timeout_s=5.0)
    broker.stop(kill=True)  # no goodbye: in-flight messages stay unacknowledged
    await asyncio.sleep(0.1)  # long enough for at least one failed reconnect attempt
    broker.start()
    stats = await asyncio.wait_for(sim, 10)

    assert stats.reconnects >= 1
    assert stats.errors >= 1
    assert stats.acked == 60 and stats.unacked == 0
    rows = acked_lines(log_path)
    assert sorted(s for _, s, _ in rows) == list(range(1, 61))  # each acked exactly once
    stamps = [ts for _, _, ts in sorted(rows, key=lambda r: r[1])]
    assert all(a < b for a, b in itertools.pairwise(stamps))


async def test_stop_ends_an_endless_run_with_stats(broker: PlainBroker, tmp_path: Path) -> None:
    log_path = tmp_path / "acked.log"
    config = config_for(broker, count=0, rate=200.0, acked_log=log_path)
    stop = asyncio.Event()
    sim = asyncio.create_task(run_simulation(config, stop=stop))
    await until(lambda: len(acked_lines(log_path)) >= 10, timeout_s=5.0)
    stop.set()
    stats = await asyncio.wait_for(sim, 5)
    assert stats.acked >= 10
    assert stats.acked == len(acked_lines(log_path))
    assert stats.sent >= stats.acked


# --------------------------------------------------------------------------- CLI


def sim_parser() -> argparse.ArgumentParser:
    """What common.cli.build_parser builds for the "sim" group, without the other groups."""
    parser = argparse.ArgumentParser(prog="iotsphere")
    sub = parser.add_subparsers(dest="group", required=True)
    register(sub.add_parser("sim"))
    return parser


def run_cli(argv: list[str]) -> int:
    """common.cli.main's contract: argparse exits 2 on usage errors, CliError carries a code."""
    try:
        args = sim_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        code: int = args.handler(args)
        return code
    except CliError as exc:
        return exc.exit_code


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["sim", "mqtt", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--malformed-every" in out and "--acked-log" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "mqtt", "--device", "d", "--token", "t", "--bogus"],
        ["sim", "mqtt", "--device", "d", "--token", "t", "--rate", "0"],
        ["sim", "mqtt", "--device", "d", "--token", "t", "--qos", "2"],
        ["sim", "mqtt", "--device", "d", "--token", "t", "--metrics", "bad name"],
        ["sim", "mqtt", "--count", "1"],  # neither --credentials nor --device
        ["sim", "mqtt", "--device", "d"],  # no token
        ["sim", "mqtt", "--credentials", "/nonexistent/creds.json"],
        ["sim"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(argv) == 2


def test_cli_devices_larger_than_file_is_a_usage_error(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps([{"device_id": "a", "token": "t"}]))
    assert run_cli(["sim", "mqtt", "--credentials", str(creds), "--devices", "2"]) == 2


async def test_cli_runs_a_fleet_from_a_credentials_file(
    broker: PlainBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps([{"device_id": d.device_id, "token": d.token} for d in DEVICES]))
    log_path = tmp_path / "acked.log"
    argv = [
        "sim", "mqtt", "--host", broker.host, "--port", str(broker.port),
        "--credentials", str(creds), "--devices", "1", "--rate", "500", "--count", "7",
        "--protocol", "311", "--acked-log", str(log_path), "--json",
    ]  # fmt: skip
    async with subscribed(broker) as received:
        # In a thread: the handler runs its own event loop, as it does under `iotsphere`.
        code = await asyncio.to_thread(run_cli, argv)
        await until(lambda: len(received) >= 7, timeout_s=5.0)
    assert code == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: stats[k] for k in ("sent", "acked", "refused", "reconnects", "errors")} == {
        "sent": 7, "acked": 7, "refused": 0, "reconnects": 0, "errors": 0,
    }  # fmt: skip
    assert {t for t, _ in received} == {"devices/dev-a/telemetry"}
    assert len(acked_lines(log_path)) == 7


async def test_cli_exit_codes_for_refusal(
    broker: PlainBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def argv(b: PlainBroker, *extra: str) -> list[str]:
        return [
            "sim", "mqtt", "--host", b.host, "--port", str(b.port), "--json",
            "--device", "dev-a", "--count", "1", "--backoff", "0.01", *extra,
        ]  # fmt: skip

    # Refused with --wrong-password is the expected outcome.
    wrong = argv(broker, "--token", "tok-a", "--wrong-password")
    assert await asyncio.to_thread(run_cli, wrong) == 0
    assert json.loads(capsys.readouterr().out)["refused"] == 1
    # Refused without it is a failure.
    assert await asyncio.to_thread(run_cli, argv(broker, "--token", "nope")) == 1
    assert json.loads(capsys.readouterr().out)["refused"] == 1
    # A broker that lets a wrong password in fails the --wrong-password check.
    open_broker = make_broker(tmp_path / "open", open_access=True)
    open_broker.start()
    try:
        code = await asyncio.to_thread(
            run_cli, argv(open_broker, "--token", "tok-a", "--wrong-password")
        )
    finally:
        open_broker.stop()
    assert code == 1
    assert json.loads(capsys.readouterr().out)["refused"] == 0


# The `iotsphere` dispatcher in miniature, for a real process that receives a real SIGINT.
_SIM_MAIN = """
import argparse, sys
from common.cli import CliError
from firmware_stubs.cli import register
parser = argparse.ArgumentParser(prog="iotsphere")
register(parser.add_subparsers(dest="group", required=True).add_parser("sim"))
args = parser.parse_args(sys.argv[1:])
try:
    sys.exit(args.handler(args))
except CliError as exc:
    sys.exit(exc.exit_code)
"""


async def test_ctrl_c_drains_and_prints_stats(broker: PlainBroker, tmp_path: Path) -> None:
    log_path = tmp_path / "acked.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIM_MAIN,
        "sim", "mqtt", "--host", broker.host, "--port", str(broker.port),
        "--device", "dev-a", "--token", "tok-a", "--count", "0", "--rate", "100",
        "--acked-log", str(log_path), "--json",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await until(lambda: len(acked_lines(log_path)) >= 5, timeout_s=5.0)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out)
    assert stats["acked"] >= 5
    assert stats["acked"] == len(acked_lines(log_path))  # drained: nothing acked unlogged


def _groups_importable() -> bool:
    try:
        return all(importlib.util.find_spec(m) for m in ("edge.app.cli", "edge.app.demo"))
    except ImportError:
        return False


@pytest.mark.skipif(not _groups_importable(), reason="edge.app.cli/edge.app.demo not written yet")
def test_iotsphere_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sim", "mqtt", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["sim", "mqtt", "--no-such-flag"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- pure cores


def test_generator_ts_strictly_increases_on_a_stopped_clock() -> None:
    clock = ManualClock()
    gen = TelemetryGenerator(["temperature"], random.Random(1))
    messages = [gen.next(clock.now_ms()) for _ in range(5)]
    assert [m.seq for m in messages] == [1, 2, 3, 4, 5]
    assert [m.ts for m in messages] == [clock.now_ms() + i for i in range(5)]
    clock.advance(10)
    later = gen.next(clock.now_ms())
    assert later.ts == clock.now_ms()
    assert json.loads(later.payload) == {
        "ts": later.ts, "seq": 6, "values": {"temperature": pytest.approx(21, abs=5)},
    }  # fmt: skip


def test_generator_malformed_and_no_clock() -> None:
    gen = TelemetryGenerator(["humidity"], random.Random(2), malformed_every=3, no_clock=True)
    messages = [gen.next(1000) for _ in range(7)]
    assert [m.malformed for m in messages] == [False, False, True, False, False, True, False]
    for m in messages:
        if m.malformed:
            with pytest.raises(json.JSONDecodeError):
                json.loads(m.payload)
        else:
            assert set(json.loads(m.payload)) == {"humidity"}


def test_random_walk_stays_in_range() -> None:
    gen = TelemetryGenerator(["humidity", "custom_metric"], random.Random(3))
    for _ in range(5000):
        values = json.loads(gen.next(0).payload)["values"]
        assert 0 <= values["humidity"] <= 100
        assert 0 <= values["custom_metric"] <= 100


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 8.0, random.Random(4))
    for attempt in range(12):
        ceiling = min(8.0, 0.5 * 2**attempt)
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered, so a fleet does not reconnect in lockstep


def _msg(seq: int) -> OutgoingMessage:
    return OutgoingMessage(seq=seq, ts=1000 + seq, payload=b"{}")


def test_outbox_resends_only_unacked_after_rewind() -> None:
    box = Outbox(capacity=10)
    for seq in (1, 2, 3):
        box.add(_msg(seq))
    sent = [box.next_to_send() for _ in range(4)]
    assert [(m.seq, first) for m, first in filter(None, sent)] == [(1, True), (2, True), (3, True)]
    assert sent[3] is None
    assert box.ack(2) and not box.ack(2)
    box.rewind()
    box.add(_msg(4))
    again = [box.next_to_send() for _ in range(4)]
    assert again[3] is None
    assert [(m.seq, first) for m, first in filter(None, again)] == [
        (1, False), (3, False), (4, True),
    ]  # fmt: skip
    assert len(box) == 3


def test_outbox_drops_oldest_when_full() -> None:
    box = Outbox(capacity=2)
    for seq in (1, 2, 3):
        box.add(_msg(seq))
    assert box.dropped == 1 and len(box) == 2
    assert [box.next_to_send(), box.next_to_send()] == [(_msg(2), True), (_msg(3), True)]


def test_parse_credentials_forms_and_errors() -> None:
    entries = [{"device_id": "a", "token": "x"}, {"device_id": "b", "token": "y"}]
    expected = (DeviceCredentials("a", "x"), DeviceCredentials("b", "y"))
    assert parse_credentials(json.dumps(entries)) == expected
    assert parse_credentials("\n".join(json.dumps(e) for e in entries)) == expected
    assert parse_credentials(json.dumps(entries[0])) == expected[:1]
    for bad in ("[]", "not json", '[{"device_id": "a"}]', json.dumps(entries + entries[:1])):
        with pytest.raises(SimConfigError):
            parse_credentials(bad)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(SimConfigError, match="rate"):
        SimConfig(devices=DEVICES, rate=0)
    with pytest.raises(SimConfigError, match="metric"):
        SimConfig(devices=DEVICES, metrics=("no spaces",))
    with pytest.raises(SimConfigError, match="no devices"):
        SimConfig(devices=())
