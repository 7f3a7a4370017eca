"""Pure pieces of the cloud: bucket parsing, device status, login limiter, metrics, retries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloud.api.views import (
    BUCKET_PATTERN,
    MAX_BUCKET_MS,
    BadQuery,
    device_status,
    parse_bucket,
    time_range,
)
from cloud.app.metrics import Registry
from cloud.app.settings import LoginLimits
from cloud.security.auth import load_or_create_secret
from cloud.security.store import wait_s
from cloud.storage.errors import StoreError, StoreUnavailable
from cloud.storage.retry import with_store_retries
from tests.support.cloud import RecordingSleep


@pytest.mark.parametrize(
    ("text", "ms"),
    [("300", 300_000), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000),
     ("1500ms", 1500)],
)  # fmt: skip
def test_parse_bucket(text: str, ms: int) -> None:
    assert parse_bucket(text) == ms


@pytest.mark.parametrize("text", ["", "5x", "-5m", "0", "500ms", "m5", "1.5h"])
def test_parse_bucket_rejects(text: str) -> None:
    with pytest.raises(BadQuery):
        parse_bucket(text)


def test_time_range_defaults_and_order() -> None:
    assert time_range(10_000_000_000, None, None) == (10_000_000_000 - 86_400_000, 10_000_000_000)
    assert time_range(0, 5, 10) == (5, 10)
    # from not before to: an empty range (the schema cannot order two query parameters)
    assert time_range(0, 10, 10) == (10, 10)


@pytest.mark.parametrize("text", ["300", "30s", "5m", "1h", "1d", "1500ms", "0001s", "1000ms"])
def test_bucket_pattern_admits_what_parse_bucket_takes(text: str) -> None:
    assert re.fullmatch(BUCKET_PATTERN, text) and parse_bucket(text) >= 1000


@pytest.mark.parametrize("text", ["", "5x", "0", "00s", "999ms", " 5m", "5m ", "5m\n", "1.5h"])
def test_bucket_pattern_refuses_what_parse_bucket_refuses(text: str) -> None:
    assert not re.fullmatch(BUCKET_PATTERN, text)
    with pytest.raises(BadQuery):
        parse_bucket(text)


def test_a_huge_bucket_is_one_bucket() -> None:
    assert parse_bucket("9999999999999999d") == MAX_BUCKET_MS


def test_device_status_threshold() -> None:
    assert device_status(None, 1000, 60) == "offline"
    assert device_status(1000, 61_000, 60) == "online"
    assert device_status(1000, 61_001, 60) == "offline"


def test_failure_window_sliding() -> None:
    limits = LoginLimits(max_failures=3, window_s=60)
    assert wait_s([0, 10_000], 20_000, limits) is None  # two of three allowed
    assert wait_s([20_000, 0, 10_000], 30_000, limits) == pytest.approx(30)  # 0 leaves at 60 s
    assert wait_s([0, 10_000, 20_000, 55_000], 60_000, limits) == pytest.approx(10)


def test_metrics_exposition() -> None:
    reg = Registry()
    c = reg.counter("reqs_total", "requests", ("route",))
    c.inc('/a"b')
    c.inc('/a"b')
    h = reg.histogram("lat_seconds", "latency")
    h.observe(0.003)
    h.observe(3)
    text = reg.render()
    assert '# TYPE reqs_total counter\nreqs_total{route="/a\\"b"} 2\n' in text
    assert 'lat_seconds_bucket{le="0.005"} 1' in text
    assert 'lat_seconds_bucket{le="2.5"} 1' in text
    assert 'lat_seconds_bucket{le="+Inf"} 2' in text
    assert "lat_seconds_count 2" in text
    assert reg.counter("reqs_total", "again") is c


async def test_retries_then_gives_up() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise StoreError("boom")
        return 42

    sleep = RecordingSleep()
    assert await with_store_retries("q", flaky, attempts=3, backoff_s=0.1, sleep=sleep) == 42
    assert sleep.delays == [0.1, 0.2]
    calls = -10
    with pytest.raises(StoreUnavailable, match="failed 3 times"):
        await with_store_retries("q", flaky, attempts=3, backoff_s=0.1, sleep=sleep)
    assert calls == -7


def test_secret_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "d" / "cloud_jwt.key"
    key = load_or_create_secret(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == key
