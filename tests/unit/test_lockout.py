"""LockoutTracker: sliding window, per-user and per-address limits, cooldown, bounded memory;
and DeviceAuthenticator's steps on top of it (check, record_failure, record_success)."""

from __future__ import annotations

from typing import Literal

import pytest

from common.clock import ManualClock
from edge.security.device_auth import (
    Admitted,
    DeviceAuthenticator,
    DeviceDirectory,
    Refused,
    token_digest,
    token_key,
)
from edge.security.lockout import LockoutPolicy, LockoutTracker, address_bucket
from edge.storage.store import AuthFailure


def make(**policy: float) -> tuple[LockoutTracker, ManualClock]:
    clock = ManualClock()
    return LockoutTracker(LockoutPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_tenth_failure_locks_user_and_address_exactly_once() -> None:
    tracker, _ = make()
    for _ in range(9):
        assert tracker.record_failure("dev1", "10.0.0.5") == []
        assert not tracker.check("dev1", "10.0.0.5").locked
    assert tracker.record_failure("dev1", "10.0.0.5") == ["user:dev1@10.0.0.5", "addr:10.0.0.5"]
    decision = tracker.check("dev1", "10.0.0.5")
    assert decision.locked
    assert decision.retry_after_s == pytest.approx(300.0)
    # Further failures while locked (racing attempts) neither re-announce nor extend the lock.
    assert tracker.record_failure("dev1", "10.0.0.5") == []
    assert tracker.check("dev1", "10.0.0.5").retry_after_s == pytest.approx(300.0)


def test_lock_ends_after_cooldown_and_count_starts_from_zero() -> None:
    tracker, clock = make(cooldown_s=60, window_s=600, max_failures_per_address=100)
    for _ in range(10):
        tracker.record_failure("dev1", "10.0.0.5")
    clock.advance(59.5)
    decision = tracker.check("dev1", "10.0.0.5")
    assert decision.locked and decision.key == "user:dev1@10.0.0.5"
    assert decision.retry_after_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert not tracker.check("dev1", "10.0.0.5").locked
    # The failures that caused the lock are still inside the 600 s window, but must not count.
    assert tracker.record_failure("dev1", "10.0.0.5") == []
    assert not tracker.check("dev1", "10.0.0.5").locked


def test_failures_outside_the_window_do_not_count() -> None:
    tracker, clock = make(window_s=100)
    for _ in range(9):
        tracker.record_failure("dev1", None)
    clock.advance(100)
    assert tracker.record_failure("dev1", None) == []
    assert not tracker.check("dev1", None).locked


def test_address_lock_catches_username_rotation() -> None:
    tracker, _ = make(max_failures_per_address=5)
    locked: list[str] = []
    for i in range(5):
        locked += tracker.record_failure(f"guess{i}", "192.0.2.9")
    assert locked == ["addr:192.0.2.9"]
    # A fresh username from that address is refused; the same username elsewhere is not.
    assert tracker.check("fresh", "192.0.2.9").key == "addr:192.0.2.9"
    assert not tracker.check("fresh", "192.0.2.10").locked


def test_wrong_passwords_lock_the_attackers_address_not_the_device() -> None:
    """Found by an attack run: 10 wrong passwords for a device's id locked that device out
    from every address; five attacker addresses locked out five chosen devices."""
    tracker, _ = make(max_failures_per_address=1000)
    for _ in range(10):
        tracker.record_failure("dev1", "203.0.113.66")
    refused = tracker.check("dev1", "203.0.113.66")
    assert refused.locked and refused.key == "user:dev1@203.0.113.66"
    assert not tracker.check("dev1", "10.0.0.5").locked  # the device, from its own address


def test_the_identitys_own_lock_refuses_only_addresses_that_failed_for_it() -> None:
    tracker, _ = make(max_failures_per_user=2, max_failures_per_address=1000)
    locked: list[str] = []
    for i in range(10):  # a slow spray: one guess from each of 10 addresses (limit 2 x 5)
        locked += tracker.record_failure("dev1", f"192.0.2.{i}")
    assert locked == ["user:dev1"]
    decision = tracker.check("dev1", "192.0.2.3")
    assert decision.locked and decision.key == "user:dev1"
    assert not tracker.check("dev1", "198.51.100.1").locked  # the right secret, a clean address


def test_check_reports_the_longest_remaining_lock() -> None:
    tracker, clock = make(max_failures_per_user=2, max_failures_per_address=4)
    tracker.record_failure("a", "192.0.2.1")
    tracker.record_failure("a", "192.0.2.1")  # user:a locked at t=0
    clock.advance(10)
    tracker.record_failure("b", "192.0.2.1")
    tracker.record_failure("b", "192.0.2.1")  # addr locked at t=10 (4th failure), user:b too
    decision = tracker.check("a", "192.0.2.1")
    assert decision.key == "addr:192.0.2.1"
    assert decision.retry_after_s == pytest.approx(300.0)


def test_success_clears_the_users_failures_but_not_the_addresss() -> None:
    tracker, _ = make(max_failures_per_user=3, max_failures_per_address=3)
    tracker.record_failure("dev1", "10.0.0.1")
    tracker.record_failure("dev1", "10.0.0.1")
    tracker.record_success("dev1", "10.0.0.1")
    assert tracker.record_failure("dev1", "10.0.0.2") == []  # user count restarted at 1
    assert tracker.record_failure("other", "10.0.0.1") == ["addr:10.0.0.1"]


def test_success_does_not_lift_a_lock() -> None:
    tracker, _ = make(max_failures_per_user=1)
    tracker.record_failure("dev1", "10.0.0.1")
    tracker.record_success("dev1", "10.0.0.1")
    assert tracker.check("dev1", "10.0.0.1").locked


def test_missing_username_counts_only_the_address() -> None:
    tracker, _ = make(max_failures_per_address=2)
    assert tracker.record_failure(None, "10.0.0.1") == []
    assert tracker.record_failure(None, "10.0.0.1") == ["addr:10.0.0.1"]
    assert tracker.tracked_keys == 1


def test_memory_is_bounded_and_oldest_keys_are_evicted() -> None:
    tracker, _ = make(max_tracked_keys=100, max_failures_per_user=2)
    tracker.record_failure("victim", "10.0.0.1")
    tracker.record_failure("victim", "10.0.0.1")  # three keys: the pair, the address, the id
    assert tracker.check("victim", "10.0.0.1").locked
    for i in range(150):
        tracker.record_failure(f"u{i}", None)
    assert tracker.tracked_keys == 100
    assert tracker.evictions == 53
    # The least recently changed key went first: here the lock (documented trade-off).
    assert not tracker.check("victim", "10.0.0.1").locked


def test_stale_keys_are_dropped_without_hitting_the_cap() -> None:
    tracker, clock = make(window_s=10, cooldown_s=20)
    for i in range(50):
        tracker.record_failure(f"u{i}", None)
    clock.advance(11)
    tracker.record_failure("late", None)
    assert tracker.tracked_keys == 1
    assert tracker.evictions == 0


def test_a_lock_is_not_dropped_as_stale_before_its_cooldown() -> None:
    tracker, clock = make(window_s=10, cooldown_s=100, max_failures_per_user=1)
    tracker.record_failure("dev1", "10.0.0.1")
    clock.advance(50)
    tracker.record_failure("other", None)
    assert tracker.check("dev1", "10.0.0.1").locked


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_bucket(address: str, bucket: str) -> None:
    assert address_bucket(address) == bucket


def test_ipv6_hosts_in_one_prefix_share_a_count() -> None:
    tracker, _ = make(max_failures_per_address=2)
    tracker.record_failure(None, "2001:db8::1")
    assert tracker.record_failure(None, "2001:db8::2") == ["addr:2001:db8::/64"]
    assert tracker.check(None, "2001:db8::ffff").locked


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LockoutPolicy(max_failures_per_user=0)
    with pytest.raises(ValueError):
        LockoutPolicy(cooldown_s=0)


# -- DeviceAuthenticator ---------------------------------------------------------------------------


class Auth:
    """A DeviceAuthenticator over a manual clock, recording what reaches its audit sink."""

    def __init__(self, transport: Literal["coap", "http"] = "coap", **policy: float) -> None:
        self.clock = ManualClock()
        self.tracker = LockoutTracker(LockoutPolicy(**policy), self.clock)  # type: ignore[arg-type]
        self.directory = DeviceDirectory()
        self.events: list[tuple[AuthFailure, str | None]] = []
        self.auth = DeviceAuthenticator(
            self.directory, self.tracker, self.clock, self._sink, transport
        )

    def _sink(self, failure: AuthFailure, locked: str | None) -> None:
        self.events.append((failure, locked))

    def reasons(self) -> list[tuple[str, str]]:
        return [(f.kind, f.reason) for f, _ in self.events]


def test_record_failure_audits_counts_and_locks_key_and_address() -> None:
    a = Auth(max_failures_per_user=3, max_failures_per_address=5)
    for _ in range(3):
        assert a.auth.check("oscore:0a0b", "10.0.0.1") is None
        a.auth.record_failure("oscore:0a0b", "10.0.0.1", "replay")
    assert a.reasons() == [("auth_failure", "replay (oscore:0a0b)")] * 3 + [
        ("lockout", "too_many_failures (user:oscore:0a0b@10.0.0.1)")
    ]
    failure, locked = a.events[-1]
    assert locked == "user:oscore:0a0b@10.0.0.1"  # the gateway raises security.lockout for it
    assert (failure.transport, failure.address, failure.username) == (
        "coap",
        "10.0.0.1",
        "oscore:0a0b",
    )
    assert a.auth.stats.failures == {"replay": 3} and a.auth.stats.lockouts == 1
    # locked: 429 with whole seconds to wait, from that address; the refusal is audited once
    refused = a.auth.check("oscore:0a0b", "10.0.0.1")
    assert isinstance(refused, Refused)
    assert refused.problem.status == 429 and refused.retry_after_s == 300
    a.clock.advance(0.5)
    assert a.auth.check("oscore:0a0b", "10.0.0.1") is not None
    assert a.reasons()[4:] == [("auth_failure", "locked_out (user:oscore:0a0b@10.0.0.1)")]
    assert a.auth.stats.locked_out == 2
    assert a.auth.check("oscore:0a0b", "10.0.0.2") is None  # from another address: not locked
    # another kid from the first address is not locked (a UDP address is never locked)
    assert a.auth.check("oscore:0c0d", "10.0.0.1") is None
    a.clock.advance(300)
    assert a.auth.check("oscore:0a0b", "10.0.0.1") is None


def test_forged_udp_sources_lock_nothing() -> None:
    """Found by an attack run: 12 bad-token CoAP POSTs forged from 127.0.0.77 locked that
    address out on MQTT, HTTP and CoAP for 300 s. A UDP source proves nothing."""
    a = Auth("coap", max_failures_per_address=2)
    for i in range(12):
        a.auth.record_failure(f"token:{i:04x}", "127.0.0.77", "bad_token")
        a.auth.record_failure(None, "127.0.0.77", "decode_error")
    assert a.auth.stats.lockouts == 0
    assert a.tracker.check("dev1", "127.0.0.77").locked is False  # MQTT and HTTP from there
    a.directory.add_with_token("d1", None, "good-token")
    assert isinstance(a.auth.admit("good-token", "127.0.0.77"), Admitted)


def test_record_failure_without_a_key_counts_the_address() -> None:
    a = Auth("http", max_failures_per_address=2)
    a.auth.record_failure(None, "10.0.0.1", "decode_error")
    a.auth.record_failure(None, "10.0.0.1", "decode_error")
    assert a.reasons() == [
        ("auth_failure", "decode_error"),
        ("auth_failure", "decode_error"),
        ("lockout", "too_many_failures (addr:10.0.0.1)"),
    ]
    # the address is locked for every key, a token from there too
    refused = a.auth.check("oscore:0a0b", "10.0.0.1")
    assert refused is not None and refused.retry_after_s == 300
    a.directory.add_with_token("d1", None, "good-token")
    assert isinstance(a.auth.admit("good-token", "10.0.0.1"), Refused)


def test_record_success_restarts_the_keys_count_and_is_counted() -> None:
    a = Auth(max_failures_per_user=2, max_failures_per_address=100)
    a.auth.record_failure("oscore:0a0b", "10.0.0.1", "decrypt_failed")
    a.auth.record_success("oscore:0a0b", "10.0.0.1")
    a.auth.record_failure("oscore:0a0b", "10.0.0.1", "decrypt_failed")
    assert a.auth.check("oscore:0a0b", "10.0.0.1") is None  # 1 failure since the success
    assert a.auth.stats.admitted == 1 and a.auth.stats.lockouts == 0
    a.auth.record_failure("oscore:0a0b", "10.0.0.1", "decrypt_failed")
    a.auth.record_success("oscore:0a0b", "10.0.0.1")
    assert a.auth.check("oscore:0a0b", "10.0.0.1") is not None  # a success lifts no lock


def test_admit_goes_through_the_same_steps() -> None:
    a = Auth(max_failures_per_user=2, max_failures_per_address=100)
    a.directory.add_with_token("d1", "thermo", "good-token")
    key = token_key(token_digest("wrong"))
    for _ in range(2):
        refused = a.auth.admit("wrong", "10.0.0.1")
        assert isinstance(refused, Refused) and refused.problem.status == 401
    assert a.reasons() == [("auth_failure", f"bad_token ({key})")] * 2 + [
        ("lockout", f"too_many_failures (user:{key}@10.0.0.1)")
    ]
    assert a.auth.stats.bad_token == 2 and a.auth.stats.failures == {"bad_token": 2}
    locked = a.auth.admit("wrong", "10.0.0.1")
    assert isinstance(locked, Refused) and locked.problem.status == 429
    assert locked.retry_after_s == 300
    admitted = a.auth.admit("good-token", "10.0.0.1")
    assert isinstance(admitted, Admitted) and admitted.device.device_id == "d1"
    assert a.auth.stats.admitted == 1 and a.auth.stats.locked_out == 1
    # check() sees the lock admit() set, from that address only
    assert a.auth.check(key, "10.0.0.1") is not None
    assert a.auth.check(key, "10.0.0.9") is None


def test_locks_survive_a_restart_as_wall_clock_times_and_never_grow() -> None:
    clock = ManualClock()
    tracker = LockoutTracker(LockoutPolicy(max_failures_per_address=1, cooldown_s=300), clock)
    tracker.record_failure(None, "10.0.0.9")
    saved = tracker.locks_until(now_ms=1_000_000)
    assert saved == {"addr:10.0.0.9": 1_300_000}
    later = LockoutTracker(LockoutPolicy(cooldown_s=300), ManualClock())
    # restarted 100 s later: 200 s left; a tampered far-future time is capped at the cooldown
    assert later.restore({**saved, "addr:10.0.0.8": 10**15, "addr:old": 0}, 1_100_000) == 2
    left = dict(later.locked_keys())
    assert left["addr:10.0.0.9"] == pytest.approx(200) and left["addr:10.0.0.8"] == 300
    assert later.check(None, "10.0.0.9").locked and not later.check(None, "10.0.0.7").locked
