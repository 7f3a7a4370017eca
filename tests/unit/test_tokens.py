"""Secrets shown to users must survive being pasted after a CLI option."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cloud.security.auth import new_opaque_token
from common import tokens
from edge.security.credentials import new_token
from firmware_stubs.mqtt_sim import DeviceCredentials


def test_a_token_starting_with_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: Iterator[str] = iter(["-NtPyD2D", "--x", "ok-token"])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda n: next(draws))
    assert tokens.new_cli_token() == "ok-token"


@pytest.mark.parametrize("make", [new_opaque_token, new_token])
def test_device_and_enrollment_tokens_never_start_with_dash(make: object) -> None:
    assert callable(make)
    drawn = [make() for _ in range(2000)]  # ~31 of 2000 would start with '-' unguarded
    assert not [t for t in drawn if t.startswith("-")]
    assert len(set(drawn)) == len(drawn)


@pytest.mark.parametrize("token", ["xAbc", "yAbc", "-Abc", "A"])
def test_a_simulator_bad_token_always_differs(token: str) -> None:
    wrong = DeviceCredentials("d1", token).wrong_token
    assert wrong != token and len(wrong) == len(token)
