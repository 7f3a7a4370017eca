"""common.sync_wire: exact round trips, and a decoder that only ever raises WireError."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import zlib
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.model import Reading, ReadingFlag, Value
from common.problem import ProblemError
from common.sync_wire import (
    CBOR,
    JSON,
    MAX_DECODED_BYTES,
    MAX_READINGS,
    AlertChange,
    AuthEvent,
    BatchAck,
    ClockEpoch,
    DeviceRecord,
    ReadingColumns,
    SyncBatch,
    WireError,
    batch_id_for,
    batch_to_doc,
    compress,
    decode_ack,
    decode_batch,
    devices_digest,
    encode_ack,
    encode_batch,
    reading_clocks,
)

T0 = 1_764_300_000_000


def rows(n: int = 200, *, decimals: bool = True, seed: int = 1) -> list[tuple[int, Reading]]:
    rng = random.Random(seed)
    out = []
    level: dict[tuple[str, str], float] = {}
    seq = 100
    for i in range(n):
        dev, met = f"dev-{i % 3}", f"m{i % 4}"
        v = level.get((dev, met), 20.0) + rng.gauss(0, 1)
        level[(dev, met)] = v
        seq += rng.choice([1, 1, 1, 2, 7])  # gaps: pruned or dropped readings
        ts = T0 + (i // 12) * 1000
        out.append(
            (
                seq,
                Reading(
                    dev,
                    met,
                    ts,
                    round(v, 2) if decimals else v,
                    ts + rng.randint(-5, 40),
                    ReadingFlag(rng.choice([0, 0, 0, 1, 2, 5])),
                    rng.choice([None, i, i + 1_000_000]),
                ),
            )
        )
    return out


def make_batch(readings: list[tuple[int, Reading]], **kw: Any) -> SyncBatch:
    first = kw.pop("first_seq", readings[0][0] if readings else 101)
    last = kw.pop("last_seq", readings[-1][0] + 3 if readings else first - 1)
    return SyncBatch.create(
        gateway_id="gw-1",
        first_seq=first,
        last_seq=last,
        boot_id="boot-a",
        gateway_clock_ms=T0 + 5,
        readings=ReadingColumns.from_readings(readings),
        **kw,
    )


ALERT = AlertChange(
    change_seq=7,
    id="al-1",
    rule_id="r-1",
    device_id="dev-0",
    metric="m0",
    severity="critical",
    state="active",
    value=31.5,
    started_at=T0,
)
AUTH = AuthEvent(at=T0, kind="lockout", transport="mqtt", reason="bad password", address="10.0.0.9")


def full_batch() -> SyncBatch:
    return make_batch(
        rows(),
        alerts=[
            ALERT,
            AlertChange(
                8, "al-2", "r-2", "dev-1", "m1", "info", "resolved", True, T0, T0 + 1, T0 + 2
            ),
        ],
        counters={"rejected": 4, "auth_failures": 2},
        auth_events=[AUTH],
        dropped=12,
        auth_through=5,
        epochs=[
            ClockEpoch(1, "boot-0", T0 - 9_000_000, int(ReadingFlag.GATEWAY_CLOCK_UNSYNCED)),
            ClockEpoch(150, "boot-a", T0 - 5_000, 0, 1_200),
        ],
    )


def doc_body(doc: Any, ctype: str = CBOR) -> bytes:
    raw = cbor2.dumps(doc) if ctype == CBOR else json.dumps(doc).encode()
    return compress(raw, "gzip")


def wire_error(doc: Any) -> WireError:
    with pytest.raises(WireError) as info:
        decode_batch(doc_body(doc), CBOR, "gzip")
    return info.value


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", [CBOR, JSON])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity"])
def test_round_trip_is_exact(ctype: str, encoding: str) -> None:
    batch = full_batch()
    body, ct, ce = encode_batch(batch, content_type=ctype, content_encoding=encoding)
    assert (ct, ce) == (ctype, encoding)
    back = decode_batch(body, ct, ce)
    assert back == batch
    assert back.readings.readings() == rows()


def test_defaults_are_cbor_gzip_and_decimal_values_go_as_scaled_integers() -> None:
    batch = make_batch(rows())
    body, ct, ce = encode_batch(batch)
    assert (ct, ce) == (CBOR, "gzip")
    doc = batch_to_doc(batch)
    assert doc["r"]["vx"] == 2 and all(type(x) is int for x in doc["r"]["vn"])
    assert len(body) < 8 * len(batch.readings)


def test_full_precision_floats_survive_bit_for_bit() -> None:
    batch = make_batch(rows(decimals=False))
    assert "vx" not in batch_to_doc(batch)["r"]
    back = decode_batch(*encode_batch(batch))
    assert [float(v).hex() for v in back.readings.value] == [
        float(v).hex() for v in batch.readings.value
    ]


def test_mixed_values_and_signed_zero() -> None:
    values: list[Value] = [0.0, -0.0, True, "open", 21.5, False, 1e300, "", 5e-324]
    data = [
        (i + 1, Reading("d", f"m{i}", T0 + i, v, T0 + i, ReadingFlag.NONE, None))
        for i, v in enumerate(values)
    ]
    back = decode_batch(*encode_batch(make_batch(data)))
    got = back.readings.value
    assert got == tuple(values)
    assert [type(v) for v in got] == [type(v) for v in values]
    assert math.copysign(1.0, float(got[1])) == -1.0  # -0.0 is not 0.0 on the wire either


def test_zero_does_not_defeat_scaling() -> None:
    data = [
        (i + 1, Reading("d", "m", T0 + i, v, T0, ReadingFlag.NONE))
        for i, v in enumerate([0.0, 1.5, 0.0, 2.25])
    ]
    assert batch_to_doc(make_batch(data))["r"]["vx"] == 2


def test_non_finite_values_are_refused_on_encode() -> None:
    data = [(1, Reading("d", "m", T0, math.nan, T0))]
    with pytest.raises(ValueError):
        encode_batch(make_batch(data))


def test_alert_only_batch_and_batch_ids() -> None:
    only_alert = make_batch([], first_seq=51, last_seq=50, alerts=[ALERT])
    back = decode_batch(*encode_batch(only_alert))
    assert back == only_alert and len(back.readings) == 0
    # Deterministic: the same cursors give the same id, other cursors another one.
    assert only_alert.batch_id == batch_id_for("gw-1", 51, 50, 7)
    assert only_alert.batch_id == make_batch([], first_seq=51, last_seq=50, alerts=[ALERT]).batch_id
    later = AlertChange(**{**{f: getattr(ALERT, f) for f in ALERT.__slots__}, "change_seq": 9})
    assert make_batch([], first_seq=51, last_seq=50, alerts=[later]).batch_id != only_alert.batch_id
    assert batch_id_for("gw-2", 51, 50, 7) != only_alert.batch_id
    assert batch_id_for("gw-1", 51, 60, 7) != only_alert.batch_id


def test_batch_id_must_match_its_cursors() -> None:
    doc = batch_to_doc(full_batch())
    doc["batch_id"] = batch_id_for("gw-1", 1, 2)
    assert wire_error(doc).problem.errors[0].path == "/batch_id"


def test_ack_round_trip_and_malformed_ack() -> None:
    ack = BatchAck(batch_id_for("gw-1", 1, 10), 1, 10, stored=8, duplicates=2)
    assert decode_ack(encode_ack(ack)) == ack
    for bad in [
        b"",
        b"[]",
        b'{"batch_id": "x"}',
        b'{"batch_id":"x","first_seq":-1,"last_seq":1,"stored":1,"duplicates":0}',
        b"\xff",
    ]:
        with pytest.raises(WireError):
            decode_ack(bad)


def test_reading_columns_refuse_unequal_lengths() -> None:
    with pytest.raises(ValueError):
        ReadingColumns(
            seq=(1, 2),
            device_id=("d",),
            metric=("m",),
            ts=(1,),
            received_at=(1,),
            value=(1.0,),
            flags=(0,),
            dev_seq=(None,),
        )


# -- malformed bodies ------------------------------------------------------------------------


def test_unsupported_type_and_encoding_are_415() -> None:
    body, ct, ce = encode_batch(full_batch())
    for args in [(body, "text/plain", ce), (body, ct, "br"), (body, "", ce)]:
        with pytest.raises(WireError) as info:
            decode_batch(*args)
        assert info.value.problem.status == 415
    # Parameters and case in the media type are fine.
    assert decode_batch(body, "Application/CBOR; charset=binary", "GZIP") == full_batch()


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    bomb = zlib.compress(b"\0" * (MAX_DECODED_BYTES + 1), 9)
    assert len(bomb) < 64 * 1024
    for enc in ("deflate", "gzip"):
        body = bomb if enc == "deflate" else compress(b"\0" * (MAX_DECODED_BYTES + 1), "gzip", 9)
        with pytest.raises(WireError) as info:
            decode_batch(body, CBOR, enc)
        assert info.value.problem.status == 400 and "exceeds" in info.value.problem.detail


def test_truncated_and_trailing_compressed_data() -> None:
    body, ct, ce = encode_batch(full_batch())
    for bad in [body[:-5], body + b"junk", b"not gzip at all"]:
        with pytest.raises(WireError):
            decode_batch(bad, ct, ce)


def test_column_length_mismatch_names_the_column() -> None:
    doc = batch_to_doc(full_batch())
    doc["r"]["ts"].pop()
    err = wire_error(doc)
    assert err.problem.status == 400
    assert err.problem.errors[0].path == "/r/ts"
    assert "one per reading" in err.problem.errors[0].message


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["r"]["seq"].__setitem__(3, 0), "/r/seq"),  # not strictly increasing
        (lambda d: d["r"]["seq"].__setitem__(0, -1), "/r/seq"),  # before first_seq
        (lambda d: d.__setitem__("last_seq", d["first_seq"] + 2), "/r/seq"),  # beyond last_seq
        (lambda d: d["r"]["dev_i"].__setitem__(0, 99), "/r/dev_i/0"),  # no such device
        (lambda d: d["r"]["dev"].append(d["r"]["dev"][0]), "/r/dev"),  # repeated name
        (lambda d: d["r"]["fl"].__setitem__(1, 256), "/r/fl/1"),
        (lambda d: d["r"]["ts"].__setitem__(1, "1"), "/r/ts/1"),
        (lambda d: d["r"]["ts"].__setitem__(1, True), "/r/ts/1"),  # a bool is not an int
        (lambda d: d["r"]["vn"].__setitem__(0, 1.5), "/r/vn/0"),  # scaled deltas are ints
        (lambda d: d["r"].__setitem__("vx", 99), "/r/vx"),
        (lambda d: d["r"]["vb"].append(True), "/r/vb"),
        (lambda d: d["r"].__setitem__("n", MAX_READINGS + 1), "/r/n"),
        (lambda d: d.__setitem__("first_seq", 0), "/first_seq"),
        (lambda d: d.__setitem__("gateway_id", 5), "/gateway_id"),
        (lambda d: d.__setitem__("v", 2), "/v"),
        (lambda d: d["counters"].__setitem__("x", -1), "/counters/x"),
        (lambda d: d["alerts"][0].__setitem__(7, [1]), "/alerts/0/7"),
        (lambda d: d["alerts"][0].pop(), "/alerts/0"),
        (lambda d: d["auth"][0].__setitem__(0, None), "/auth/0/0"),
        (lambda d: d.__setitem__("r", []), "/r"),
        (lambda d: d.__setitem__("follows", 7), "/follows"),
        (lambda d: d.__setitem__("follows", "x" * 65), "/follows"),
    ],
)
def test_malformed_fields_are_400_with_a_path(mutate: Any, path: str) -> None:
    batch = make_batch(
        [*rows(), (10_000, Reading("dev-0", "flag", T0, True, T0))],
        alerts=[ALERT],
        auth_events=[AUTH],
        counters={"rejected": 1},
    )
    doc = batch_to_doc(batch)
    mutate(doc)
    err = wire_error(doc)
    assert err.problem.status == 400
    assert path in [e.path for e in err.problem.errors], err.problem.errors


def test_too_many_readings_are_refused_before_the_columns_are_read() -> None:
    doc = batch_to_doc(make_batch(rows(5)))
    doc["r"]["n"] = MAX_READINGS + 1
    doc["r"]["ts"] = list(range(MAX_READINGS + 1))
    assert wire_error(doc).problem.errors[0].path == "/r/n"


# -- fuzzing ---------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = make_batch(rows(12), alerts=[ALERT], auth_events=[AUTH], counters={"a": 1})

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def decodes_or_wire_error(body: bytes, ctype: str, enc: str) -> None:
    try:
        batch = decode_batch(body, ctype, enc)
    except WireError as exc:
        assert isinstance(exc, ProblemError) and exc.problem.status in (400, 415)
    else:
        assert isinstance(batch, SyncBatch)


@FUZZ
@given(
    body=st.binary(max_size=300),
    ctype=st.sampled_from([CBOR, JSON]),
    enc=st.sampled_from(["gzip", "deflate", "identity"]),
)
def test_fuzz_random_bytes(body: bytes, ctype: str, enc: str) -> None:
    decodes_or_wire_error(body, ctype, enc)


@FUZZ
@given(data=st.data())
def test_fuzz_flipped_bytes_in_a_valid_body(data: st.DataObject) -> None:
    ce = data.draw(st.sampled_from(["gzip", "identity"]))
    body = bytearray(encode_batch(SMALL, content_encoding=ce)[0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] ^= data.draw(st.integers(1, 255))
    decodes_or_wire_error(bytes(body), CBOR, ce)


@FUZZ
@given(data=st.data())
def test_fuzz_replaced_fields_in_a_valid_document(data: st.DataObject) -> None:
    doc = batch_to_doc(SMALL)
    target = data.draw(st.sampled_from(["top", "r"]))
    holder = doc if target == "top" else doc["r"]
    key = data.draw(st.sampled_from(sorted(holder)))
    holder[key] = data.draw(cbor_values)
    body = compress(cbor2.dumps(doc), "identity")
    decodes_or_wire_error(body, CBOR, "identity")


def test_deeply_nested_body_is_a_wire_error() -> None:
    raw = b"\x81" * 100_000 + b"\x00"  # 100,000 nested one-element CBOR arrays
    for body, ctype in [(raw, CBOR), (b"[" * 100_000 + b"]" * 100_000, JSON)]:
        with pytest.raises(WireError):
            decode_batch(body, ctype, "identity")


# -- auth cursor and clock epochs --------------------------------------------------------------


def test_auth_cursor_is_part_of_the_batch_id() -> None:
    a = make_batch([], auth_events=[AUTH], auth_through=3)
    b = make_batch([], auth_events=[AUTH], auth_through=4)
    assert a.batch_id != b.batch_id  # two auth-only batches at the same reading cursor
    assert make_batch([]).batch_id == batch_id_for("gw-1", 101, 100)  # unchanged without
    doc = batch_to_doc(a)
    doc["auth_through"] = 4  # claims other events than its id says: refused
    assert wire_error(doc).problem.errors[0].path == "/batch_id"


def test_epochs_round_trip_and_bad_epochs_are_named() -> None:
    batch = full_batch()
    assert decode_batch(*encode_batch(batch)).epochs == batch.epochs
    doc = batch_to_doc(batch)
    doc["epochs"][1] = [0, "b", "x", 300, None]
    paths = {e.path for e in wire_error(doc).problem.errors}
    assert paths == {"/epochs/1/0", "/epochs/1/2", "/epochs/1/3"}


def _clock_batch(epochs: list[ClockEpoch], boot: str = "boot-b") -> SyncBatch:
    data = [
        (seq, Reading("d", "m", T0 + seq, 1.0, T0 + seq, ReadingFlag.TS_FROM_GATEWAY))
        for seq in (5, 10, 20)
    ]
    return SyncBatch.create(
        gateway_id="gw-1",
        first_seq=5,
        last_seq=20,
        boot_id=boot,
        gateway_clock_ms=T0,
        readings=ReadingColumns.from_readings(data),
        epochs=epochs,
    )


def test_reading_clocks_map_each_reading_to_its_epoch() -> None:
    unsynced, skewed = (
        int(ReadingFlag.GATEWAY_CLOCK_UNSYNCED),
        int(ReadingFlag.GATEWAY_CLOCK_SKEWED),
    )
    own = int(ReadingFlag.TS_FROM_GATEWAY)
    batch = _clock_batch(
        [
            ClockEpoch(1, "boot-a", T0 - 1_000, unsynced),  # a boot without NTP
            ClockEpoch(10, "boot-b", T0 - 2_000, 0, skew_ms=-400_000),  # measured 6.7 min off
            ClockEpoch(20, "boot-b", T0 - 3_000, 0),  # after a jump: current, not measured
        ]
    )
    clocks = reading_clocks(batch, request_skew_ms=10)
    assert clocks.boot_id == ["boot-a", "boot-b", "boot-b"]
    assert clocks.mono_ms == [1_005, 2_010, 3_020]  # received_at - the epoch's base
    assert clocks.flags == [own | unsynced, own | skewed, own]
    # the cloud's measurement on this request judges only the current epoch
    assert reading_clocks(batch, request_skew_ms=-600_000).flags == [
        own | unsynced,
        own | skewed,
        own | skewed,
    ]


def test_reading_clocks_without_epochs_or_before_the_first() -> None:
    plain = _clock_batch([])
    assert reading_clocks(plain).boot_id == [None, None, None]
    late = _clock_batch([ClockEpoch(10, "boot-b", T0, 0)])
    clocks = reading_clocks(late, request_skew_ms=900_000)
    assert clocks.boot_id == [None, "boot-b", "boot-b"] and clocks.mono_ms[0] is None
    # a current epoch of another boot than the batch's is not judged by this request
    other = _clock_batch([ClockEpoch(1, "boot-x", T0, 0)], boot="boot-b")
    assert reading_clocks(other, request_skew_ms=900_000).flags == [1, 1, 1]


def test_device_lists_round_trip_and_are_part_of_the_batch_id() -> None:
    devs = [DeviceRecord("t1", "thermo", "active"), DeviceRecord("t2", None, "revoked")]
    a = make_batch([], devices=devs)
    assert decode_batch(*encode_batch(a)).devices == tuple(devs)
    b = make_batch([], devices=devs[:1])
    assert a.batch_id != b.batch_id != make_batch([]).batch_id
    assert devices_digest(devs) == devices_digest(list(reversed(devs)))  # order-free
    doc = batch_to_doc(a)
    doc["devices"][1][2] = "gone"
    assert {e.path for e in wire_error(doc).problem.errors} == {"/devices/1/2"}


def test_follows_round_trips_and_is_not_part_of_the_batch_identity() -> None:
    batch = full_batch()
    pipelined = dataclasses.replace(batch, follows="b-before")
    back = decode_batch(*encode_batch(pipelined))
    assert back == pipelined and back.follows == "b-before"
    assert back.batch_id == batch.batch_id  # resent without it, it is the same batch
    assert "follows" not in batch_to_doc(batch)


# -- issue 15: alerts explain themselves (rule snapshots, the gateway's rule list) ----------

RULE_DOC: dict[str, Any] = {
    "id": "r-hot",
    "name": "Too hot",
    "metric": "temp",
    "operator": ">",
    "threshold": 30.5,
    "for_seconds": 60,
    "hysteresis": 1.0,
    "severity": "critical",
    "enabled": True,
    "channels": [],
    "version": 1,
    "device_type": "thermo",
}


def test_alert_rule_snapshot_round_trips_as_an_optional_twelfth_item() -> None:
    explained = dataclasses.replace(ALERT, rule=RULE_DOC)
    batch = make_batch([], first_seq=51, last_seq=50, alerts=[explained])
    back = decode_batch(*encode_batch(batch))
    assert back.alerts[0].rule == RULE_DOC
    assert len(batch_to_doc(batch)["alerts"][0]) == 12
    # without a snapshot the row is the 11 items older gateways and clouds know
    plain = make_batch([], first_seq=51, last_seq=50, alerts=[ALERT])
    assert len(batch_to_doc(plain)["alerts"][0]) == 11
    assert plain.batch_id == batch.batch_id  # the snapshot is not part of the identity


def test_an_older_gateways_batch_is_still_accepted() -> None:
    # A batch document exactly as gateways before rule snapshots wrote it: no 12th alert item,
    # no "rules" key. It must decode, with no rule and no rule list.
    doc = batch_to_doc(make_batch(rows(10), alerts=[ALERT]))
    assert "rules" not in doc and len(doc["alerts"][0]) == 11
    back = decode_batch(json.dumps(doc).encode(), JSON, "identity")
    assert back.alerts[0].rule is None and back.rules is None


def test_gateway_rule_list_round_trips_and_is_part_of_the_batch_id() -> None:
    a = make_batch([], rules=[RULE_DOC])
    back = decode_batch(*encode_batch(a))
    assert back.rules == (RULE_DOC,)
    none_now = make_batch([], rules=[])  # "the gateway has no rules now" is not "unchanged"
    assert decode_batch(*encode_batch(none_now)).rules == ()
    unsent = make_batch([])
    assert len({a.batch_id, none_now.batch_id, unsent.batch_id}) == 3
    changed = make_batch([], rules=[{**RULE_DOC, "threshold": 31}])
    assert changed.batch_id != a.batch_id
    assert unsent.batch_id == batch_id_for("gw-1", 101, 100)  # the id it always had


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d["rules"][0].pop("id"), "/rules/0/id"),
        (lambda d: d["rules"][0].update(threshold={"x": 1}), "/rules/0/threshold"),
        (lambda d: d["rules"][0].update(name="n" * 300), "/rules/0/name"),
        (lambda d: d["rules"].append("not a map"), "/rules/1"),
        (lambda d: d["alerts"][0].__setitem__(11, [1, 2]), "/alerts/0/11"),
        (lambda d: d["alerts"][0].append(None), "/alerts/0"),
    ],
)
def test_malformed_rules_and_snapshots_are_400_with_a_path(mutate: Any, path: str) -> None:
    batch = make_batch(
        [],
        first_seq=51,
        last_seq=50,
        alerts=[dataclasses.replace(ALERT, rule=RULE_DOC)],
        rules=[RULE_DOC],
    )
    doc = batch_to_doc(batch)
    mutate(doc)
    assert path in {e.path for e in wire_error(doc).problem.errors}
