"""The plain-message shortcut of decode_and_validate gives exactly what the general path
(decode, then validate) gives: the same readings, or the same error."""

from __future__ import annotations

import json
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from common.codecs import ContentFormat, PayloadError, decode, locate
from common.validation import (
    DeviceTypeSpec,
    MetricSpec,
    ValidationPolicy,
    _plain_message,
    decode_and_validate,
    validate,
)

NOW = 1_764_770_000_000
POLICY = ValidationPolicy()
NAMES = ["temperature", "humidity", "ts", "values", "seq", "bad name", "x" * 65, "é"]
SPECS: list[DeviceTypeSpec | None] = [
    None,
    DeviceTypeSpec("thermo", {"temperature": MetricSpec("number", "°C", -40, 85)}),
    DeviceTypeSpec("strict", {"temperature": MetricSpec("number")}, allow_undeclared=False),
    DeviceTypeSpec("flag", {"humidity": MetricSpec("boolean")}),
]

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.text(max_size=5),
    st.none(),
    st.sampled_from([-41.0, 86.0, 85, -40, 2**53, 2**53 + 1]),
)
metrics = st.dictionaries(st.sampled_from(NAMES), values, max_size=4)
timestamps = st.one_of(
    st.sampled_from([NOW, NOW - 1, 0, -1, 946_684_800_000, NOW + 24 * 3600 * 1000 + 1]),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)
# What devices send most: these take the shortcut unless a spec or a flag intervenes.
plain_metrics = st.dictionaries(
    st.sampled_from(["temperature", "humidity"]),
    st.one_of(st.floats(-100, 100), st.integers(-1000, 1000)),
    min_size=1,
    max_size=2,
)
documents = st.one_of(
    plain_metrics,
    st.builds(lambda age, v: {"ts": NOW - age, "values": v}, st.integers(-1, 10**6), plain_metrics),
    metrics,
    st.builds(lambda ts, v: {"ts": ts, "values": v}, timestamps, metrics),
    st.builds(lambda v: {"values": v}, metrics),
    st.builds(lambda ts, v: {"ts": ts, "values": v, "seq": 3}, timestamps, metrics),
)


def general(body: bytes, fmt: ContentFormat, spec: DeviceTypeSpec | None) -> Any:
    try:
        raws = decode(body, fmt, now_ms=NOW)
        return validate(
            "d1",
            raws,
            received_at_ms=NOW,
            spec=spec,
            policy=POLICY,
            sources=lambda: locate(body, fmt, now_ms=NOW),
        )
    except PayloadError as exc:
        return ("error", exc.problem.status, exc.problem.errors)


def shortcut(body: bytes, fmt: ContentFormat, spec: DeviceTypeSpec | None) -> Any:
    try:
        return decode_and_validate("d1", body, fmt, received_at_ms=NOW, spec=spec, policy=POLICY)
    except PayloadError as exc:
        return ("error", exc.problem.status, exc.problem.errors)


@settings(max_examples=600, derandomize=True, database=None)
@given(doc=documents, spec=st.sampled_from(SPECS), cbor=st.booleans())
def test_the_shortcut_agrees_with_the_general_path(
    doc: dict[str, Any], spec: DeviceTypeSpec | None, cbor: bool
) -> None:
    for name in NAMES:  # every valid name known, as on a gateway that has run for a while
        general(json.dumps({name: 1.0}).encode(), ContentFormat.JSON, None)
    if cbor:
        body, fmt = cbor2.dumps(doc), ContentFormat.CBOR
    else:
        body, fmt = json.dumps(doc).encode(), ContentFormat.JSON
    assert shortcut(body, fmt, spec) == general(body, fmt, spec)


def test_the_common_messages_take_the_shortcut() -> None:
    general(b'{"temperature": 1.5}', ContentFormat.JSON, None)  # the name is known
    for doc in ({"ts": NOW, "values": {"temperature": 21}}, {"temperature": 21.5}):
        readings = _plain_message("d1", doc, NOW, SPECS[1], POLICY, decode_limits())
        assert readings is not None and len(readings) == 1
    # a flag, an unknown key, a string: the general path decides
    for doc in (
        {"ts": 5, "values": {"temperature": 1.0}},
        {"ts": NOW, "values": {"temperature": 1.0}, "seq": 1},
        {"temperature": "warm"},
    ):
        assert _plain_message("d1", doc, NOW, None, POLICY, decode_limits()) is None


def decode_limits() -> Any:
    from common.codecs import DEFAULT_LIMITS

    return DEFAULT_LIMITS


# JSON texts json.dumps never writes: a key twice (also spelt with an escape), escapes, a BOM,
# NaN, big numbers. orjson parses the plain message; the strict parser must still decide these.
RAW_BODIES = [
    b'{"temperature": 1, "temperature": 2}',
    b'{"temperature": 1, "humidity": 2, "temperature": 3}',
    b'{"ts": 1764770000000, "values": {"temperature": 1, "temperature": 2}}',
    b'{"ts": 1764770000000, "values": {"temperature": 1}, "values": {"temperature": 2}}',
    b'{"ts": 1764770000000, "ts": 1764770000001, "values": {"temperature": 1}}',
    b'{"temperature": 1, "temp\\u0065rature": 2}',
    b'{"temp\\u0065rature": 2}',
    b'{"temperature": 1, "humidity\\"": 2}',
    b'\xef\xbb\xbf{"temperature": 1}',
    b'{"temperature": NaN}',
    b'{"temperature": 1e400}',
    b'{"temperature": 123456789012345678901234567890}',
    b' \n{ "temperature" :\t1.25 }\n',
    b'{"temperature": 1}garbage',
    b'{"temperature": 1,}',
    b"{}",
    b"[]",
]


def test_texts_json_dumps_never_writes_are_decided_as_by_the_strict_parser() -> None:
    general(b'{"temperature": 1.5}', ContentFormat.JSON, None)  # the names are known
    general(b'{"humidity": 1.5}', ContentFormat.JSON, None)
    for body in RAW_BODIES:
        assert shortcut(body, ContentFormat.JSON, None) == general(body, ContentFormat.JSON, None)
    assert shortcut(RAW_BODIES[0], ContentFormat.JSON, None)[0] == "error"  # not the last value


pairs = st.lists(
    st.tuples(
        st.sampled_from(["temperature", "humidity", "ts", "values"]),
        st.one_of(st.integers(-5, 5), st.just(NOW)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, derandomize=True, database=None)
@given(outer=pairs, inner=pairs, nested=st.booleans())
def test_a_key_named_twice_is_refused_on_either_path(
    outer: list[tuple[str, int]], inner: list[tuple[str, int]], nested: bool
) -> None:
    general(b'{"temperature": 1.5, "humidity": 1.5}', ContentFormat.JSON, None)
    items = [f'"{k}": {v}' for k, v in outer]
    if nested:
        items.append('"values": {' + ", ".join(f'"{k}": {v}' for k, v in inner) + "}")
    body = ("{" + ", ".join(items) + "}").encode()
    assert shortcut(body, ContentFormat.JSON, None) == general(body, ContentFormat.JSON, None)
