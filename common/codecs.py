"""Telemetry payload codecs: bytes in, RawReadings out, PayloadError for anything else.

Pure: no I/O, no clock (the caller passes `now_ms` for SenML relative times). Whatever bytes a
device sends, the only exception that leaves `decode` is PayloadError, carrying its wire code
(400, 413 or 415) and a problem document with one FieldError per problem found.

Forms accepted (CONTRACT.md "Telemetry payloads"):
- application/json and application/cbor: a flat object `{"temperature": 21.5}` (no timestamp),
  `{"ts": ms, "values": {...}, "seq": n}`, or an array of either.
- application/senml+json and application/senml+cbor: RFC 8428 packs, with base name/time/value/sum
  and relative times. SenML times are seconds; readings carry int ms.

Paths in errors are JSON pointers into the payload ("/values/temp", "/2/ts", "/0/n"; "" is the
whole payload). The happy path builds no paths: `locate` re-walks a payload to say where each
reading came from, which validation needs only when it has something to report.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn

import cbor2

from common.model import FieldError, RawReading
from common.problem import Problem, ProblemError

MAX_LISTED_ERRORS = 100  # a 64 KiB payload can hold thousands of errors; the reply stays small


class ContentFormat(IntEnum):
    """Payload formats, numbered as CoAP Content-Format ids (RFC 7252 registry)."""

    JSON = 50
    CBOR = 60
    SENML_JSON = 110
    SENML_CBOR = 112

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]

    @classmethod
    def from_media_type(cls, value: str) -> ContentFormat:
        """HTTP Content-Type -> format; parameters such as "; charset=utf-8" are ignored."""
        bare = value.split(";", 1)[0].strip().lower()
        for fmt, media_type in _MEDIA_TYPES.items():
            if media_type == bare:
                return fmt
        raise PayloadError.unsupported_format(value)

    @classmethod
    def from_code(cls, code: int) -> ContentFormat:
        """CoAP Content-Format option -> format; unknown ids are a 4.15."""
        try:
            return cls(code)
        except ValueError:
            raise PayloadError.unsupported_format(f"CoAP content format {code}") from None


_MEDIA_TYPES: dict[ContentFormat, str] = {
    ContentFormat.JSON: "application/json",
    ContentFormat.CBOR: "application/cbor",
    ContentFormat.SENML_JSON: "application/senml+json",
    ContentFormat.SENML_CBOR: "application/senml+cbor",
}


_CBOR_FORMATS = (ContentFormat.CBOR, ContentFormat.SENML_CBOR)
_OBJECT_FORMATS = (ContentFormat.JSON, ContentFormat.CBOR)  # the others are SenML


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-message limits from the contract: 64 KiB, 1000 readings, 256-character strings."""

    max_bytes: int = 65536
    max_readings: int = 1000
    max_string: int = 256


DEFAULT_LIMITS = Limits()


class PayloadError(ProblemError):
    """A payload the gateway will not store; `status` is the HTTP code (CoAP 4.xx alike)."""

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def errors(self) -> Sequence[FieldError]:
        return self.problem.errors

    @classmethod
    def invalid(cls, errors: Sequence[FieldError], total: int | None = None) -> PayloadError:
        """400: `errors` lists what is wrong; `total` counts errors beyond those listed."""
        total = len(errors) if total is None else total
        listed = tuple(errors[:MAX_LISTED_ERRORS])
        detail = f"{total} error{'s' if total != 1 else ''} in the payload"
        if total > len(listed):
            detail += f"; the first {len(listed)} are listed"
        problem = Problem("invalid-payload", "Invalid telemetry payload", 400, detail, listed)
        return cls(problem)

    @classmethod
    def too_large(cls, detail: str) -> PayloadError:
        return cls(Problem("payload-too-large", "Telemetry payload too large", 413, detail))

    @classmethod
    def unsupported_format(cls, what: str) -> PayloadError:
        supported = ", ".join(_MEDIA_TYPES.values())
        detail = f"{what[:100]!r} is not supported; use one of {supported}"
        return cls(Problem("unsupported-content-format", "Unsupported content format", 415, detail))


