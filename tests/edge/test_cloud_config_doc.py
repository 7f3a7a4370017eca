"""The cloud's configuration document is decoded into typed values before it is applied: a
document with a wrong field is refused whole, naming the field, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from edge.app.config import GatewayConfig
from edge.sync.cloud_config import CloudConfigError, parse_cloud_config
from tests.conftest import running

RULE = {"id": "r1", "version": 2, "metric": "t", "operator": ">", "threshold": 30}


def test_a_full_document_decodes() -> None:
    config = parse_cloud_config(
        {
            "version": 7,
            "rules": [RULE, {"id": "r0", "deleted": True}],
            "device_types": [{"name": "tank", "metrics": {}}],
            "revoked_devices": ["d9"],
            "alert_acks": ["a1"],
        },
        since=5,
    )
    assert config.version == 7
    assert [(r.id, r.version, r.metric) for r in config.rules] == [("r1", 2, "t")]
    assert config.deleted_rules == ("r0",)
    assert config.device_types == ({"name": "tank", "metrics": {}},)
    assert (config.revoked_devices, config.alert_acks) == (("d9",), ("a1",))


def test_an_empty_document_keeps_the_version_and_changes_nothing() -> None:
    config = parse_cloud_config({}, since=5)
    assert config.version == 5 and config.device_types is None
    assert not (config.rules or config.deleted_rules or config.revoked_devices)


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ([], "not an object"),
        ({"version": "7"}, "version"),
        ({"version": -1}, "version"),
        ({"rules": {"r1": RULE}}, "rules must be a list"),
        ({"rules": [{"version": 1}]}, "rules[0]"),
        ({"rules": [{**RULE, "version": "2"}]}, "rules[0].version"),
        ({"rules": [{**RULE, "operator": "~"}]}, "rules[0]: "),
        ({"revoked_devices": "d9"}, "revoked_devices"),
        ({"revoked_devices": [9]}, "revoked_devices"),
        ({"alert_acks": [None]}, "alert_acks"),
        ({"device_types": ["tank"]}, "device_types"),
    ],
)
def test_a_wrong_field_is_named(doc: Any, names: str) -> None:
    with pytest.raises(CloudConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        parse_cloud_config(doc, since=0)


async def test_a_refused_document_changes_nothing(gateway_config: GatewayConfig) -> None:
    async with running(gateway_config) as gw:
        await gw.add_device("c1", None)
        bad = {"version": 3, "rules": [RULE], "revoked_devices": ["c1", 5]}
        with pytest.raises(CloudConfigError):
            await gw.apply_cloud_config(0, bad)
        assert await gw.list_rules() == []
        assert [d["status"] for d in await gw.list_devices()] == ["active"]
