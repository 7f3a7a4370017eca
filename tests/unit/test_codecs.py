"""Payload codecs: every form of CONTRACT.md "Telemetry payloads", and nothing but PayloadError."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.codecs import (
    MAX_LISTED_ERRORS,
    ContentFormat,
    Limits,
    PayloadError,
    Source,
    decode,
    locate,
)
from common.model import FieldError, RawReading

NOW = 1_764_300_000_000
J, C, SJ, SC = (
    ContentFormat.JSON,
    ContentFormat.CBOR,
    ContentFormat.SENML_JSON,
    ContentFormat.SENML_CBOR,
)
# The JSON object forms travel as application/json or application/cbor, decoded the same way.
OBJECT_FORMATS: list[tuple[ContentFormat, Callable[[Any], bytes]]] = [
    (J, lambda doc: json.dumps(doc).encode()),
    (C, cbor2.dumps),
]


def dec(body: bytes, fmt: ContentFormat = J, **kw: Any) -> list[RawReading]:
    return decode(body, fmt, now_ms=NOW, **kw)


def rejected(body: bytes, fmt: ContentFormat = J, **kw: Any) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode(body, fmt, now_ms=NOW, **kw)
    return info.value


def errors_of(body: bytes, fmt: ContentFormat = J) -> list[tuple[str, str]]:
    err = rejected(body, fmt)
    assert err.status == 400
    assert err.problem.slug == "invalid-payload"
    return [(e.path, e.message) for e in err.errors]


def senml_cbor(records: list[dict[Any, Any]]) -> bytes:
    return cbor2.dumps(records)


# --- content formats ---------------------------------------------------------------------


def test_content_formats_carry_coap_ids_and_media_types() -> None:
    assert {f: (int(f), f.media_type) for f in ContentFormat} == {
        J: (50, "application/json"),
        C: (60, "application/cbor"),
        SJ: (110, "application/senml+json"),
        SC: (112, "application/senml+cbor"),
    }


@pytest.mark.parametrize(
    ("header", "fmt"),
    [
        ("application/json", J),
        ("application/json; charset=utf-8", J),
        (" Application/SenML+JSON ;charset=UTF-8", SJ),
        ("application/cbor", C),
        ("application/senml+cbor", SC),
    ],
)
def test_from_media_type_ignores_parameters_and_case(header: str, fmt: ContentFormat) -> None:
    assert ContentFormat.from_media_type(header) is fmt


@pytest.mark.parametrize("header", ["text/plain", "", "application/xml", "application/jsonx"])
def test_unknown_media_type_is_415(header: str) -> None:
    with pytest.raises(PayloadError) as info:
        ContentFormat.from_media_type(header)
    assert info.value.status == 415
    assert info.value.problem.slug == "unsupported-content-format"
    assert "application/senml+cbor" in info.value.problem.detail


def test_from_code() -> None:
    assert ContentFormat.from_code(112) is SC
    with pytest.raises(PayloadError) as info:
        ContentFormat.from_code(0)  # text/plain
    assert info.value.status == 415


# --- JSON and CBOR object forms ----------------------------------------------------------


@pytest.mark.parametrize(("fmt", "enc"), OBJECT_FORMATS)
def test_flat_object_has_no_timestamp(fmt: ContentFormat, enc: Callable[[Any], bytes]) -> None:
    got = dec(enc({"temperature": 21.5, "door_open": False, "state": "ok", "n": 3}), fmt)
    assert got == [
        RawReading("temperature", 21.5),
        RawReading("door_open", False),
        RawReading("state", "ok"),
        RawReading("n", 3),
    ]


@pytest.mark.parametrize(("fmt", "enc"), OBJECT_FORMATS)
def test_timestamped_object_with_seq(fmt: ContentFormat, enc: Callable[[Any], bytes]) -> None:
    body = enc({"ts": 1764300000123, "values": {"temperature": 21.5, "on": True}, "seq": 7})
    assert dec(body, fmt) == [
        RawReading("temperature", 21.5, 1764300000123, 7),
        RawReading("on", True, 1764300000123, 7),
    ]


@pytest.mark.parametrize(("fmt", "enc"), OBJECT_FORMATS)
def test_array_of_both_forms(fmt: ContentFormat, enc: Callable[[Any], bytes]) -> None:
    body = enc([{"ts": 1000, "values": {"a": 1}}, {"b": 2}, {"ts": 3000, "values": {}}])
    assert dec(body, fmt) == [RawReading("a", 1, 1000), RawReading("b", 2)]


def test_integral_float_ts_is_accepted_as_int() -> None:
    (reading,) = dec(b'{"ts": 1764300000123.0, "values": {"a": 1}}')
    assert reading.ts == 1764300000123
    assert type(reading.ts) is int


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"ts": 1.5, "values": {"a": 1}}', [("/ts", "ts must be an integer")]),
        (b'{"ts": "1", "values": {"a": 1}}', [("/ts", "ts must be an integer")]),
        (b'{"ts": true, "values": {"a": 1}}', [("/ts", "ts must be an integer")]),
        (b'{"ts": 1, "values": {"a": 1}, "seq": -1}', [("/seq", "seq must be")]),
        (b'{"ts": 1, "values": {"a": 1}, "seq": 1.0}', [("/seq", "seq must be")]),
        (b'{"ts": 1, "values": [1, 2]}', [("/values", "values must be an object")]),
        (b'{"ts": 1, "values": {"a": 1}, "dev": "x"}', [("/dev", "unknown field")]),
        (b'{"ts": 1, "temperature": 20}', [("/ts", '"ts" is reserved')]),
        (b'{"temperature": {"v": 1}}', [("/temperature", "nested objects are not allowed")]),
        (b'{"temperature": [1, 2]}', [("/temperature", "arrays are not allowed")]),
        (b'{"temperature": null}', [("/temperature", "value is missing")]),
        (b'{"values": {"a/b~c": null}}', [("/values/a~1b~0c", "value is missing")]),
        (b"[1]", [("/0", "expected an object")]),
        (b"[[{}]]", [("/0", "expected an object")]),
        (b'"x"', [("", "expected a JSON object or an array")]),
        (b"", [("", "the payload is empty")]),
        (b"{", [("", "invalid JSON")]),
        (b"\xff\xfe{}", [("", "invalid JSON")]),
        (b'{"a": 1} x', [("", "invalid JSON")]),
        (b"[" * 100_00, [("", "invalid JSON: nested too deeply")]),
        (b'{"a": ' + b"9" * 5000 + b"}", [("", "invalid JSON: a number has too many digits")]),
    ],
)
def test_bad_json_shapes_name_the_path(body: bytes, expected: list[tuple[str, str]]) -> None:
    got = errors_of(body)
    assert [path for path, _ in got] == [path for path, _ in expected]
    for (_, message), (_, fragment) in zip(got, expected, strict=True):
        assert fragment in message


def test_all_errors_are_collected_not_just_the_first() -> None:
    body = json.dumps(
        [
            {"ts": 1, "values": {"ok": 1, "bad": {"x": 1}}, "seq": "one"},
            7,
            {"a": None, "b": [], "c": 2},
        ]
    ).encode()
    assert [path for path, _ in errors_of(body)] == [
        "/0/seq",
        "/0/values/bad",
        "/1",
        "/2/a",
        "/2/b",
    ]


def test_error_list_is_capped_but_counted() -> None:
    body = json.dumps({f"m{i}": None for i in range(250)}).encode()
    err = rejected(body)
    assert len(err.errors) == MAX_LISTED_ERRORS
    assert (
        err.problem.detail == f"250 errors in the payload; the first {MAX_LISTED_ERRORS} are listed"
    )


def test_problem_document_shape() -> None:
    doc = rejected(b'{"t": null}').problem.to_dict()
    assert doc == {
        "type": "https://iotsphere.dev/problems/invalid-payload",
        "title": "Invalid telemetry payload",
        "status": 400,
        "detail": "1 error in the payload",
        "errors": [{"path": "/t", "message": "value is missing (null)"}],
    }


# --- CBOR specifics -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (cbor2.dumps({"t": cbor2.CBORTag(1, 1764300000)}), "tags are not supported"),
        (cbor2.dumps({"t": cbor2.CBORTag(4000, 1)}), "tags are not supported"),
        (cbor2.dumps({"t": 2**70}), "tags are not supported"),  # bignum, tag 2
        (cbor2.dumps({"t": 1}) + b"\x00", "1 bytes after the first data item"),
        (b"\xa2\x61t\x01\x61t\x02", "Duplicate"),  # {"t": 1, "t": 2}
        (b"\xbf", "invalid CBOR"),  # indefinite map, never closed
        (b"\x81" * 100, "invalid CBOR"),  # nested deeper than any telemetry form
    ],
)
def test_bad_cbor(body: bytes, fragment: str) -> None:
    ((path, message),) = errors_of(body, C)
    assert path == ""
    assert fragment in message


def test_cbor_object_forms_need_string_names_and_scalar_values() -> None:
    body = cbor2.dumps({"values": {1: 2.0, "b": b"\x00", "c": cbor2.undefined}, "ts": 5})
    assert errors_of(body, C) == [
        ("/values/1", "metric names must be strings"),
        ("/values/b", "unsupported value type (bytes)"),
        ("/values/c", "unsupported value type (UndefinedType)"),
    ]


# --- limits -------------------------------------------------------------------------------


def test_too_many_bytes_is_413_before_parsing() -> None:
    err = rejected(b"x" * 65537)  # not JSON either: the size is checked first
    assert err.status == 413
    assert err.problem.slug == "payload-too-large"
    assert "65537 bytes" in err.problem.detail
    assert dec(json.dumps({"s": "x" * 100}).encode(), limits=Limits(max_bytes=120))


@pytest.mark.parametrize(
    ("fmt", "make"),
    [
        (J, lambda n: json.dumps({f"m{i}": i for i in range(n)}).encode()),
        (J, lambda n: json.dumps([{"values": {"a": 1}, "ts": i} for i in range(n)]).encode()),
        (C, lambda n: cbor2.dumps({"values": {f"m{i}": i for i in range(n)}})),
        (SJ, lambda n: json.dumps([{"n": f"m{i}", "v": i} for i in range(n)]).encode()),
        (SC, lambda n: cbor2.dumps([{0: f"m{i}", 2: i} for i in range(n)])),
    ],
)
def test_reading_limit_is_413(fmt: ContentFormat, make: Callable[[int], bytes]) -> None:
    assert len(dec(make(1000), fmt)) == 1000
    err = rejected(make(1001), fmt)
    assert err.status == 413
    assert "more than 1000 readings" in err.problem.detail
    assert len(dec(make(5), fmt, limits=Limits(max_readings=5))) == 5
    assert rejected(make(6), fmt, limits=Limits(max_readings=5)).status == 413


# --- SenML (RFC 8428) ---------------------------------------------------------------------


def test_rfc8428_multiple_datapoints_example() -> None:
    # RFC 8428 section 5.1.2: base name, base time, base unit, relative t offsets.
    pack = [
        {
            "bn": "urn:dev:ow:10e2073a01080063:",
            "bt": 1.276020076001e09,
            "bu": "A",
            "bver": 5,
            "n": "voltage",
            "u": "V",
            "v": 120.1,
        },
        {"n": "current", "t": -5, "v": 1.2},
        {"n": "current", "t": -4, "v": 1.3},
    ]
    got = dec(json.dumps(pack).encode(), SJ)
    assert got == [
        RawReading("voltage", 120.1, 1276020076001),
        RawReading("current", 1.2, 1276020071001),
        RawReading("current", 1.3, 1276020072001),
    ]


def test_senml_json_and_cbor_agree() -> None:
    pack: list[dict[str, Any]] = [
        {"bn": "dev1.", "bt": 1764300000.5, "bv": 10, "n": "temp", "v": 11.5},
        {"n": "on", "vb": True, "t": 1},
        {"n": "label", "vs": "hello"},
        {"bn": "", "n": "energy", "bs": 100, "s": 5},
    ]
    labels = {"bn": -2, "bt": -3, "bv": -5, "bs": -6, "n": 0, "vs": 3, "vb": 4, "s": 5, "t": 6}
    labels["v"] = 2
    as_cbor = [{labels[k]: v for k, v in rec.items()} for rec in pack]
    expected = [
        RawReading("dev1.temp", 21.5, 1764300000500),
        RawReading("dev1.on", True, 1764300001500),
        RawReading("dev1.label", "hello", 1764300000500),
        RawReading("energy", 105.0, 1764300000500),
    ]
    assert dec(json.dumps(pack).encode(), SJ) == expected
    assert dec(senml_cbor(as_cbor), SC) == expected


def test_senml_times_are_seconds_rounded_to_ms() -> None:
    pack = [{"n": "a", "v": 1, "t": 1764300000.123}, {"n": "b", "v": 1, "t": 1764300000.0005}]
    assert [r.ts for r in dec(json.dumps(pack).encode(), SJ)] == [1764300000123, 1764300000000]


def test_senml_relative_times_count_from_now() -> None:
    pack = [
        {"n": "a", "v": 1, "t": -5},
        {"n": "b", "v": 1, "t": 0},
        {"bt": -60, "n": "c", "v": 1},
        {"n": "d", "v": 1, "t": 0.25},
        {"bt": 0, "n": "e", "v": 1, "t": 2**28},  # 2**28 s is absolute: 1978
    ]
    got = dec(json.dumps(pack).encode(), SJ)
    assert [r.ts for r in got] == [NOW - 5000, NOW, NOW - 60000, NOW - 59750, 2**28 * 1000]
    assert decode(json.dumps(pack[:1]).encode(), SJ, now_ms=5000)[0].ts == 0


def test_senml_without_any_time_has_no_ts() -> None:
    got = dec(b'[{"n": "a", "v": 1}, {"n": "b", "vs": "x"}]', SJ)
    assert [r.ts for r in got] == [None, None]


def test_senml_base_fields_persist_until_replaced() -> None:
    pack = [
        {"bn": "x.", "bt": 1764300000, "n": "a", "v": 1},
        {"n": "b", "v": 2},
        {"bn": "y.", "n": "c", "v": 3},
        {"bt": 1764300010},  # a record of base fields only yields no reading
        {"n": "d", "v": 4},
    ]
    got = dec(json.dumps(pack).encode(), SJ)
    assert [(r.metric, r.ts) for r in got] == [
        ("x.a", 1764300000000),
        ("x.b", 1764300000000),
        ("y.c", 1764300000000),
        ("y.d", 1764300010000),
    ]


def test_senml_base_records_do_not_count_as_readings() -> None:
    pack = [{"bn": "d.", "bt": 1764300000}] + [{"n": f"m{i}", "v": i} for i in range(1000)]
    assert len(dec(json.dumps(pack).encode(), SJ)) == 1000


def test_senml_data_values_become_base64url_text() -> None:
    assert dec(senml_cbor([{0: "blob", 8: b"\xfb\xff"}]), SC) == [RawReading("blob", "-_8")]
    assert dec(b'[{"n": "blob", "vd": "-_8"}]', SJ) == [RawReading("blob", "-_8")]


def test_senml_unknown_labels_are_ignored() -> None:
    assert dec(senml_cbor([{0: "a", 2: 1, 99: "x", "ext": 1}]), SC) == [RawReading("a", 1)]
    assert dec(b'[{"n": "a", "v": 1, "ext": [1]}]', SJ) == [RawReading("a", 1)]


@pytest.mark.parametrize(
    ("pack", "expected"),
    [
        ({"n": "a", "v": 1}, [("", "must be an array of records")]),
        ([1], [("/0", "must be an object")]),
        ([{"n": "a"}], [("/0", "record has no value")]),
        ([{"v": 1}], [("/0/n", "record has no name")]),
        ([{"n": 5, "v": 1}], [("/0/n", "n must be a string")]),
        ([{"bn": 5, "n": "a", "v": 1}], [("/0/bn", "bn must be a string")]),
        ([{"n": "a", "v": True}], [("/0/v", "v must be a finite number")]),
        ([{"n": "a", "v": "1"}], [("/0/v", "v must be a finite number")]),
        ([{"n": "a", "vb": 1}], [("/0/vb", "vb must be a boolean")]),
        ([{"n": "a", "vs": 1}], [("/0/vs", "vs must be a string")]),
        ([{"n": "a", "vd": 1}], [("/0/vd", "vd must be base64url")]),
        ([{"n": "a", "v": 1, "vs": "x"}], [("/0", "only one of v, vs, vb, vd")]),
        ([{"n": "a", "v": 1, "t": "now"}], [("/0/t", "t must be a finite number")]),
        ([{"bt": "x", "n": "a", "v": 1}], [("/0/bt", "bt must be a finite number")]),
        ([{"n": "a", "v": 1, "u": 1}], [("/0/u", "u must be a string")]),
        ([{"n": "a", "v": 1, "bver": 11}], [("/0/bver", "unsupported SenML version")]),
        ([{"n": "a", "v": 1, "t": 1e300, "bt": 1e300}], [("/0/t", "time out of range")]),
        ([{"n": "a", "v": 1, "crit_": 1}], [("/0/crit_", "must-understand field")]),
        (
            [{"n": "ok", "v": 1}, {"n": "a"}, {"n": "b", "vb": "yes"}],
            [("/1", "record has no value"), ("/2/vb", "vb must be a boolean")],
        ),
    ],
)
def test_bad_senml_names_the_path(pack: Any, expected: list[tuple[str, str]]) -> None:
    got = errors_of(json.dumps(pack).encode(), SJ)
    assert [path for path, _ in got] == [path for path, _ in expected]
    for (_, message), (_, fragment) in zip(got, expected, strict=True):
        assert fragment in message


def test_senml_cbor_errors_use_the_json_names_in_paths() -> None:
    assert errors_of(senml_cbor([{0: "a", 4: "yes"}]), SC) == [("/0/vb", "vb must be a boolean")]


def test_senml_base_value_overflow_is_an_error_not_a_crash() -> None:
    body = b'[{"bv": 1.5, "n": "a", "v": ' + b"9" * 400 + b"}]"
    assert errors_of(body, SJ) == [("/0/v", "v must be a finite number")]


# --- locate -------------------------------------------------------------------------------


def test_locate_points_each_reading_into_the_payload() -> None:
    body = json.dumps([{"ts": 1, "values": {"a": 1, "x/y": 2}}, {"b": 3}]).encode()
    assert locate(body, J, now_ms=NOW) == [
        Source("/0/values/a", "/0/values/a", "/0/ts"),
        Source("/0/values/x~1y", "/0/values/x~1y", "/0/ts"),
        Source("/1/b", "/1/b", "/1"),
    ]
    pack = [{"bn": "d.", "bt": 1764300000, "n": "a", "v": 1}, {"vs": "x"}, {"n": "c", "vb": True}]
    assert locate(json.dumps(pack).encode(), SJ, now_ms=NOW) == [
        Source("/0/n", "/0/v", "/0/bt"),
        Source("/0/bn", "/1/vs", "/0/bt"),
        Source("/2/n", "/2/vb", "/0/bt"),
    ]


# --- fuzzing: whatever arrives, only PayloadError leaves ---------------------------------

SAMPLES: list[tuple[ContentFormat, bytes]] = [
    (J, b'[{"ts": 1764300000123, "values": {"t": 21.5, "on": true, "s": "x"}, "seq": 3}]'),
    (J, b'{"temperature": 21.5, "door_open": false}'),
    (C, cbor2.dumps([{"ts": 1764300000123, "values": {"t": 21.5, "on": True}}, {"x": "y"}])),
    (SJ, b'[{"bn":"d.","bt":1764300000.1,"bv":1,"n":"t","v":2},{"n":"o","vb":true,"t":-1}]'),
    (SC, cbor2.dumps([{-2: "d.", -3: 1764300000.1, 0: "t", 2: 2.5}, {0: "o", 8: b"\x01"}])),
]
FUZZ = settings(max_examples=200, deadline=None, database=None)


def _only_payload_errors(body: bytes, fmt: ContentFormat) -> None:
    try:
        got = decode(body, fmt, now_ms=NOW)
    except PayloadError as exc:
        assert exc.status in (400, 413)
        assert all(isinstance(e, FieldError) for e in exc.errors)
        return
    assert all(type(r) is RawReading for r in got)
    assert len(locate(body, fmt, now_ms=NOW)) == len(got)


@FUZZ
@given(body=st.binary(max_size=300), fmt=st.sampled_from(list(ContentFormat)))
def test_fuzz_random_bytes(body: bytes, fmt: ContentFormat) -> None:
    _only_payload_errors(body, fmt)


@FUZZ
@given(data=st.data(), sample=st.sampled_from(SAMPLES))
def test_fuzz_mutated_payloads(data: st.DataObject, sample: tuple[ContentFormat, bytes]) -> None:
    fmt, body = sample
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(mutated)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert" or pos == len(mutated):
            mutated[pos:pos] = data.draw(st.binary(min_size=1, max_size=3))
        elif op == "delete":
            del mutated[pos]
        else:
            mutated[pos] ^= data.draw(st.integers(1, 255))
    _only_payload_errors(bytes(mutated), fmt)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.sampled_from(["ts", "values", "seq", "n", "v", "bn", "bt", "t", "x_"])
    | st.sampled_from([1.7e308, -1.7e308, 2**63, -(2**64), 10**400, 2**28, 1764300000.5])
)
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["ts", "values", "seq", "n", "v", "vs", "vb", "bn", "bt", "bv", "t", "a"]
            )
            | st.text(max_size=3)
            | st.integers(-7, 9),  # SenML CBOR labels
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(doc=DOCS, fmt=st.sampled_from(list(ContentFormat)))
def test_fuzz_structured_documents(doc: object, fmt: ContentFormat) -> None:
    # json.dumps writes NaN and Infinity, as lenient encoders do; int keys become strings.
    body = json.dumps(doc).encode() if fmt in (J, SJ) else cbor2.dumps(doc)
    _only_payload_errors(body, fmt)


# Plausible documents: the right shapes with hostile values, so the fuzzer gets past the
# first shape check and into times, bases and values.
NAMES = st.sampled_from(["temp", "on", "a.b", "x/y", "", "ts", "bad name"]) | st.text(max_size=4)
SENML_KEYS = ["bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "s", "t", "ut", "vd"]
SENML_RECORDS = st.dictionaries(st.sampled_from([*SENML_KEYS, "x_", "ext"]), SCALARS, max_size=6)
SENML_PACKS = st.lists(SENML_RECORDS, max_size=5)
TS_OBJECTS = st.fixed_dictionaries(
    {"ts": SCALARS, "values": st.dictionaries(NAMES, SCALARS, max_size=4)},
    optional={"seq": SCALARS},
)
FLAT_OBJECTS = st.dictionaries(NAMES, SCALARS, max_size=4)
OBJECT_DOCS = TS_OBJECTS | FLAT_OBJECTS | st.lists(TS_OBJECTS | FLAT_OBJECTS, max_size=4)
_LABELS = {"bver": -1, "bn": -2, "bt": -3, "bu": -4, "bv": -5, "bs": -6, "n": 0, "u": 1, "v": 2}
_LABELS |= {"vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}


def encode_plausible(doc: Any, fmt: ContentFormat) -> bytes:
    if fmt in (J, SJ):
        return json.dumps(doc).encode()
    if fmt is SC:
        doc = [{_LABELS.get(k, k): v for k, v in rec.items()} for rec in doc]
    return cbor2.dumps(doc)


PLAUSIBLE = st.one_of(
    st.tuples(st.sampled_from([J, C]), OBJECT_DOCS),
    st.tuples(st.sampled_from([SJ, SC]), SENML_PACKS),
)


@FUZZ
@given(case=PLAUSIBLE)
def test_fuzz_plausible_documents(case: tuple[ContentFormat, Any]) -> None:
    fmt, doc = case
    _only_payload_errors(encode_plausible(doc, fmt), fmt)


def test_senml_device_urn_base_name_is_not_part_of_the_metric() -> None:
    body = (
        b'[{"bn": "urn:dev:ow:10e2073a01080063:", "n": "temp", "v": 23.1}, {"n": "hum", "v": 40}]'
    )
    got = decode(body, ContentFormat.SENML_JSON, now_ms=1764300000000)
    assert [r.metric for r in got] == ["temp", "hum"]
    prefixed = decode(
        b'[{"bn": "env.", "n": "temp", "v": 1}]', ContentFormat.SENML_JSON, now_ms=1764300000000
    )
    assert [r.metric for r in prefixed] == ["env.temp"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"temperature": 1, "temperature": 2}',
        b'{"ts": 1764300000000, "values": {"t": 1}, "values": {"t": 2}}',
        b'[{"ts": 1764300000000, "values": {"t": 1, "h": 2, "t": 3}}]',
    ],
)
def test_json_with_a_duplicate_key_is_refused_like_cbor(body: bytes) -> None:
    """Which value did the device mean? JSON was accepted (the last one won) while CBOR's
    duplicate keys were refused."""
    ((path, message),) = errors_of(body, J)
    assert path == "" and "duplicate key" in message