@dataclass(frozen=True, slots=True)
class Source:
    """Where one decoded reading came from: JSON pointers to its name, value and time."""

    metric: str
    value: str
    ts: str


def decode(
    body: bytes, fmt: ContentFormat, limits: Limits = DEFAULT_LIMITS, *, now_ms: int
) -> list[RawReading]:
    """Decode one message; `now_ms` anchors SenML relative times (the gateway receive time)."""
    return _run(body, fmt, limits, now_ms, None).out


def locate(
    body: bytes, fmt: ContentFormat, limits: Limits = DEFAULT_LIMITS, *, now_ms: int
) -> list[Source]:
    """Where each reading `decode` returns came from, in the same order (for error paths)."""
    sources: list[Source] = []
    _run(body, fmt, limits, now_ms, sources)
    return sources


def pointer(prefix: str, key: object) -> str:
    """JSON pointer of `key` under `prefix` (RFC 6901 escaping of "~" and "/")."""
    text = str(key)
    if "~" in text or "/" in text:
        text = text.replace("~", "~0").replace("/", "~1")
    return f"{prefix}/{text[:80]}"


def parse(body: bytes, fmt: ContentFormat, limits: Limits = DEFAULT_LIMITS) -> object:
    """The document of one message, its size and syntax checked (decode_parsed walks it)."""
    if len(body) > limits.max_bytes:
        raise PayloadError.too_large(
            f"the payload is {len(body)} bytes; the limit is {limits.max_bytes}"
        )
    if not body:
        _fail("", "the payload is empty")
    return _parse_cbor(body) if fmt in _CBOR_FORMATS else _parse_json(body)


def decode_parsed(
    doc: object, fmt: ContentFormat, limits: Limits = DEFAULT_LIMITS, *, now_ms: int
) -> list[RawReading]:
    """decode() of a document parse() returned."""
    return _walk(doc, fmt, limits, now_ms, None).out


def _run(
    body: bytes, fmt: ContentFormat, limits: Limits, now_ms: int, sources: list[Source] | None
) -> _Walk:
    return _walk(parse(body, fmt, limits), fmt, limits, now_ms, sources)


def _walk(
    doc: object, fmt: ContentFormat, limits: Limits, now_ms: int, sources: list[Source] | None
) -> _Walk:
    cbor = fmt in _CBOR_FORMATS
    walk = _Walk(limits, now_ms, sources)
    if fmt in _OBJECT_FORMATS:
        walk.document(doc, "CBOR" if cbor else "JSON")
    else:
        walk.senml_pack(doc, cbor)
    if walk.errors:
        raise PayloadError.invalid(walk.errors, walk.error_count)
    return walk


def _fail(path: str, message: str) -> NoReturn:
    raise PayloadError.invalid([FieldError(path, message)])


# --- parsing -------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    """A JSON object naming a key twice: refused as CBOR's are (which value was meant?)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


# One decoder for every message: json.loads(bytes, object_pairs_hook=...) builds a decoder and
# detects the encoding per call, a third of the parse of a small message.
_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _parse_json(body: bytes) -> object:
    try:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = ""  # not UTF-8: json.loads tells UTF-16/32 apart, or says what is wrong
        if text and text[0] != "\ufeff":  # a BOM: json.loads(bytes) skips it
            return _JSON.decode(text)
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        _fail("", f"invalid JSON: duplicate key {str(exc)[:80]!r}")
    except RecursionError:
        _fail("", "invalid JSON: nested too deeply")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail("", f"invalid JSON: {str(exc)[:200]}")
    except ValueError:  # Python's limit on the digits of an int (CVE-2020-10735)
        _fail("", "invalid JSON: a number has too many digits")


class _TagRejected(Exception):
    """Raised from the cbor2 hooks: telemetry needs no CBOR tags."""


