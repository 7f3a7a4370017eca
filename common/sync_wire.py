"""The gateway -> cloud sync batch as bytes: encode_batch and decode_batch, encode_ack and
decode_ack, and the compression around them. The sync actor builds a SyncBatch from the store
and calls encode_batch; the cloud endpoint calls decode_batch on the request body and answers
with encode_ack. Anything the decoder does not like is a WireError (400 or 415) with field
errors, never another exception. Pure: no I/O, no clock. The pieces live beside this module
(values and identity in common.sync_batch, the document in common.sync_batch_doc, the reading
columns in common.sync_columns, clocks in common.sync_clocks, terms and limits in
common.sync_wire_spec, checks in common.sync_wire_check); every name is re-exported here.
CBOR columns + gzip 6, 1.5 B/reading: why, with figures, in docs/decisions/sync-wire-format.md.
"""

from __future__ import annotations

import json
import zlib

import cbor2

from common.sync_batch import (
    AlertChange,
    AuthEvent,
    BatchAck,
    ClockEpoch,
    DeviceRecord,
    ReadingColumns,
    RuleField,
    SyncBatch,
    batch_id_for,
    devices_digest,
    rules_digest,
)
from common.sync_batch_doc import batch_from_doc, batch_to_doc
from common.sync_clocks import CLOCK_SKEW_FLAG_MS, ReadingClock, reading_clocks
from common.sync_wire_check import DocCheck, WireError
from common.sync_wire_spec import (
    CBOR,
    CONTENT_ENCODINGS,
    CONTENT_TYPES,
    DEFAULT_CONTENT_ENCODING,
    DEFAULT_CONTENT_TYPE,
    DEFAULT_LEVEL,
    INT64_MAX,
    INT64_MIN,
    JSON,
    MAX_ALERTS,
    MAX_AUTH_EVENTS,
    MAX_BODY_BYTES,
    MAX_COUNTERS,
    MAX_DECODED_BYTES,
    MAX_DEVICES,
    MAX_EPOCHS,
    MAX_READINGS,
    MAX_SCALE,
    MAX_STR,
    MAX_VALUE_STR,
    WIRE_VERSION,
)

__all__ = [  # the ones not defined here come from the modules beside this one
    "CBOR",
    "CLOCK_SKEW_FLAG_MS",
    "CONTENT_ENCODINGS",
    "CONTENT_TYPES",
    "DEFAULT_CONTENT_ENCODING",
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_LEVEL",
    "INT64_MAX",
    "INT64_MIN",
    "JSON",
    "MAX_ALERTS",
    "MAX_AUTH_EVENTS",
    "MAX_BODY_BYTES",
    "MAX_COUNTERS",
    "MAX_DECODED_BYTES",
    "MAX_DEVICES",
    "MAX_EPOCHS",
    "MAX_READINGS",
    "MAX_SCALE",
    "MAX_STR",
    "MAX_VALUE_STR",
    "WIRE_VERSION",
    "AlertChange",
    "AuthEvent",
    "BatchAck",
    "ClockEpoch",
    "DeviceRecord",
    "ReadingClock",
    "ReadingColumns",
    "RuleField",
    "SyncBatch",
    "WireError",
    "batch_from_doc",
    "batch_id_for",
    "batch_to_doc",
    "compress",
    "decode_ack",
    "decode_batch",
    "decompress",
    "devices_digest",
    "encode_ack",
    "encode_batch",
    "reading_clocks",
    "rules_digest",
]


# -- encoding --------------------------------------------------------------------------------


def encode_batch(
    batch: SyncBatch,
    *,
    content_type: str = DEFAULT_CONTENT_TYPE,
    content_encoding: str = DEFAULT_CONTENT_ENCODING,
    level: int = DEFAULT_LEVEL,
) -> tuple[bytes, str, str]:
    """(body, Content-Type, Content-Encoding) for a batch; ValueError for an unsendable one."""
    doc = batch_to_doc(batch)
    if content_type == CBOR:
        raw = cbor2.dumps(doc)
    elif content_type == JSON:
        raw = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    else:
        raise ValueError(f"unknown content type {content_type!r}")
    return compress(raw, content_encoding, level), content_type, content_encoding


