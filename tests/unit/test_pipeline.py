"""The gateway's message classifier: format sniffing, device registry, rejection records."""

from __future__ import annotations

import cbor2

from common.codecs import ContentFormat
from common.validation import ValidationPolicy, device_type_from_dict
from edge.ingest.classify import Classifier, sniff_format

NOW = 1_764_300_000_000
THERMO = device_type_from_dict(
    {"name": "thermo", "metrics": {"temperature": {"type": "number", "min": -40, "max": 85}}}
)


def test_sniff_format() -> None:
    assert sniff_format(b'{"t": 1}') is ContentFormat.JSON
    assert sniff_format(b' [{"ts": 1, "values": {"t": 1}}]') is ContentFormat.JSON
    assert sniff_format(b'[{"n": "t", "v": 1}]') is ContentFormat.SENML_JSON
    assert sniff_format(cbor2.dumps({"t": 1})) is ContentFormat.CBOR
    assert sniff_format(cbor2.dumps([{0: "t", 2: 1.0}])) is ContentFormat.SENML_CBOR
    assert sniff_format(b"x", "application/senml+json") is ContentFormat.SENML_JSON


def test_registered_devices_only_and_type_checks() -> None:
    c = Classifier({"thermo": THERMO}, ValidationPolicy())
    unknown = c.classify("ghost", b'{"temperature": 20}', None, NOW, "mqtt")
    assert not unknown.accepted and unknown.problem is not None
    assert unknown.problem.status == 403 and unknown.rejection is not None
    assert unknown.rejection.digest and unknown.rejection.device_id == "ghost"

    c.set_device_type("t1", "thermo")
    ok = c.classify("t1", b'{"temperature": 20}', None, NOW, "mqtt")
    assert ok.accepted and [r.value for r in ok.readings] == [20.0]
    hot = c.classify("t1", b'{"temperature": 120}', None, NOW, "mqtt")
    assert hot.problem is not None and hot.problem.status == 400
    assert "120" in hot.problem.errors[0].message

    c.forget("t1")
    assert not c.classify("t1", b'{"temperature": 20}', None, NOW, "mqtt").accepted