def _reject_tag(*_args: object) -> NoReturn:
    # Tags are refused rather than decoded: several of cbor2's built-in tag decoders do real
    # work on attacker-chosen input (bigfloats, regexes, shared references, dates).
    raise _TagRejected("CBOR tags are not supported")


# Tags with a built-in cbor2 decoder (probed on cbor2 6.3); any other tag reaches tag_hook.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
                 1004, 43000, 55799)  # fmt: skip
_NO_TAGS: Mapping[int, Any] = dict.fromkeys(_BUILTIN_TAGS, _reject_tag)
_CBOR_MAX_DEPTH = 16  # our deepest form is array > object > values > scalar


def _parse_cbor(body: bytes) -> object:
    stream = io.BytesIO(body)
    try:
        decoder = cbor2.CBORDecoder(
            stream,
            tag_hook=_reject_tag,
            semantic_decoders=_NO_TAGS,
            max_depth=_CBOR_MAX_DEPTH,
            allow_duplicate_keys=False,
        )
        doc = decoder.decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        if isinstance(exc.__cause__, _TagRejected):
            _fail("", "invalid CBOR: tags are not supported")
        _fail("", f"invalid CBOR: {str(exc)[:200]}")
    if stream.tell() != len(body):
        _fail("", f"invalid CBOR: {len(body) - stream.tell()} bytes after the first data item")
    return doc


# --- walking the decoded document -----------------------------------------------------------

_SCALARS = frozenset({int, float, bool, str})
_RESERVED = frozenset({"ts", "values", "seq"})
_MAX_SEQ = 2**63 - 1  # stored as BIGINT

# RFC 8428 section 6: CBOR integer labels.
_SENML_LABELS: dict[int, str] = {
    -1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
    0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd",
}  # fmt: skip
_SENML_VALUE_FIELDS = ("v", "vs", "vb", "vd")
_SENML_VERSION = 10  # RFC 8428's version; a pack of a later version must be rejected
_SENML_RELATIVE_BELOW = 2**28  # seconds: smaller resolved times are relative to "now"
_SENML_MAX_SECONDS = 1e15  # ~31 million years: far past any valid ts, still exact in ms


def _entry_problem(name: object, value: object, reserved: frozenset[str]) -> str:
    if type(value) not in _SCALARS:
        return _value_problem(value)
    if type(name) is not str:
        return "metric names must be strings"
    assert name in reserved  # the only other way to get here
    return f'"{name}" is reserved: send {{"ts": ms, "values": {{...}}}} to give a time'


def _value_problem(value: object) -> str:
    if value is None:
        return "value is missing (null)"
    if isinstance(value, dict):
        return "nested objects are not allowed as values"
    if isinstance(value, list):
        return "arrays are not allowed as values"
    return f"unsupported value type ({type(value).__name__})"


def _as_ms(value: object) -> int | None:
    """An integral ms timestamp (ints, or floats with no fraction), else None."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():  # False for inf and NaN
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    """A finite float from a JSON/CBOR number (not a bool), else None."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _device_prefix_stripped(base_name: str) -> str:
    """A SenML base name that identifies the device is not part of the metric name.

    RFC 8428 recommends base names like "urn:dev:mac:0024befffe804ff1:" (a device URN ending in
    ':' or '/'). The gateway knows the device from its credentials, so such a prefix is dropped
    and "temp" stays "temp"; a plain base name such as "env." still prefixes the metric.
    """
    if base_name.startswith("urn:") or base_name.endswith((":", "/")):
        return ""
    return base_name


