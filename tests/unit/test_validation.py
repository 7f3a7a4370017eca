"""Validation: whole-message semantics, device-type specs, timestamp flags, error paths."""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings

from common.codecs import ContentFormat, Limits, PayloadError
from common.model import RawReading, Reading, ReadingFlag
from common.validation import (
    MAX_TS_MS,
    METRIC_NAME,
    DeviceTypeSpec,
    MetricSpec,
    ValidationPolicy,
    decode_and_validate,
    device_type_from_dict,
    validate,
)
from tests.unit.test_codecs import PLAUSIBLE, encode_plausible

NOW = 1_764_300_000_000
DAY = 24 * 3600 * 1000
THERMO = DeviceTypeSpec(
    "thermo",
    {
        "temperature": MetricSpec("number", "°C", min=-40, max=100),
        "door_open": MetricSpec("boolean"),
        "state": MetricSpec("string"),
    },
    allow_undeclared=False,
)


def check(raws: list[RawReading], spec: DeviceTypeSpec | None = None, **kw: Any) -> list[Reading]:
    return validate("dev-1", raws, received_at_ms=NOW, spec=spec, **kw)


def errors(raws: list[RawReading], spec: DeviceTypeSpec | None = None, **kw: Any) -> list[str]:
    with pytest.raises(PayloadError) as info:
        check(raws, spec, **kw)
    assert info.value.status == 400
    return [f"{e.path}: {e.message}" for e in info.value.errors]


def body_errors(body: bytes, fmt: ContentFormat = ContentFormat.JSON, **kw: Any) -> list[str]:
    with pytest.raises(PayloadError) as info:
        decode_and_validate("dev-1", body, fmt, received_at_ms=NOW, **kw)
    return [f"{e.path}: {e.message}" for e in info.value.errors]


# --- values -------------------------------------------------------------------------------


def test_happy_path_builds_readings() -> None:
    raws = [
        RawReading("temperature", 21, 1764300000123, seq=9),
        RawReading("door_open", False),
        RawReading("state", "idle"),
    ]
    assert check(raws) == [
        Reading("dev-1", "temperature", 1764300000123, 21.0, NOW, ReadingFlag.NONE, 9),
        Reading("dev-1", "door_open", NOW, False, NOW, ReadingFlag.TS_FROM_GATEWAY),
        Reading("dev-1", "state", NOW, "idle", NOW, ReadingFlag.TS_FROM_GATEWAY),
    ]


def test_numbers_become_float_and_bools_stay_bool() -> None:
    got = check([RawReading("n", 3), RawReading("b", True), RawReading("f", 2.5)])
    assert [(type(r.value), r.value) for r in got] == [(float, 3.0), (bool, True), (float, 2.5)]


@pytest.mark.parametrize(
    "name", ["a", "A-b_c.9", "x" * 64, "temperature", "..", "0"], ids=lambda n: n[:10]
)
def test_valid_metric_names(name: str) -> None:
    assert check([RawReading(name, 1)])[0].metric == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a b", "a/b", "temp:1", "tempé", "a\n", "a\x00"], ids=repr
)
def test_invalid_metric_names(name: str) -> None:
    (error,) = errors([RawReading(name, 1)])
    assert error.startswith("/0/metric: invalid metric name")


def test_a_name_once_valid_does_not_let_invalid_ones_through() -> None:
    # The known-names cache must only ever hold names that matched the pattern.
    check([RawReading("cached_name", 1)])
    check([RawReading("cached_name", 2)])
    assert errors([RawReading("cached name", 1)])
    assert METRIC_NAME.fullmatch("cached_name")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "value must be a finite number"),
        (math.inf, "value must be a finite number"),
        (-math.inf, "value must be a finite number"),
        (10**400, "number out of range"),
        ("x" * 257, "string of 257 characters; the limit is 256"),
        ("\ud800", "string is not valid Unicode"),
        (None, "unsupported value type (NoneType)"),
        (b"x", "unsupported value type (bytes)"),
        ([1], "unsupported value type (list)"),
    ],
    ids=repr,
)
def test_invalid_values(value: object, message: str) -> None:
    assert errors([RawReading("m", value)]) == [f"/0/value: {message}"]


def test_string_limit_comes_from_limits() -> None:
    assert check([RawReading("s", "x" * 256)])[0].value == "x" * 256
    assert check([RawReading("s", "é" * 256)])[0].value == "é" * 256
    assert errors([RawReading("s", "xyz")], limits=Limits(max_string=2)) == [
        "/0/value: string of 3 characters; the limit is 2"
    ]


# --- device types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (RawReading("temperature", 120), "value 120 above max 100 for temperature (°C)"),
        (RawReading("temperature", -40.5), "value -40.5 below min -40 for temperature (°C)"),
        (RawReading("temperature", True), "expected a number for temperature (°C), got a boolean"),
        (RawReading("temperature", "21"), "expected a number for temperature (°C), got a string"),
        (RawReading("door_open", 1), "expected a boolean for door_open, got a number"),
        (RawReading("state", False), "expected a string for state, got a boolean"),
    ],
    ids=repr,
)
def test_declared_metrics_are_checked_with_the_reason(raw: RawReading, message: str) -> None:
    assert errors([raw], THERMO) == [f"/0/value: {message}"]


