"""The cloud tests' shared fixtures (defined in tests/support/cloud.py): a cloud store on a
temporary DuckDB file, its services on a manual clock, and an HTTP client of the app."""

from __future__ import annotations

import pytest

from tests.support.cloud import (
    client,
    clock,
    engine,
    outage,
    services,
    settings,
    sleeps,
    store,
)

__all__ = ["client", "clock", "engine", "outage", "services", "settings", "sleeps", "store"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`engine` (and so `settings` and `store`) once per engine the test's marker names."""
    if "engine" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("engines")
    names = marker.args if marker is not None else ("duckdb",)
    metafunc.parametrize("engine", names, indirect=True)
