"""Device message -> accepted readings or a recorded rejection. Pure: no I/O, no clocks.

Every transport (MQTT, CoAP, HTTP) funnels through `classify`, so validation and
rejection records are the same whatever the wire.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from common.codecs import ContentFormat, Limits, PayloadError
from common.model import Reading
from common.problem import Problem
from common.validation import DeviceTypeSpec, ValidationPolicy, decode_and_validate, plain_json
from edge.storage.records import Rejection

_TS_VALUES_ARRAY = re.compile(rb'^\s*\[\s*\{\s*"(ts|values|seq)"')


def sniff_format(payload: bytes, content_type: str | None = None) -> ContentFormat:
    """The content format of a message from a transport without one (MQTT 3.x).

    MQTT 5's Content Type wins when present. Otherwise: CBOR items start with a byte >= 0x80
    (arrays and maps), JSON with ASCII; an array of records is SenML unless its first object
    starts with a key of the {"ts", "values"} form.
    """
    if content_type:
        return ContentFormat.from_media_type(content_type)
    stripped = payload.lstrip()
    if not stripped:
        return ContentFormat.JSON
    if stripped[0] >= 0x80:
        # A SenML CBOR pack is an array (0x80-0x9f) of maps (0xa0-0xbf) with integer labels.
        if 0x80 <= stripped[0] <= 0x9F and len(stripped) > 2 and 0xA0 <= stripped[1] <= 0xBF:
            return ContentFormat.SENML_CBOR if stripped[2] < 0x40 else ContentFormat.CBOR
        return ContentFormat.CBOR
    if stripped[:1] == b"[" and not _TS_VALUES_ARRAY.match(stripped):
        return ContentFormat.SENML_JSON
    return ContentFormat.JSON


UNKNOWN_DEVICE = Problem(
    slug="unknown-device",
    title="Unknown or revoked device",
    status=403,
    detail="this device is not registered at the gateway (or was revoked)",
)


@dataclass(slots=True)  # not frozen: one per message, and a frozen __init__ costs twice as much
class Outcome:
    readings: list[Reading]
    rejection: Rejection | None = None
    problem: Problem | None = None

    @property
    def accepted(self) -> bool:
        return self.rejection is None


class Classifier:
    """Holds what validation needs: device types per device and the policy."""

    def __init__(
        self,
        device_types: Mapping[str, DeviceTypeSpec],
        policy: ValidationPolicy,
        limits: Limits | None = None,
    ) -> None:
        self._local_types = dict(device_types)  # gateway.toml: wins over the cloud's
        self._types = dict(device_types)
        self._device_type: dict[str, str | None] = {}
        self._policy = policy
        self._limits = limits or Limits()

    def set_cloud_types(self, types: Mapping[str, DeviceTypeSpec]) -> None:
        """Replace the types defined in the cloud; a local type of the same name stays."""
        self._types = {**types, **self._local_types}

    def set_device_type(self, device_id: str, device_type: str | None) -> None:
        """Register an active device (and its type); only registered devices are accepted."""
        self._device_type[device_id] = device_type

    def forget(self, device_id: str) -> None:
        """A revoked device: its messages (e.g. still queued in an external broker) are refused."""
        self._device_type.pop(device_id, None)

    def device_type(self, device_id: str) -> str | None:
        return self._device_type.get(device_id)

    def classify(
        self,
        device_id: str,
        payload: bytes,
        content_type: str | ContentFormat | None,
        received_at_ms: int,
        transport: str,
    ) -> Outcome:
        """Classify one message; content_type None means sniff it (MQTT 3.x)."""
        if device_id not in self._device_type:
            # The managed broker admits registered devices only; an external broker may not.
            return rejected(device_id, payload, received_at_ms, transport, UNKNOWN_DEVICE)
        type_name = self._device_type[device_id]
        spec = self._types.get(type_name) if type_name else None
        try:
            fmt = (
                content_type
                if isinstance(content_type, ContentFormat)
                else sniff_format(payload, content_type)
            )
            readings = decode_and_validate(
                device_id,
                payload,
                fmt,
                received_at_ms=received_at_ms,
                spec=spec,
                policy=self._policy,
                limits=self._limits,
            )
        except PayloadError as exc:
            return rejected(device_id, payload, received_at_ms, transport, exc.problem)
        return Outcome(readings)

    def plain_json_run(
        self, device_id: str, payloads: Sequence[bytes], received_at_ms: int
    ) -> tuple[list[Reading], int]:
        """(the readings of the longest prefix of `payloads` that are plain JSON messages, how
        many messages that is): what classify() accepts of them through validation's shortcut,
        for a transport without content types (MQTT 3.1.1), with one lookup of the device for
        the whole run. The message that ends the run goes through classify()."""
        if device_id not in self._device_type:
            return [], 0
        type_name = self._device_type[device_id]
        spec = self._types.get(type_name) if type_name else None
        policy, limits = self._policy, self._limits
        out: list[Reading] = []
        n = 0
        for body in payloads:
            if len(body) > limits.max_bytes:
                break
            readings = plain_json(device_id, body, received_at_ms, spec, policy, limits)
            if readings is None:
                break
            out += readings
            n += 1
        return out, n


def rejected(device_id: str, payload: bytes, at: int, transport: str, problem: Problem) -> Outcome:
    """The outcome of a refused message: nothing stored but its rejection record."""
    rejection = Rejection(
        at=at,
        device_id=device_id,
        transport=transport,
        status=problem.status,
        title=problem.title,
        detail=problem.detail,
        errors=tuple(problem.errors),
        payload=payload,
    )
    return Outcome([], rejection, problem)