def test_bounds_are_inclusive() -> None:
    got = check([RawReading("temperature", -40), RawReading("temperature", 100, 1)], THERMO)
    assert [r.value for r in got] == [-40.0, 100.0]


def test_undeclared_metrics() -> None:
    assert errors([RawReading("humidity", 40)], THERMO) == [
        "/0/metric: metric 'humidity' is not declared for device type 'thermo'"
    ]
    lenient = DeviceTypeSpec("thermo", THERMO.metrics, allow_undeclared=True)
    assert check([RawReading("humidity", 40)], lenient)[0].value == 40.0


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "flags"),
    [
        (NOW - 1000, ReadingFlag.NONE),
        (946_684_800_000, ReadingFlag.NONE),  # 2000-01-01 exactly
        (946_684_799_999, ReadingFlag.TS_BEFORE_2000),
        (12_345, ReadingFlag.TS_BEFORE_2000),  # uptime from a device without a clock
        (0, ReadingFlag.TS_BEFORE_2000),
        (NOW + DAY, ReadingFlag.NONE),
        (NOW + DAY + 1, ReadingFlag.TS_IN_FUTURE),
        (MAX_TS_MS, ReadingFlag.TS_IN_FUTURE),
    ],
)
def test_device_time_outside_policy_is_flagged_not_rejected(ts: int, flags: ReadingFlag) -> None:
    (reading,) = check([RawReading("m", 1, ts)])
    assert (reading.ts, reading.flags, reading.received_at) == (ts, flags, NOW)


def test_policy_is_configurable() -> None:
    policy = ValidationPolicy(max_future_skew_ms=0, min_valid_ts_ms=NOW - 10)
    got = check([RawReading("a", 1, NOW - 11), RawReading("b", 1, NOW + 1)], policy=policy)
    assert [r.flags for r in got] == [ReadingFlag.TS_BEFORE_2000, ReadingFlag.TS_IN_FUTURE]
    with pytest.raises(ValueError, match="must not be negative"):
        ValidationPolicy(min_valid_ts_ms=-1)


@pytest.mark.parametrize(
    ("ts", "message"),
    [
        (-1, "ts must not be negative"),
        (1.5, "ts must be an integer (ms since the epoch)"),
        (True, "ts must be an integer (ms since the epoch)"),
        ("1764300000000", "ts must be an integer (ms since the epoch)"),
        (MAX_TS_MS + 1, f"ts {MAX_TS_MS + 1} is after the year 9999"),
    ],
    ids=repr,
)
def test_invalid_timestamps(ts: Any, message: str) -> None:
    assert errors([RawReading("m", 1, ts)]) == [f"/0/ts: {message}"]


# --- whole-message semantics ---------------------------------------------------------------


def test_one_bad_reading_rejects_the_message_and_lists_every_error() -> None:
    raws = [
        RawReading("temperature", 20),
        RawReading("temperature", 150, 1764300000000),
        RawReading("door_open", True),
        RawReading("bad name", 1, -5),  # two problems in one reading: both reported
        RawReading("humidity", "x" * 300),
    ]
    assert errors(raws, THERMO) == [
        "/1/value: value 150 above max 100 for temperature (°C)",
        "/3/metric: invalid metric name 'bad name': use 1-64 characters from A-Z a-z 0-9 _ . -",
        "/3/ts: ts must not be negative",
        "/4/metric: metric 'humidity' is not declared for device type 'thermo'",
        "/4/value: string of 300 characters; the limit is 256",
    ]


def test_conflicting_values_for_one_key_are_rejected_identical_ones_kept() -> None:
    same = [RawReading("a", 1, 5_000), RawReading("a", 1.0, 5_000)]
    assert len(check(same)) == 2  # the store keeps one: (device, metric, ts) is the identity
    assert errors([RawReading("a", 1, 5_000), RawReading("a", 2, 5_000)]) == [
        "/1/value: conflicting values for a at ts 5000"
    ]
    assert errors([RawReading("a", True), RawReading("a", 1)]) == [
        f"/1/value: conflicting values for a at ts {NOW}"
    ]


def test_empty_message_is_empty() -> None:
    assert check([]) == []
    assert decode_and_validate("d", b"{}", ContentFormat.JSON, received_at_ms=NOW, spec=None) == []


# --- decode_and_validate: paths point into the payload -------------------------------------


def test_errors_point_into_json_payloads() -> None:
    body = json.dumps(
        [
            {"ts": 1764300000000, "values": {"temperature": 120, "door_open": True}},
            {"ts": -1, "values": {"temperature": 20, "state": "ok"}},
            {"temperature": "hot", "hum": 1},
        ]
    ).encode()
    assert body_errors(body, spec=THERMO) == [
        "/0/values/temperature: value 120 above max 100 for temperature (°C)",
        "/1/ts: ts must not be negative",  # shared by two values, reported once
        "/2/temperature: expected a number for temperature (°C), got a string",
        "/2/hum: metric 'hum' is not declared for device type 'thermo'",
    ]


