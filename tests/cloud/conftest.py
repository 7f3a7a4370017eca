"""The cloud tests' shared fixtures (defined in tests/support/cloud.py): a cloud store on a
temporary DuckDB file, its services on a manual clock, and an HTTP client of the app."""

from __future__ import annotations

from tests.support.cloud import client, clock, services, settings, sleeps, store

__all__ = ["client", "clock", "services", "settings", "sleeps", "store"]
