"""The sync wire form's fixed terms: its version, the media types and content encodings it
comes in (with the defaults the gateway sends, chosen in docs/decisions/sync-wire-format.md),
and the limits the cloud's decoder enforces. Constants only, so that the encoder, the decoder
and the checks share one definition of each without importing one another."""

from __future__ import annotations

from typing import Final

WIRE_VERSION: Final = 1
CBOR: Final = "application/cbor"
JSON: Final = "application/json"
CONTENT_TYPES: Final = (CBOR, JSON)
CONTENT_ENCODINGS: Final = ("deflate", "gzip", "identity")
DEFAULT_CONTENT_TYPE: Final = CBOR
DEFAULT_CONTENT_ENCODING: Final = "gzip"
DEFAULT_LEVEL: Final = 6

# Limits the decoder enforces. A batch of MAX_READINGS costs ~75 KB on the wire and ~0.5 MB
# serialised (decimal values); the decompressed cap bounds what a hostile (or broken) body
# can make us allocate.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_DECODED_BYTES: Final = 16 * 1024 * 1024
MAX_READINGS: Final = 50_000
MAX_ALERTS: Final = 10_000
MAX_AUTH_EVENTS: Final = 10_000
MAX_COUNTERS: Final = 1_000
MAX_EPOCHS: Final = 1_000
MAX_DEVICES: Final = 10_000
MAX_RULES: Final = 1_000  # a gateway's own rule list
MAX_RULE_FIELDS: Final = 32  # fields of one rule document (and items of a list field)
MAX_STR: Final = 256  # ids, names, reasons
MAX_VALUE_STR: Final = 4096  # string reading values
MAX_SCALE: Final = 6
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
EXACT_INT: Final = 2**53  # scaled integers beyond this would not round-trip through a float