def test_errors_point_into_senml_payloads() -> None:
    pack = [
        {"bn": "", "bt": 1764300000, "n": "temperature", "v": 20},
        {"n": "temperature", "v": 101, "t": 1},
        {"bn": "dev 1.", "n": "temperature", "v": 5},
    ]
    expected = [
        "/1/v: value 101 above max 100 for temperature (°C)",
        "/2/n: invalid metric name 'dev 1.temperature': use 1-64 characters from A-Z a-z 0-9 _ . -",
    ]
    assert body_errors(json.dumps(pack).encode(), ContentFormat.SENML_JSON, spec=THERMO) == expected
    labels = {"bn": -2, "bt": -3, "n": 0, "v": 2, "t": 6}
    as_cbor = cbor2.dumps([{labels[k]: v for k, v in rec.items()} for rec in pack])
    assert body_errors(as_cbor, ContentFormat.SENML_CBOR, spec=THERMO) == expected


def test_senml_relative_time_uses_the_receive_time() -> None:
    got = decode_and_validate(
        "d",
        b'[{"n": "t", "v": 1, "t": -30}, {"n": "u", "v": 2}]',
        ContentFormat.SENML_JSON,
        received_at_ms=NOW,
        spec=None,
    )
    assert [(r.ts, r.flags) for r in got] == [
        (NOW - 30_000, ReadingFlag.NONE),
        (NOW, ReadingFlag.TS_FROM_GATEWAY),
    ]


def test_decode_errors_pass_through_decode_and_validate() -> None:
    with pytest.raises(PayloadError) as info:
        decode_and_validate("d", b"x" * 70_000, ContentFormat.JSON, received_at_ms=NOW, spec=None)
    assert info.value.status == 413


# --- device type configuration --------------------------------------------------------------


def test_device_type_from_toml() -> None:
    doc = tomllib.loads(
        """
        name = "thermo"
        allow_undeclared = false
        [metrics.temperature]
        type = "number"
        unit = "°C"
        min = -40
        max = 100.5
        [metrics.door_open]
        type = "boolean"
        """
    )
    spec = device_type_from_dict(doc)
    assert spec.name == "thermo"
    assert not spec.allow_undeclared
    assert dict(spec.metrics) == {
        "temperature": MetricSpec("number", "°C", -40, 100.5),
        "door_open": MetricSpec("boolean"),
    }
    assert device_type_from_dict({"name": "any"}) == DeviceTypeSpec("any", {}, True)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "a device type must be a table/object"),
        ({}, "needs a non-empty string 'name'"),
        ({"name": "t", "metric": {}}, "device type 't': unknown key(s) metric"),
        ({"name": "t", "allow_undeclared": "no"}, "allow_undeclared must be true or false"),
        ({"name": "t", "metrics": []}, "metrics must be a table/object"),
        ({"name": "t", "metrics": {"a b": {"type": "number"}}}, "invalid metric name 'a b'"),
        ({"name": "t", "metrics": {"m": "number"}}, "metric 'm': must be a table/object"),
        ({"name": "t", "metrics": {"m": {}}}, "metric 'm': 'type' is required"),
        ({"name": "t", "metrics": {"m": {"type": "int"}}}, "type must be one of number, boolean"),
        ({"name": "t", "metrics": {"m": {"type": "number", "mx": 1}}}, "unknown key(s) mx"),
        ({"name": "t", "metrics": {"m": {"type": "number", "min": "0"}}}, "min must be a number"),
        ({"name": "t", "metrics": {"m": {"type": "number", "max": True}}}, "max must be a number"),
        ({"name": "t", "metrics": {"m": {"type": "number", "max": math.nan}}}, "max must be fin"),
        ({"name": "t", "metrics": {"m": {"type": "number", "min": 2, "max": 1}}}, "min 2 is above"),
        ({"name": "t", "metrics": {"m": {"type": "boolean", "max": 1}}}, "only to metrics of type"),
        ({"name": "t", "metrics": {"m": {"type": "string", "unit": 5}}}, "unit must be a string"),
    ],
    ids=repr,
)
def test_device_type_errors_say_what_is_wrong(doc: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        device_type_from_dict(doc)
    assert message in str(info.value)


# --- fuzzing: decode_and_validate never raises anything else, and what it accepts is sound --


@settings(max_examples=100, deadline=None, database=None)
@given(case=PLAUSIBLE)
def test_fuzz_accepted_readings_are_sound(case: tuple[ContentFormat, Any]) -> None:
    fmt, doc = case
    try:
        got = decode_and_validate(
            "dev-1", encode_plausible(doc, fmt), fmt, received_at_ms=NOW, spec=None
        )
    except PayloadError as exc:
        assert exc.status in (400, 413)
        return
    for reading in got:
        assert METRIC_NAME.fullmatch(reading.metric)
        assert type(reading.ts) is int
        assert 0 <= reading.ts <= MAX_TS_MS
        assert type(reading.value) in (float, bool, str)
        if type(reading.value) is float:
            assert math.isfinite(reading.value)
        if type(reading.value) is str:
            assert len(reading.value) <= 256
            reading.value.encode("utf-8")  # storable
