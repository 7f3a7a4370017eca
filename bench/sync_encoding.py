"""Which wire encoding for gateway -> cloud sync batches? Bytes, encode and decode time.

    .venv/bin/python bench/sync_encoding.py [--readings 10000] [--repeat 15] [--smoke]

Data: 10 devices x 10 metrics, one message per device per second carrying all its metrics
(so the 10 readings of a message share ts and device seq), received 0-40 ms later, values
random walks. Two value sets: "decimal" (rounded to 0.01, what sensors report) and "float"
(full double precision, the worst case for the value column).

Candidates: readings as rows (one JSON object each), the raw columns (no transforms), and
common.sync_wire's transformed columns, each through JSON or CBOR (cbor2) and gzip/zlib at a
few levels (zstandard only if installed: it is not a dependency). Decode of the transformed
columns is common.sync_wire.decode_batch, validation included; the others only parse and build
the Reading values, so they are flattered. Times are the best of --repeat runs
(the machine may be shared: the minimum is the least disturbed figure). The encoding in use
is also given against the naive peer (JSON rows + gzip 6) measured in the same run.
Output: human lines, then one JSON line. --smoke: 1,000 readings, 2 repeats, about a second.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.model import Reading, ReadingFlag
from common.sync_wire import (
    CBOR,
    DEFAULT_CONTENT_ENCODING,
    DEFAULT_LEVEL,
    JSON,
    ReadingColumns,
    SyncBatch,
    batch_to_doc,
    compress,
    decode_batch,
    decompress,
    encode_batch,
)

try:  # optional: measured when present, never installed for this
    import zstandard
except ImportError:
    zstandard = None

T0 = 1_764_300_000_000


def make_readings(n: int, *, decimals: bool, seed: int = 7) -> list[tuple[int, Reading]]:
    rng = random.Random(seed)
    devices = [f"sensor-{i:03d}" for i in range(10)]
    metrics = [
        "temperature",
        "humidity",
        "pressure",
        "co2",
        "voc",
        "pm25",
        "pm10",
        "noise",
        "lux",
        "battery",
    ]
    level = {(d, m): rng.uniform(10, 1000) for d in devices for m in metrics}
    out: list[tuple[int, Reading]] = []
    seq = 0
    tick = 0
    while len(out) < n:
        tick += 1
        for d in devices:
            ts = T0 + tick * 1000
            rx = ts + rng.randint(0, 40)
            for m in metrics:
                if len(out) == n:
                    break
                v = level[(d, m)] + rng.gauss(0, 0.5)
                level[(d, m)] = v
                seq += 1
                value = round(v, 2) if decimals else v
                out.append((seq, Reading(d, m, ts, value, rx, ReadingFlag.NONE, tick)))
    return out


def batch_of(rows: list[tuple[int, Reading]]) -> SyncBatch:
    return SyncBatch.create(
        gateway_id="gw-0001",
        first_seq=rows[0][0],
        last_seq=rows[-1][0],
        boot_id="b7f1c2",
        gateway_clock_ms=T0,
        readings=ReadingColumns.from_readings(rows),
        counters={"rejected": 3, "auth_failures": 1},
    )


def rows_doc(rows: list[tuple[int, Reading]]) -> list[dict[str, Any]]:
    return [
        {
            "seq": s,
            "device_id": r.device_id,
            "metric": r.metric,
            "ts": r.ts,
            "received_at": r.received_at,
            "value": r.value,
            "flags": int(r.flags),
            "dev_seq": r.seq,
        }
        for s, r in rows
    ]


def rows_from_doc(doc: list[dict[str, Any]]) -> list[tuple[int, Reading]]:
    return [
        (
            d["seq"],
            Reading(
                d["device_id"],
                d["metric"],
                d["ts"],
                d["value"],
                d["received_at"],
                ReadingFlag(d["flags"]),
                d["dev_seq"],
            ),
        )
        for d in doc
    ]


def raw_columns_doc(cols: ReadingColumns) -> dict[str, Any]:
    return {
        "seq": list(cols.seq),
        "device_id": list(cols.device_id),
        "metric": list(cols.metric),
        "ts": list(cols.ts),
        "received_at": list(cols.received_at),
        "value": list(cols.value),
        "flags": list(cols.flags),
        "dev_seq": list(cols.dev_seq),
    }


def raw_columns_from_doc(doc: dict[str, Any]) -> ReadingColumns:
    return ReadingColumns(**{k: tuple(v) for k, v in doc.items()})


def serialiser(fmt: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    if fmt == "JSON":
        return (lambda d: json.dumps(d, separators=(",", ":")).encode()), json.loads
    return cbor2.dumps, cbor2.loads


def compressor(
    name: str,
) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes], str, int]:
    kind, _, level_s = name.partition(" ")
    level = int(level_s)
    if kind == "zstd":
        assert zstandard is not None
        c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
        return c.compress, d.decompress, "zstd", level
    enc = "gzip" if kind == "gzip" else "deflate"
    return (lambda b: compress(b, enc, level)), (lambda b: decompress(b, enc)), enc, level


def codec(
    layout: str,
    batch: SyncBatch,
    rows: list[tuple[int, Reading]],
    dumps: Callable[[Any], bytes],
    loads: Callable[[bytes], Any],
    pack: Callable[[bytes], bytes],
    unpack: Callable[[bytes], bytes],
    enc: str,
    level: int,
    ctype: str,
) -> tuple[Callable[[], bytes], Callable[[bytes], object]]:
    """(encode, decode) for one candidate."""
    if layout == "rows":
        return (
            lambda: pack(dumps(rows_doc(rows))),
            lambda body: rows_from_doc(loads(unpack(body))),
        )
    if layout == "raw columns":
        return (
            lambda: pack(dumps(raw_columns_doc(batch.readings))),
            lambda body: raw_columns_from_doc(loads(unpack(body))),
        )
    if enc == "zstd":
        return (
            lambda: pack(dumps(batch_to_doc(batch))),
            lambda body: decode_batch(unpack(body), ctype, "identity"),
        )
    # The real thing: common.sync_wire's encoder and its validating decoder.
    return (
        lambda: encode_batch(batch, content_type=ctype, content_encoding=enc, level=level)[0],
        lambda body: decode_batch(body, ctype, enc),
    )


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000, result


Result = tuple[str, int, int, float, float, float]


def run(rows: list[tuple[int, Reading]], repeat: int) -> list[Result]:
    batch = batch_of(rows)
    comps = ["gzip 6", "zlib 1", "zlib 6", "zlib 9"]
    if zstandard is not None:
        comps += ["zstd 3", "zstd 19"]
    cases: list[tuple[str, str, str]] = [
        ("rows", "JSON", "gzip 6"),
        ("rows", "CBOR", "zlib 6"),
        ("raw columns", "JSON", "gzip 6"),
        ("raw columns", "CBOR", "zlib 6"),
        ("columns", "JSON", "gzip 6"),
        *[("columns", "CBOR", c) for c in comps],
    ]
    results = []
    for layout, fmt, comp in cases:
        dumps, loads = serialiser(fmt)
        pack, unpack, enc, level = compressor(comp)
        ctype = JSON if fmt == "JSON" else CBOR
        encode, decode = codec(layout, batch, rows, dumps, loads, pack, unpack, enc, level, ctype)
        enc_ms, body = best(encode, repeat)
        dec_ms, decoded = best(partial(decode, body), repeat)
        if layout == "columns":
            assert decoded == batch, "round trip changed the batch"
        # The compressor alone, on the serialised bytes: what the level choice really costs.
        raw = unpack(body)
        zip_ms, _ = best(partial(pack, raw), repeat)
        results.append((f"{fmt} {layout} + {comp}", len(raw), len(body), enc_ms, zip_ms, dec_ms))
    return results


IN_USE = f"CBOR columns + {DEFAULT_CONTENT_ENCODING} {DEFAULT_LEVEL}"  # common.sync_wire's
BASELINE = "JSON rows + gzip 6"  # the naive peer: one JSON object per reading


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument(
        "--smoke", action="store_true",
        help="a second, tiny sizes (1,000 readings, 2 repeats): checks that the benchmark "
        "still runs, as the test suite does",
    )  # fmt: skip
    args = ap.parse_args()
    if args.smoke:
        args.readings, args.repeat = 1_000, 2
    if args.readings < 1 or args.repeat < 1:
        ap.error("--readings and --repeat must be positive")
    print(
        f"python {sys.version.split()[0]}, cbor2 {version('cbor2')}, zlib {zlib.ZLIB_VERSION}, "
        f"zstandard {'installed' if zstandard else 'not installed'}"
    )
    value_sets: dict[str, Any] = {}
    for key, label, decimals in (
        ("decimal", "decimal values (0.01)", True),
        ("float", "full-precision floats", False),
    ):
        rows = make_readings(args.readings, decimals=decimals)
        print(f"\n{args.readings:,} readings, {label}")
        print(
            f"{'encoding':<30} {'raw B':>9} {'wire B':>9} {'B/rdg':>6} {'encode ms':>9} "
            f"{'(zip ms)':>8} {'decode ms':>9}"
        )
        figures: list[dict[str, Any]] = []
        for name, raw, size, enc_ms, zip_ms, dec_ms in run(rows, args.repeat):
            mark = "  <- in use" if name == IN_USE else ""
            print(
                f"{name:<30} {raw:>9,} {size:>9,} {size / len(rows):>6.2f} {enc_ms:>9.1f} "
                f"{zip_ms:>8.1f} {dec_ms:>9.1f}{mark}"
            )
            figures.append({
                "encoding": name, "raw_bytes": raw, "wire_bytes": size,
                "bytes_per_reading": round(size / len(rows), 3), "encode_ms": round(enc_ms, 2),
                "zip_ms": round(zip_ms, 2), "decode_ms": round(dec_ms, 2),
            })  # fmt: skip
        by_name = {f["encoding"]: f for f in figures}
        used, base = by_name[IN_USE], by_name[BASELINE]
        versus = {  # the in-use figure over the baseline's: < 1 is better
            what: round(used[key] / base[key], 3) if base[key] else None
            for what, key in (
                ("bytes", "wire_bytes"), ("encode", "encode_ms"), ("decode", "decode_ms")
            )
        }  # fmt: skip
        print(
            f"in use ({IN_USE}) against {BASELINE}, same run: {versus['bytes']:.2f}x the bytes, "
            f"{versus['encode']}x the encode time, {versus['decode']}x the decode time"
        )
        value_sets[key] = {"in_use": used, "versus_baseline": versus, "candidates": figures}
    print("\nencode ms includes (zip ms), the compressor alone; decode ms includes inflating.")
    print(json.dumps({
        "bench": "sync_encoding", "in_use": IN_USE, "baseline": BASELINE,
        "value_sets": value_sets,
        "settings": {"readings": args.readings, "repeat": args.repeat, "smoke": args.smoke},
    }, separators=(",", ":")))  # fmt: skip


if __name__ == "__main__":
    main()