def compress(raw: bytes, content_encoding: str, level: int = DEFAULT_LEVEL) -> bytes:
    if content_encoding == "deflate":
        return zlib.compress(raw, level)
    if content_encoding == "gzip":
        # zlib's gzip container directly: gzip.compress stamps the time (not reproducible).
        c = zlib.compressobj(level, zlib.DEFLATED, 31)
        return c.compress(raw) + c.flush()
    if content_encoding == "identity":
        return raw
    raise ValueError(f"unknown content encoding {content_encoding!r}")


# -- decoding --------------------------------------------------------------------------------


def decompress(body: bytes, content_encoding: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    """Inflate a body, refusing to produce more than limit bytes (zip bombs)."""
    enc = (content_encoding or "identity").strip().lower()
    if enc == "identity":
        raw = body
    elif enc in ("deflate", "gzip"):
        # 47 = auto-detect zlib or gzip headers: some clients send gzip bytes as "deflate".
        d = zlib.decompressobj(31 if enc == "gzip" else 47)
        try:
            raw = d.decompress(body, limit + 1)
        except zlib.error as exc:
            raise WireError(f"body is not valid {enc} data: {exc}") from exc
        if len(raw) > limit or d.unconsumed_tail:
            raise WireError(f"decompressed body exceeds {limit} bytes")
        if not d.eof:
            raise WireError(f"truncated {enc} data")
        if d.unused_data:
            raise WireError(f"trailing bytes after the {enc} data")
    else:
        raise WireError(
            f"Content-Encoding {content_encoding!r} is not one of {', '.join(CONTENT_ENCODINGS)}",
            status=415,
        )
    if len(raw) > limit:
        raise WireError(f"body exceeds {limit} bytes")
    return raw


def _media_type(content_type: str) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_batch(body: bytes, content_type: str, content_encoding: str) -> SyncBatch:
    """A validated SyncBatch from a request body, or WireError."""
    media = _media_type(content_type)
    if media not in CONTENT_TYPES:
        raise WireError(
            f"Content-Type {content_type!r} is not one of {', '.join(CONTENT_TYPES)}", status=415
        )
    if len(body) > MAX_BODY_BYTES:
        raise WireError(f"body exceeds {MAX_BODY_BYTES} bytes")
    raw = decompress(body, content_encoding)
    doc = _parse(raw, media)
    return batch_from_doc(doc)


def _parse(raw: bytes, media: str) -> object:
    # The parsers raise a zoo of exceptions on hostile input (decode errors, recursion limits,
    # unhashable keys, bad UTF-8 ...); at this boundary every one of them means "malformed".
    try:
        if media == CBOR:
            return cbor2.loads(raw, max_depth=16)
        return json.loads(raw)
    except RecursionError as exc:
        raise WireError("body nests too deeply") from exc
    except Exception as exc:
        raise WireError(f"body is not valid {media}: {type(exc).__name__}") from exc


# -- acknowledgements ------------------------------------------------------------------------


def encode_ack(ack: BatchAck) -> bytes:
    return json.dumps(
        {
            "batch_id": ack.batch_id,
            "first_seq": ack.first_seq,
            "last_seq": ack.last_seq,
            "stored": ack.stored,
            "duplicates": ack.duplicates,
        },
        separators=(",", ":"),
    ).encode()


def decode_ack(body: bytes) -> BatchAck:
    """The cloud's acknowledgement, as the gateway reads it; WireError if malformed."""
    if len(body) > 64 * 1024:
        raise WireError("acknowledgement too large")
    doc = _parse(body, JSON)
    c = DocCheck()
    top = c.map_(doc, "")
    ack = BatchAck(
        batch_id=c.str_(top.get("batch_id"), "/batch_id", max_len=64),
        first_seq=c.int_(top, "first_seq", "/first_seq", lo=0),
        last_seq=c.int_(top, "last_seq", "/last_seq", lo=0),
        stored=c.int_(top, "stored", "/stored", lo=0),
        duplicates=c.int_(top, "duplicates", "/duplicates", lo=0),
    )
    c.raise_if_any()
    return ack