class _Walk:
    """One pass over a decoded document, collecting readings and every error it meets."""

    def __init__(self, limits: Limits, now_ms: int, sources: list[Source] | None) -> None:
        self.limits = limits
        self.now_ms = now_ms
        self.sources = sources
        self.out: list[RawReading] = []
        self.errors: list[FieldError] = []
        self.error_count = 0

    def error(self, path: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(FieldError(path, message))

    def limit_readings(self, adding: int = 0) -> None:
        """Refuse (413) before building readings past the per-message limit."""
        if len(self.out) + adding > self.limits.max_readings:
            raise PayloadError.too_large(
                f"the payload holds more than {self.limits.max_readings} readings"
            )

    # JSON and CBOR object forms

    def document(self, doc: object, syntax: str) -> None:
        if type(doc) is dict:
            self.message(doc, "")
        elif type(doc) is list:
            for i, item in enumerate(doc):
                if type(item) is dict:
                    self.message(item, f"/{i}")
                else:
                    self.error(f"/{i}", "expected an object of metric values")
        else:
            self.error("", f"expected a {syntax} object or an array of objects")

    def message(self, obj: dict[Any, Any], prefix: str) -> None:
        if "values" in obj:
            self.timestamped(obj, prefix)
        else:
            self.values(obj, prefix, prefix, None, None, flat=True)

    def timestamped(self, obj: dict[Any, Any], prefix: str) -> None:
        for key in obj:
            if key not in _RESERVED:
                self.error(pointer(prefix, key), 'unknown field: expected "ts", "values", "seq"')
        ts = None
        if "ts" in obj:
            ts = _as_ms(obj["ts"])
            if ts is None:
                self.error(f"{prefix}/ts", "ts must be an integer (ms since the epoch)")
        seq = None
        if "seq" in obj:
            seq = obj["seq"]
            if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
                self.error(f"{prefix}/seq", "seq must be a non-negative 64-bit integer")
                seq = None
        values = obj["values"]
        if type(values) is dict:
            self.values(values, f"{prefix}/values", f"{prefix}/ts", ts, seq, flat=False)
        else:
            self.error(f"{prefix}/values", "values must be an object of metric values")

    def values(
        self,
        obj: dict[Any, Any],
        prefix: str,
        ts_path: str,
        ts: int | None,
        seq: int | None,
        *,
        flat: bool,  # a flat object has no ts, so a "ts" key there is a mistake
    ) -> None:
        self.limit_readings(len(obj))
        out, sources, scalars = self.out, self.sources, _SCALARS  # locals: this is the hot loop
        reserved = _RESERVED if flat else frozenset()
        for name, value in obj.items():
            if type(value) in scalars and type(name) is str and name not in reserved:
                out.append(RawReading(name, value, ts, seq))
                if sources is not None:
                    path = pointer(prefix, name)
                    sources.append(Source(path, path, ts_path))
            else:
                self.error(pointer(prefix, name), _entry_problem(name, value, reserved))

    # SenML (RFC 8428)

    def senml_pack(self, doc: object, cbor: bool) -> None:
        if type(doc) is not list:
            self.error("", "a SenML pack must be an array of records")
            return
        base = _SenmlBase()
        for i, record in enumerate(doc):
            if type(record) is not dict:
                self.error(f"/{i}", "a SenML record must be an object (map)")
                continue
            fields = _senml_names(record) if cbor else record
            self.senml_record(fields, f"/{i}", base)
        # Counted after the walk: records of base fields only yield no reading. The work done
        # first is bounded by max_bytes.
        self.limit_readings()

    def senml_record(self, rec: dict[Any, Any], path: str, base: _SenmlBase) -> None:
        errors_before = self.error_count
        self.senml_bases(rec, path, base)
        for key in rec:
            if type(key) is str and key.endswith("_"):
                self.error(pointer(path, key), f"must-understand field {key[:64]!r} not supported")
        name = rec.get("n", "")
        if type(name) is not str:
            self.error(f"{path}/n", "n must be a string")
        value_keys = [key for key in _SENML_VALUE_FIELDS if key in rec]
        if not value_keys and "s" not in rec:
            if "n" in rec:
                self.error(path, "record has no value (v, vs, vb, vd or s)")
            return  # a record of base fields only
        if len(value_keys) > 1:
            self.error(path, "a record must have only one of v, vs, vb, vd")
        value_key = value_keys[0] if value_keys else "s"
        value = self.senml_value(rec, path, value_key, base)
        ts = self.senml_time(rec, path, base)
        if self.error_count != errors_before:
            return
        full_name = _device_prefix_stripped(base.name) + str(name)
        if not full_name:
            self.error(f"{path}/n", "record has no name (n or bn)")
            return
        self.out.append(RawReading(full_name, value, ts))
        if self.sources is not None:
            name_path = f"{path}/n" if "n" in rec else base.name_path
            ts_path = f"{path}/t" if "t" in rec else base.time_path or path
            self.sources.append(Source(name_path, f"{path}/{value_key}", ts_path))

    # one branch per SenML base field (RFC 8428 section 4.5):
    def senml_bases(self, rec: dict[Any, Any], path: str, base: _SenmlBase) -> None:  # noqa: PLR0912
        # Base fields apply to this record and every later one until replaced (RFC 8428 4.1).
        if "bver" in rec:
            ver = rec["bver"]
            if type(ver) is not int or not 0 < ver <= _SENML_VERSION:
                self.error(f"{path}/bver", f"unsupported SenML version (up to {_SENML_VERSION})")
        if "bn" in rec:
            if type(rec["bn"]) is str:
                base.name, base.name_path = rec["bn"], f"{path}/bn"
            else:
                self.error(f"{path}/bn", "bn must be a string")
        for key in ("bt", "bv", "bs"):
            if key in rec:
                number = _as_float(rec[key])
                if number is None:
                    self.error(f"{path}/{key}", f"{key} must be a finite number")
                elif key == "bt":
                    base.time, base.time_path = number, f"{path}/bt"
                elif key == "bv":
                    base.value = number
                else:
                    base.sum = number
        for key in ("u", "bu"):
            if key in rec and type(rec[key]) is not str:
                self.error(f"{path}/{key}", f"{key} must be a string")

    def senml_value(self, rec: dict[Any, Any], path: str, key: str, base: _SenmlBase) -> object:
        raw = rec[key]
        if key in ("v", "s"):
            offset = base.value if key == "v" else base.sum
            if offset == 0.0 and type(raw) in (int, float):
                return raw  # no base to add: validation checks range and finiteness
            number = _as_float(raw)
            if number is None:
                self.error(f"{path}/{key}", f"{key} must be a finite number")
            return None if number is None else offset + number
        if key == "vs" and type(raw) is not str:
            self.error(f"{path}/vs", "vs must be a string")
        elif key == "vb" and type(raw) is not bool:
            self.error(f"{path}/vb", "vb must be a boolean")
        elif key == "vd":
            if type(raw) is bytes:  # CBOR carries data as bytes; JSON as base64url text
                return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
            if type(raw) is not str:
                self.error(f"{path}/vd", "vd must be base64url text (JSON) or bytes (CBOR)")
        return raw

    def senml_time(self, rec: dict[Any, Any], path: str, base: _SenmlBase) -> int | None:
        if "t" not in rec and base.time_path is None:
            return None  # no time at all: the gateway's receive time applies
        offset = 0.0
        if "t" in rec:
            number = _as_float(rec["t"])
            if number is None:
                self.error(f"{path}/t", "t must be a finite number (seconds)")
                return None
            offset = number
        seconds = base.time + offset
        if not abs(seconds) < _SENML_MAX_SECONDS:  # also catches inf; keeps * 1000 finite
            self.error(f"{path}/t", "time out of range")
            return None
        if seconds < _SENML_RELATIVE_BELOW:
            return self.now_ms + round(seconds * 1000)
        return round(seconds * 1000)


class _SenmlBase:
    """The base fields in force while walking a pack."""

    __slots__ = ("name", "name_path", "sum", "time", "time_path", "value")

    def __init__(self) -> None:
        self.name = ""
        self.name_path = ""
        self.time = 0.0
        self.time_path: str | None = None
        self.value = 0.0
        self.sum = 0.0


def _senml_names(record: dict[Any, Any]) -> dict[Any, Any]:
    """SenML CBOR integer labels -> the JSON names (unknown labels kept as they are)."""
    names: dict[Any, Any] = {}
    for key, value in record.items():
        names[_SENML_LABELS.get(key, key) if type(key) is int else key] = value
    return names
