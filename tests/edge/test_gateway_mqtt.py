"""The Device Data Flow of the seed over MQTT, end to end, as an installer and a device see it:
the CLI provisions, `iotsphere gateway run` runs, Mosquitto's own clients publish."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, cli, cli_json
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def pub(
    port: int,
    user: str,
    password: str,
    payload: str,
    topic: str | None = None,
    version: str = "mqttv311",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            user,
            "-P",
            password,
            "-t",
            topic or f"devices/{user}/telemetry",
            "-m",
            payload,
            "-q",
            "1",
            "-V",
            version,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def readings(data_dir: Path, device: str) -> list[dict]:  # type: ignore[type-arg]
    return cli_json("gateway", "readings", "--device", device, "--limit", "1000", data_dir=data_dir)


def test_device_data_flow(gateway_process: GatewayProcess) -> None:
    data_dir, port = gateway_process.data_dir, gateway_process.mqtt_port
    # provisioned while the gateway is stopped (direct DuckDB) ...
    dev1 = cli_json("gateway", "device", "add", "dev1", "--type", "thermo", data_dir=data_dir)
    assert dev1["device_id"] == "dev1" and len(dev1["token"]) >= 32
    gateway_process.start()
    # ... and while it runs (admin API, pushed into the live broker)
    dev2 = cli_json("gateway", "device", "add", "dev2", data_dir=data_dir)
    listed = cli_json("gateway", "device", "list", data_dir=data_dir)
    assert {d["device_id"] for d in listed} == {"dev1", "dev2"}
    assert all("token" not in d and "pw_hash" not in d for d in listed)

    # happy path: JSON flat, ts/values, and SenML, with real Mosquitto clients
    assert (
        pub(port, "dev1", dev1["token"], '{"temperature": 21.5, "door_open": false}').returncode
        == 0
    )
    assert (
        pub(
            port,
            "dev1",
            dev1["token"],
            '{"ts": 1764300000123, "values": {"temperature": 22.0}, "seq": 7}',
        ).returncode
        == 0
    )
    senml = json.dumps(
        [
            {"bn": "env.", "bt": 1764300000, "n": "humidity", "v": 40.5},
            {"n": "temp", "v": 20, "t": 1},
        ]
    )
    assert pub(port, "dev2", dev2["token"], senml, version="mqttv5").returncode == 0
    rows1 = wait_for(
        lambda: len(readings(data_dir, "dev1")) == 3 and readings(data_dir, "dev1"),
        what="dev1 readings",
    )
    assert {(r["metric"], r["value"]) for r in rows1} == {
        ("temperature", 21.5),
        ("door_open", False),
        ("temperature", 22.0),
    }
    assert any(r["ts"] == 1764300000123 and r["dev_seq"] == 7 for r in rows1)
    rows2 = wait_for(
        lambda: len(readings(data_dir, "dev2")) == 2 and readings(data_dir, "dev2"),
        what="dev2 SenML readings",
    )
    assert {(r["metric"], r["ts"]) for r in rows2} == {
        ("env.humidity", 1764300000000),
        ("env.temp", 1764300001000),
    }

    # the same reading again is stored once
    assert (
        pub(
            port, "dev1", dev1["token"], '{"ts": 1764300000123, "values": {"temperature": 22.0}}'
        ).returncode
        == 0
    )

    # wrong password: refused CONNACK and an audit row
    bad = pub(port, "dev1", "not-the-token", '{"temperature": 1}')
    assert bad.returncode != 0 and "not authorised" in bad.stderr.lower()
    audit = wait_for(lambda: cli_json("gateway", "audit", data_dir=data_dir), what="audit row")
    assert audit[0]["username"] == "dev1" and audit[0]["address"] == "127.0.0.1"
    assert audit[0]["reason"] == "not_authorized"

    # another device's topic: the ACL denies it, nothing is stored for dev2
    pub(port, "dev1", dev1["token"], '{"temperature": 99}', topic="devices/dev2/telemetry")

    # malformed JSON and a value outside its declared range: problem document + error row
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-u",
            "dev1",
            "-P",
            dev1["token"],
            "-t",
            "devices/dev1/errors",
            "-C",
            "2",
            "-W",
            "30",
            "-q",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # let the subscription settle before publishing
    assert pub(port, "dev1", dev1["token"], '{"temperature": 21.5').returncode == 0
    assert pub(port, "dev1", dev1["token"], '{"temperature": 120}').returncode == 0
    out, _ = sub.communicate(timeout=40)
    problems = [json.loads(line) for line in out.splitlines()]
    assert [p["status"] for p in problems] == [400, 400]
    assert all(p["type"].startswith("http") and p["title"] and p["errors"] for p in problems)
    assert "120" in json.dumps(problems[1]["errors"])
    errors = cli_json("gateway", "errors", data_dir=data_dir)
    assert len(errors) == 2 and {e["device_id"] for e in errors} == {"dev1"}

    time.sleep(0.5)
    assert len(readings(data_dir, "dev1")) == 3  # dup, foreign topic, bad payloads: none stored
    assert len(readings(data_dir, "dev2")) == 2

    # revoke: the device is refused from then on
    cli("gateway", "device", "revoke", "dev2", data_dir=data_dir)
    assert pub(port, "dev2", dev2["token"], '{"temperature": 1}').returncode != 0

    status = cli_json("gateway", "status", data_dir=data_dir)
    assert status["gateway"] == "running" and status["broker"]["state"] == "running"
    assert status["readings_stored"] == 5 and status["rejections"] == 2
    assert status["sync"]["backlog_readings"] == 5  # not enrolled: everything is backlog
    assert status["sync"]["oldest_unsynced_age_s"] >= 0

    assert gateway_process.stop() == 0  # graceful SIGTERM exits 0
    # stopped: the CLI reads the same data directly
    assert len(readings(data_dir, "dev1")) == 3
    stopped = cli_json("gateway", "status", data_dir=data_dir)
    assert stopped["gateway"] == "stopped"
    # last_seen and counters are written in the background and flushed at stop
    assert stopped["counters"]["accepted_readings"] == 5 + 1  # + the duplicate, stored once
    assert stopped["counters"]["rejected_messages"] == 2
    seen = {
        d["device_id"]: d["last_seen"]
        for d in cli_json("gateway", "device", "list", data_dir=data_dir)
    }
    assert seen["dev1"] is not None and seen["dev2"] is not None


def test_rule_raises_one_alert_per_episode(gateway_process: GatewayProcess) -> None:
    data_dir, port = gateway_process.data_dir, gateway_process.mqtt_port
    dev = cli_json("gateway", "device", "add", "hot1", data_dir=data_dir)
    rule = cli_json(
        "gateway",
        "rule",
        "add",
        "--metric",
        "temperature",
        "--op",
        ">",
        "--threshold",
        "30",
        "--for",
        "0",
        "--hysteresis",
        "2",
        "--severity",
        "critical",
        data_dir=data_dir,
    )
    assert rule["operator"] == ">" and rule["threshold"] == 30 and rule["severity"] == "critical"
    gateway_process.start()
    for i, value in enumerate([31, 32, 33]):
        pub(
            port,
            "hot1",
            dev["token"],
            json.dumps({"ts": 1764300000000 + i, "values": {"temperature": value}}),
        )
    alerts = wait_for(lambda: cli_json("gateway", "alerts", data_dir=data_dir), what="alert")
    time.sleep(0.5)
    alerts = cli_json("gateway", "alerts", data_dir=data_dir)
    assert len(alerts) == 1 and alerts[0]["state"] == "active" and alerts[0]["value"] == 31
    # 29 is below 30 but not below 30 - hysteresis: still active
    pub(
        port, "hot1", dev["token"], json.dumps({"ts": 1764300000010, "values": {"temperature": 29}})
    )
    time.sleep(0.5)
    assert cli_json("gateway", "alerts", "--state", "active", data_dir=data_dir)
    pub(
        port, "hot1", dev["token"], json.dumps({"ts": 1764300000020, "values": {"temperature": 27}})
    )
    resolved = wait_for(
        lambda: cli_json("gateway", "alerts", "--state", "resolved", data_dir=data_dir),
        what="resolved alert",
    )
    assert len(resolved) == 1 and resolved[0]["resolved_at"] is not None
    # the lifecycle survives a restart: a new breach is a new episode, raised once
    gateway_process.stop()
    gateway_process.start()
    pub(
        port, "hot1", dev["token"], json.dumps({"ts": 1764300000030, "values": {"temperature": 40}})
    )
    wait_for(lambda: len(cli_json("gateway", "alerts", data_dir=data_dir)) == 2, what="2nd alert")


def test_lockout_after_repeated_failures(gateway_process: GatewayProcess) -> None:
    data_dir, port = gateway_process.data_dir, gateway_process.mqtt_port
    dev = cli_json("gateway", "device", "add", "victim", data_dir=data_dir)
    gateway_process.start()
    for _ in range(11):
        assert pub(port, "victim", "wrong-password", "{}").returncode != 0
    refused = pub(port, "victim", dev["token"], '{"temperature": 1}', version="mqttv5")
    assert refused.returncode != 0  # the right password, refused while locked out
    audit = cli_json("gateway", "audit", "--limit", "100", data_dir=data_dir)
    reasons = [a["reason"] for a in audit]
    assert reasons.count("not_authorized") == 10
    assert any(a["kind"] == "lockout" for a in audit)
    assert any(r.startswith("locked_out") for r in reasons)
    assert readings(data_dir, "victim") == []
    alerts = cli_json("gateway", "alerts", "--state", "active", data_dir=data_dir)
    # the device's id from the attacker's address: the device from its own stays free
    assert [(a["rule_id"], a["device_id"], a["severity"]) for a in alerts] == [
        ("security.lockout", "user:victim@127.0.0.1", "critical")
    ]
