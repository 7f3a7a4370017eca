"""The readings of a sync batch in their wire form (the document's "r" map), both ways:
columns_to_doc transforms ReadingColumns so a general compressor finds little left to squeeze,
columns_from_doc validates and inverts it. Device ids and metric names go as a dictionary plus
a small-integer index per reading; seq and ts as deltas from the previous reading, received_at
as (received_at - ts); numbers as integers when they are exact decimals with <= 6 places (what
sensors send, e.g. 21.37 -> 2137 at scale 2), delta-coded per (device, metric) series so a
random walk costs one or two bytes, other numbers as floats; booleans and strings in columns of
their own with a per-reading kind column only when the batch holds any; device sequence numbers
delta-coded per device. The transforms are exact: decode(encode(b)) == b, bit for bit. Why
these transforms, with figures: docs/decisions/sync-wire-format.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from common.model import Value
from common.sync_batch import ReadingColumns
from common.sync_wire_check import DocCheck
from common.sync_wire_spec import (
    EXACT_INT,
    INT64_MAX,
    INT64_MIN,
    MAX_READINGS,
    MAX_SCALE,
    MAX_VALUE_STR,
)

_KIND_NUM, _KIND_BOOL, _KIND_STR = 0, 1, 2

# -- encoding --------------------------------------------------------------------------------


def _dictionary(values: Sequence[str]) -> tuple[list[str], list[int]]:
    index: dict[str, int] = {}
    codes = [index.setdefault(v, len(index)) for v in values]
    return list(index), codes


def _deltas(values: Sequence[int], start: int) -> list[int]:
    out = []
    prev = start
    for v in values:
        out.append(v - prev)
        prev = v
    return out


def _scale_for(nums: Sequence[float]) -> int | None:
    """The fewest decimal places that represent every number exactly, or None."""
    for k in range(MAX_SCALE + 1):
        p = 10**k
        try:
            if all(
                abs(s := round(v * p)) < EXACT_INT
                and s / p == v
                and (v != 0.0 or math.copysign(1.0, v) > 0)  # -0.0 would come back as 0.0
                for v in nums
            ):
                return k
        except (OverflowError, ValueError):  # inf, nan: callers reject them, but not here
            return None
    return None


def columns_to_doc(cols: ReadingColumns, first_seq: int) -> dict[str, Any]:
    """The "r" map for these readings; ValueError for a value that is not a finite number."""
    n = len(cols)
    devs, dev_i = _dictionary(cols.device_id)
    mets, met_i = _dictionary(cols.metric)
    doc: dict[str, Any] = {
        "n": n,
        "dev": devs,
        "dev_i": dev_i,
        "met": mets,
        "met_i": met_i,
        "seq": _deltas(cols.seq, first_seq),
        "ts": _deltas(cols.ts, 0),
        "rx": [rx - t for rx, t in zip(cols.received_at, cols.ts, strict=True)],
        "fl": list(cols.flags),
    }
    # Device sequence numbers count per device: deltas within each device stay tiny.
    last_ds: dict[int, int] = {}
    ds_col: list[int | None] = []
    for d, ds in zip(dev_i, cols.dev_seq, strict=True):
        if ds is None:
            ds_col.append(None)
        else:
            ds_col.append(ds - last_ds.get(d, 0))
            last_ds[d] = ds
    doc["ds"] = ds_col

    kinds = [
        _KIND_BOOL if type(v) is bool else _KIND_STR if type(v) is str else _KIND_NUM
        for v in cols.value
    ]
    if any(kinds):
        doc["vk"] = kinds
        doc["vb"] = [v for v, k in zip(cols.value, kinds, strict=True) if k == _KIND_BOOL]
        doc["vs"] = [v for v, k in zip(cols.value, kinds, strict=True) if k == _KIND_STR]
        num_rows = [i for i, k in enumerate(kinds) if k == _KIND_NUM]
    else:
        num_rows = list(range(n))
    nums = [float(cols.value[i]) for i in num_rows]
    for v in nums:
        if not math.isfinite(v):
            raise ValueError("reading values must be finite numbers")
    scale = _scale_for(nums)
    if scale is None:
        doc["vn"] = nums
    else:
        # Each (device, metric) series is its own random walk: delta against its last value.
        p = 10**scale
        nmet = max(len(mets), 1)
        last: dict[int, int] = {}
        out: list[int] = []
        for i, v in zip(num_rows, nums, strict=True):
            key = dev_i[i] * nmet + met_i[i]
            s = round(v * p)
            out.append(s - last.get(key, 0))
            last[key] = s
        doc["vx"] = scale
        doc["vn"] = out
    return doc


# -- decoding --------------------------------------------------------------------------------


def _names(c: DocCheck, v: object, path: str, n: int) -> list[str]:
    names = c.list_(v, path, n)
    for i, s in enumerate(names):
        c.str_(s, f"{path}/{i}")
    c.raise_if_any()
    if len(set(names)) != len(names):
        c.abort(path, "must not repeat a name")
    return names


def _undelta(deltas: Sequence[int], start: int, path: str, c: DocCheck) -> list[int]:
    out = []
    acc = start
    for d in deltas:
        acc += d
        out.append(acc)
    if out and not (min(out) >= INT64_MIN and max(out) <= INT64_MAX):
        c.abort(path, "values out of int64 range")
    return out


def columns_from_doc(
    c: DocCheck, r: Mapping[Any, Any], first_seq: int, last_seq: int
) -> ReadingColumns:
    """ReadingColumns from an untrusted "r" map whose seqs must lie in first_seq..last_seq."""
    n = r.get("n")
    if type(n) is not int or not 0 <= n <= MAX_READINGS:
        c.abort("/r/n", f"must be an integer in [0, {MAX_READINGS}]")
    devs = _names(c, r.get("dev"), "/r/dev", n)
    mets = _names(c, r.get("met"), "/r/met", n)
    # An index must name an entry: with an empty dictionary no value is in [0, -1].
    dev_i = c.int_column(r.get("dev_i"), "/r/dev_i", n, 0, len(devs) - 1)
    met_i = c.int_column(r.get("met_i"), "/r/met_i", n, 0, len(mets) - 1)
    seq_d = c.int_column(r.get("seq"), "/r/seq", n)
    seq = _undelta(seq_d, first_seq, "/r/seq", c)
    if n:
        if seq_d[0] < 0 or any(d < 1 for d in seq_d[1:]):
            c.abort("/r/seq", "sequence numbers must increase strictly from first_seq")
        if seq[-1] > last_seq:
            c.abort("/r/seq", f"sequence number {seq[-1]} is beyond last_seq {last_seq}")
    ts = _undelta(c.int_column(r.get("ts"), "/r/ts", n), 0, "/r/ts", c)
    rx_d = c.int_column(r.get("rx"), "/r/rx", n)
    received = [t + d for t, d in zip(ts, rx_d, strict=True)]
    if received and not (min(received) >= INT64_MIN and max(received) <= INT64_MAX):
        c.abort("/r/rx", "values out of int64 range")
    flags = c.int_column(r.get("fl"), "/r/fl", n, 0, 255)

    ds_raw = c.list_(r.get("ds"), "/r/ds", n)
    if len(ds_raw) != n:
        c.abort("/r/ds", f"must have {n} items (one per reading), not {len(ds_raw)}")
    last_ds: dict[int, int] = {}
    dev_seq: list[int | None] = []
    for i, (d, x) in enumerate(zip(dev_i, ds_raw, strict=True)):
        if x is None:
            dev_seq.append(None)
            continue
        if type(x) is not int:
            c.abort(f"/r/ds/{i}", "must be an integer or null")
        v = last_ds.get(d, 0) + x
        if not INT64_MIN <= v <= INT64_MAX:
            c.abort(f"/r/ds/{i}", "out of int64 range")
        last_ds[d] = v
        dev_seq.append(v)

    values = _values_from_doc(c, r, n, dev_i, met_i, len(mets))
    return ReadingColumns(
        seq=tuple(seq),
        device_id=tuple([devs[i] for i in dev_i]),
        metric=tuple([mets[i] for i in met_i]),
        ts=tuple(ts),
        received_at=tuple(received),
        value=tuple(values),
        flags=tuple(flags),
        dev_seq=tuple(dev_seq),
    )


def _values_from_doc(  # noqa: PLR0912 - one branch per value column encoding
    c: DocCheck, r: Mapping[Any, Any], n: int, dev_i: list[int], met_i: list[int], nmet: int
) -> list[Value]:
    if "vk" in r:
        kinds = c.int_column(r.get("vk"), "/r/vk", n, 0, 2)
        bools = c.list_(r.get("vb"), "/r/vb", n)
        strs = c.list_(r.get("vs"), "/r/vs", n)
        if len(bools) != kinds.count(_KIND_BOOL) or any(type(b) is not bool for b in bools):
            c.abort("/r/vb", "must hold one boolean per boolean reading")
        if len(strs) != kinds.count(_KIND_STR) or any(
            type(s) is not str or len(s) > MAX_VALUE_STR for s in strs
        ):
            c.abort("/r/vs", f"must hold one string (<= {MAX_VALUE_STR}) per string reading")
        num_rows = [i for i, k in enumerate(kinds) if k == _KIND_NUM]
    else:
        kinds, bools, strs = [], [], []
        num_rows = list(range(n))
    raw = c.list_(r.get("vn"), "/r/vn", n)
    if len(raw) != len(num_rows):
        c.abort("/r/vn", f"must hold one number per numeric reading ({len(num_rows)})")
    scale = r.get("vx")
    nums: list[float] = []
    if scale is None:
        for i, x in enumerate(raw):
            if type(x) is not float or not math.isfinite(x):
                c.abort(f"/r/vn/{i}", "must be a finite float")
        nums = raw
    else:
        if type(scale) is not int or not 0 <= scale <= MAX_SCALE:
            c.abort("/r/vx", f"must be an integer in [0, {MAX_SCALE}]")
        p = 10**scale
        last: dict[int, int] = {}
        for j, (i, d) in enumerate(zip(num_rows, raw, strict=True)):
            key = dev_i[i] * nmet + met_i[i]
            if type(d) is not int:
                c.abort(f"/r/vn/{j}", "must be an integer (scaled delta)")
            s = last.get(key, 0) + d
            if abs(s) >= EXACT_INT:
                c.abort(f"/r/vn/{j}", "scaled value out of range")
            last[key] = s
            nums.append(s / p)
    if not kinds:
        return list(nums)
    out: list[Value] = []
    it_n, it_b, it_s = iter(nums), iter(bools), iter(strs)
    for k in kinds:
        out.append(next(it_n) if k == _KIND_NUM else next(it_b) if k == _KIND_BOOL else next(it_s))
    return out
