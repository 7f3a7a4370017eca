"""Device ids are whole-string matches: a trailing newline is not part of a valid id."""

from __future__ import annotations

import pytest

from edge.security.credentials import valid_device_id


@pytest.mark.parametrize("device_id", ["dev-1", "a", "x" * 64, "A.b_c-9"])
def test_valid_ids(device_id: str) -> None:
    assert valid_device_id(device_id)


@pytest.mark.parametrize("device_id", ["nl\n", "", "x" * 65, "a/b", "a b", "dev\n1", "é"])
def test_invalid_ids(device_id: str) -> None:
    assert not valid_device_id(device_id)
