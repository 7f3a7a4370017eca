"""schemathesis against /openapi.json with a valid token: no 5xx, every answer matches the
documented schema, status codes and content types (problem+json for errors)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cloud.app import create_app
from cloud.services import build_services, open_duckdb_store
from cloud.settings import CloudSettings
from cloud.store import NewAlert, Role
from common.clock import ManualClock
from tests.cloud_support import T0, add_user, reading


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    data_dir: Path = tmp_path_factory.mktemp("cloud-schema")
    cfg = CloudSettings(data_dir=data_dir)
    store = open_duckdb_store(cfg)
    services = build_services(cfg, store, ManualClock(T0))

    async def seed() -> str:
        user = await add_user(store, "admin@example.com", Role.ADMIN)
        await store.insert_readings(user.org_id, "gw", [reading("d1", "temp", T0 - 1000, 1.5)], T0)
        await store.create_alert(user.org_id, NewAlert(None, "info", "temp", 1.5, T0, "d1"))
        from cloud.auth import Principal

        return services.tokens.issue(Principal(user.id, user.org_id, Role.ADMIN))

    token = asyncio.run(seed())
    yield create_app(services), token
    store.close()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_api_conforms_to_its_schema(api: tuple[Any, str]) -> None:
    # Driven by hand (operation strategies + hypothesis) rather than schemathesis' pytest
    # plugin, whose parametrize() breaks on pytest 9 ("'Function' object has no attribute
    # '_nodeid'").
    app, token = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {token}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid schema fails here
        tested.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        check()
    assert "GET /api/dashboard" in tested and "POST /api/auth/login" in tested
