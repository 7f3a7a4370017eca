"""Run Eclipse Paho's MQTT interoperability client tests against one MQTT port, with credentials.

Usage (a checkout of https://github.com/eclipse/paho.mqtt.testing you fetched yourself; this
script downloads nothing):

    .venv/bin/python tools/paho_interop.py --paho PATH/TO/paho.mqtt.testing \\
        --port 1883 --username DEVICE --password TOKEN [--suite v3|v5|both|telemetry] \\
        [--timeout 90] [--json OUT] [-v] [TEST...]

Why a runner and not the suite's own `python3 client_test.py -p PORT`: the suite connects
without credentials and uses topics at the root ("TopicA", "#"), while a gateway admits only
provisioned devices and lets a device use only `devices/{its id}/...`. The runner imports the
suite's modules unchanged and, before the tests run:

- sets the module globals the tests read (host, port, topics, wildtopics, topic_prefix) with
  every topic and filter put under `--prefix` (default `devices/{username}/`): the prefix adds
  whole levels, so "+/+", "/#" and "#" match the same topics relative to it as at the root;
- makes every Client.connect send --username/--password unless the test passes its own;
- turns the cleanup's subscription to "#" into one to PREFIX# (the ACL refuses "#");
- writes the CONNECT's user name and password flags the right way round (the suite's codecs
  swap them, which shows only when one is set without the other: a token login).

The subscribe-failure test keeps its filter "test/nosubscribe": outside the device's prefix the
ACL refuses it, which is what that test wants to see. Run it against a plain Mosquitto with the
gateway's own broker configuration (see docs/decisions/mqtt-interop.md) and against the
gateway's MQTT port, and compare the tables. Each test runs in a child process with a deadline
(--timeout): some of the suite's tests wait forever for what a server does not do.

`--suite telemetry` is not Paho's: with the suite's client library it publishes QoS 0, 1 and 2
readings on PREFIX + "telemetry", the one topic the gateway takes itself, and reports whether
the QoS 1/2 exchanges completed and what a subscriber to that topic received.

Exit code: 0 when every selected test passed, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

SUITES = {"v3": "client_test", "v5": "client_test5"}
ROOT_TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
ROOT_FILTERS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")


def _patch_client(client_cls: Any, username: str, password: str | None, prefix: str) -> None:
    """Credentials on every CONNECT; the cleanup's "#" kept under the prefix."""
    connect, subscribe = client_cls.connect, client_cls.subscribe

    def connect_with_credentials(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("username", username)
        if password is not None:  # the suite's codecs write the password as bytes
            kwargs.setdefault("password", password.encode())
        return connect(self, *args, **kwargs)

    def subscribe_under_prefix(self: Any, topics: list[str], *args: Any, **kwargs: Any) -> Any:
        topics = [prefix + "#" if t == "#" else t for t in topics]
        return subscribe(self, topics, *args, **kwargs)

    client_cls.connect = connect_with_credentials
    client_cls.subscribe = subscribe_under_prefix


def _fix_connect_flags(connects_cls: Any) -> None:
    """The suite's codecs write the user name flag in bit 6 and the password flag in bit 7
    (MQTTV311.py and MQTTV5.py, Connects.pack); MQTT has them the other way round. With both
    set it makes no difference; a user name alone (a token login) would go out as a password
    without a user name, which 3.1.1 forbids (Mosquitto closes such a connection too)."""
    pack = connects_cls.pack

    def pack_with_right_flags(self: Any) -> bytes:
        packed = bytes(pack(self))
        i = 1
        while packed[i] & 0x80:  # the remaining length's varint
            i += 1
        name_len = int.from_bytes(packed[i + 1 : i + 3], "big")
        at = i + 3 + name_len + 1  # protocol name, then level, then the flags
        flags = packed[at] & 0x3F | (bool(self.usernameFlag) << 7) | (bool(self.passwordFlag) << 6)
        return packed[:at] + bytes((flags,)) + packed[at + 1 :]

    connects_cls.pack = pack_with_right_flags


def _load_suite(name: str, args: argparse.Namespace, prefix: str) -> Any:
    module = importlib.import_module(SUITES[name])
    topics = tuple(prefix + t for t in ROOT_TOPICS)
    filters = tuple(prefix + f for f in ROOT_FILTERS)

    def set_data() -> None:  # client_test5's setUpClass resets the globals through setData
        module.topics, module.wildtopics = topics, filters
        module.nosubscribe_topics = ("test/nosubscribe",)

    module.host, module.port, module.topic_prefix = args.host, args.port, prefix
    set_data()
    if hasattr(module, "setData"):
        module.setData = set_data
    _patch_client(module.mqtt_client.Client, args.username, args.password, prefix)
    codec = "mqtt.formats.MQTTV5" if name == "v5" else "mqtt.formats.MQTTV311"
    _fix_connect_flags(importlib.import_module(codec).Connects)
    return module


class _Recorder(unittest.TextTestResult):
    """Keeps one outcome per test: pass, fail (assertion) or error (exception)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.outcomes: dict[str, tuple[str, float, str]] = {}
        self._started = time.monotonic()

    def startTest(self, test: unittest.TestCase) -> None:
        self._started = time.monotonic()
        super().startTest(test)

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        name = test.id().rsplit(".", 1)[-1]
        self.outcomes[name] = (outcome, time.monotonic() - self._started, detail)

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "fail", _why(self._exc_info_to_string(err, test)))
        super().addFailure(test, err)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self._record(test, "error", _why(self._exc_info_to_string(err, test)))
        super().addError(test, err)


def _why(report: str) -> str:
    """The first failing line inside the suite's own test: most tests catch their exception,
    print its traceback and then fail on `assertEqual(succeeded, True)`, which says nothing."""
    lines = report.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r'client_test5?\.py", line (\d+), in (test\w*)', line)
        if m and i + 1 < len(lines) and "assertEqual(succeeded, True)" not in lines[i + 1]:
            error = next(
                (x.strip() for x in lines[i + 1 :] if re.match(r"^\w+(Error|Exception)", x)), ""
            )
            return f"line {m[1]}: {lines[i + 1].strip()} -> {error}"[:200]
    errors = [x.strip() for x in lines if re.match(r"^[\w.]+(Error|Exception)\b", x)]
    return (errors[0] if errors else lines[-1].strip() if lines else "")[:200]


def _run_one(args: argparse.Namespace, name: str, test: str, prefix: str) -> dict[str, Any]:
    """One test in this process (the child's job)."""
    module = _load_suite(name, args, prefix)
    suite = unittest.TestLoader().loadTestsFromName(f"Test.{test}", module)
    runner = unittest.TextTestRunner(
        stream=sys.stderr, verbosity=2, resultclass=_Recorder, buffer=True
    )
    result = runner.run(suite)
    assert isinstance(result, _Recorder)
    # A failing setUpClass (the suite's cleanup) is recorded under its own name, not the test's.
    other = next(iter(result.outcomes.values()), None)
    outcome, seconds, detail = result.outcomes.get(test, other or ("error", 0.0, "did not run"))
    if test not in result.outcomes and other is not None:
        detail = f"setUpClass: {detail}"
    return {"outcome": outcome, "seconds": round(seconds, 1), "detail": detail}


def _spawn_one(args: argparse.Namespace, name: str, test: str) -> dict[str, Any]:
    """One test in a child process with a deadline: some tests loop until the server does what
    they expect (test_flow_control2 waits for a DISCONNECT that Mosquitto 2.0 never sends)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--child", f"{name}.{test}", "--json", out.name]
        for flag in ("paho", "host", "port", "username", "password", "prefix"):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag}", str(value)]
        started = time.monotonic()
        try:
            proc = subprocess.run(  # noqa: PLW1510 - the outcome file says how it went
                cmd, timeout=args.timeout, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return {
                "outcome": "timeout",
                "seconds": round(time.monotonic() - started, 1),
                "detail": f"still running after {args.timeout:g} s, killed",
            }
        if args.verbose:
            sys.stderr.write(proc.stderr)
        try:
            return dict(json.loads(Path(out.name).read_text())[f"{name}.{test}"])
        except (ValueError, KeyError):
            last = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            return {"outcome": "error", "seconds": 0.0, "detail": last[0][:200]}


class _Seen:
    """Callbacks of the suite's client library for the telemetry check."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.publisheds: list[int] = []
        self.subscribeds: list[Any] = []

    def connectionLost(self, cause: Any) -> None:
        pass

    def publishArrived(self, topic: str, payload: bytes, qos: int, *rest: Any) -> bool:
        self.messages.append((topic, payload, qos))
        return True

    def published(self, msgid: int) -> None:
        self.publisheds.append(msgid)

    def subscribed(self, msgid: int, data: Any) -> None:
        self.subscribeds.append(data)

    def unsubscribed(self, msgid: int) -> None:
        pass

    def disconnected(self, reasoncode: Any, properties: Any) -> None:
        pass


def _wait(items: list[Any], n: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while len(items) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def _telemetry_check(args: argparse.Namespace, version: str, prefix: str) -> dict[str, Any]:
    """Not part of Paho's suite: the suite never publishes on a telemetry topic, which is the
    one topic the gateway's front takes itself (acknowledged after the DuckDB commit, never
    passed to the broker). With the suite's own client library: QoS 0, 1 and 2 readings on
    PREFIX + "telemetry"; passes when the QoS 1 and 2 exchanges complete (PUBACK;
    PUBREC, PUBREL, PUBCOMP); reports how many of the 3 a subscriber to that topic received."""
    v5 = version == "v5"
    lib = importlib.import_module("mqtt.clients.V5" if v5 else "mqtt.clients.V311")
    _fix_connect_flags(
        importlib.import_module(f"mqtt.formats.MQTTV{'5' if v5 else '311'}").Connects
    )
    options: Any = (
        [importlib.import_module("mqtt.formats.MQTTV5").SubscribeOptions(2)] if v5 else [2]
    )
    topic = prefix + "telemetry"
    credentials = {"username": args.username}
    if args.password is not None:
        credentials["password"] = args.password.encode()
    session = {"cleanstart": True} if v5 else {"cleansession": True}
    started = time.monotonic()
    sub_seen, pub_seen = _Seen(), _Seen()
    sub = lib.Client(f"paho-interop-sub-{version}".encode())
    sub.registerCallback(sub_seen)
    pub = lib.Client(f"paho-interop-pub-{version}".encode())
    pub.registerCallback(pub_seen)
    try:
        sub.connect(host=args.host, port=args.port, **session, **credentials)
        sub.subscribe([topic], options)
        _wait(sub_seen.subscribeds, 1, 3)
        pub.connect(host=args.host, port=args.port, **session, **credentials)
        ts = int(time.time() * 1000)
        for qos in (0, 1, 2):
            reading = {"ts": ts + qos, "values": {"paho_check": qos}}
            pub.publish(topic, json.dumps(reading).encode(), qos)
        _wait(pub_seen.publisheds, 2, 5)
        time.sleep(1)  # for the subscriber, if anything is delivered
        pub.disconnect()
        sub.disconnect()
    except Exception as exc:  # the suite's client raises bare assertions and OSErrors
        return {"outcome": "error", "seconds": round(time.monotonic() - started, 1),
                "detail": f"{type(exc).__name__}: {exc}"[:200]}  # fmt: skip
    done = len(pub_seen.publisheds)
    return {
        "outcome": "pass" if done == 2 else "fail",
        "seconds": round(time.monotonic() - started, 1),
        "detail": f"QoS 1/2 exchanges completed: {done} of 2; "
        f"a subscriber to {topic} received {len(sub_seen.messages)} of 3",
    }


def run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    interop = Path(args.paho) / "interoperability"
    if not (interop / "client_test.py").is_file():
        raise SystemExit(f"paho_interop: no interoperability/client_test.py under {args.paho}")
    sys.path.insert(0, str(interop))
    prefix = args.prefix if args.prefix is not None else f"devices/{args.username}/"
    if args.child:
        name, test = args.child.split(".", 1)
        return {args.child: _run_one(args, name, test, prefix)}
    results: dict[str, dict[str, Any]] = {}
    if args.suite == "telemetry":
        for version in ("v3", "v5"):
            r = results[f"telemetry.{version}"] = _telemetry_check(args, version, prefix)
            print(f"telemetry.{version:34} {r['outcome']:7} {r['seconds']:6.1f}s  {r['detail']}")
        return results
    for name in ("v3", "v5") if args.suite == "both" else (args.suite,):
        module = importlib.import_module(SUITES[name])
        tests = unittest.TestLoader().getTestCaseNames(module.Test)
        for test in tests:
            if args.tests and test not in args.tests:
                continue
            r = results[f"{name}.{test}"] = _spawn_one(args, name, test)
            print(f"{name}.{test:40} {r['outcome']:7} {r['seconds']:6.1f}s  {r['detail']}")
            sys.stdout.flush()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paho", required=True, help="a paho.mqtt.testing checkout")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--username", required=True, help="a provisioned device id")
    parser.add_argument("--password", help="its token (omit for a token login)")
    parser.add_argument("--prefix", help="topic prefix (default devices/USERNAME/)")
    parser.add_argument("--suite", choices=("v3", "v5", "both", "telemetry"), default="both")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per test")
    parser.add_argument("--json", help="also write the outcomes to this file as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="each test's own output")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # SUITE.TEST, run in this process
    parser.add_argument("tests", nargs="*", help="test names, e.g. test_basic (default: all)")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not args.child:
        failed = [n for n, r in results.items() if r["outcome"] != "pass"]
        print(
            f"{len(results) - len(failed)} of {len(results)} passed"
            + (f"; not passed: {' '.join(failed)}" if failed else "")
        )
    return 0 if results and all(r["outcome"] == "pass" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
