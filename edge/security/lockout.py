"""Lockout after repeated authentication failures (pure: no I/O, time from an injected Clock).

Failures are counted per key in a sliding window; a key that reaches its limit is locked for a
cooling period and its count starts again from zero when the lock ends. Keys are chosen so that
an attacker can slow only themselves down, never lock a device or a neighbour out:

- "user:<name>@<address>": the claimed identity from one source. Ten wrong passwords for a
  device from the attacker's address lock that pair; the device, connecting from its own
  address, is not affected.
- "addr:<address>": the source, counted only where the source is proven (TCP after its
  handshake). A UDP source can be forged: CoAP failures never lock an address, or anyone could
  lock a site out with spoofed datagrams.
- "user:<name>": the identity from anywhere, at GLOBAL_FACTOR x the per-pair limit (a slow guess
  from many addresses). Its lock refuses the identity only from addresses that have failed for
  it themselves: the right secret from an address with no failures always gets through.

The identity is whatever the protocol claims (MQTT username, a device id, or a digest of a
bearer token; never a raw secret, since keys end up in alerts), so CoAP and HTTP ingress can use
the same tracker.

Lifecycle of one key (the "device active -> locked out" edge of the device state table):
    counting --(failures in window >= limit)--> locked --(cooldown elapsed)--> counting (from 0)
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from common.clock import Clock

USER_PREFIX = "user:"
ADDR_PREFIX = "addr:"
GLOBAL_FACTOR = 5  # the identity's limit from all addresses together, in per-pair limits


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    max_failures_per_user: int = 10
    max_failures_per_address: int = 10
    window_s: float = 300.0
    cooldown_s: float = 300.0
    # Bounds memory under a flood of distinct usernames/addresses: each key costs a few hundred
    # bytes (its deque holds at most max_failures timestamps), so 50k keys stay around 20 MB.
    max_tracked_keys: int = 50_000
    # An IPv6 host controls a whole /64, so per-address counting over single addresses would be
    # trivially evaded; count per prefix instead.
    ipv6_prefix: int = 64

    def __post_init__(self) -> None:
        if self.max_failures_per_user < 1 or self.max_failures_per_address < 1:
            raise ValueError("failure limits must be >= 1")
        if self.window_s <= 0 or self.cooldown_s <= 0:
            raise ValueError("window_s and cooldown_s must be > 0")
        if self.max_tracked_keys < 2:
            raise ValueError("max_tracked_keys must be >= 2")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be within 0..128")


@dataclass(frozen=True, slots=True)
class LockoutDecision:
    locked: bool
    retry_after_s: float = 0.0
    key: str | None = None  # the locked key with the longest remaining cooldown


@dataclass(slots=True)
class _KeyState:
    failures: deque[float] = field(default_factory=deque)  # monotonic times, oldest first
    locked_until: float = 0.0


# Every CoAP and HTTP request is checked: parsing the address each time was a tenth of the event
# loop at 1,300 requests/s. The cache is bounded; a flood of forged addresses only evicts.
@functools.lru_cache(maxsize=8192)
def address_bucket(address: str, ipv6_prefix: int = 64) -> str:
    """The unit an address is counted in: the IPv4 address itself, or the IPv6 prefix.

    IPv4-mapped IPv6 ("::ffff:10.0.0.1", seen on dual-stack listeners) counts as its IPv4
    address, so one host is one key whichever socket family accepted it. Anything that is not
    an IP address (a Unix socket path, "unknown") is used verbatim.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ipv6_prefix < 128:
            return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


class LockoutTracker:
    """Counts failures per key and answers whether an attempt must be refused.

    Keys are kept in order of their last change, which is also the order in which they become
    stale (all keys share one window and cooldown), so stale ones are dropped from the front in
    amortised O(1). When max_tracked_keys is reached the least recently changed key is evicted
    (counted in `evictions`); evicting a lock needs max_tracked_keys newer failing keys, a flood
    that itself locks the flooding addresses.
    """

    def __init__(self, policy: LockoutPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()
        self.evictions = 0

    @property
    def policy(self) -> LockoutPolicy:
        return self._policy

    @property
    def tracked_keys(self) -> int:
        return len(self._keys)

    def keys_for(
        self, username: str | None, address: str | None, *, proven: bool = True
    ) -> list[tuple[str, int]]:
        """(key, failure limit) pairs an attempt's failure counts towards: the identity from
        this address, the address (when proven), the identity from anywhere."""
        policy = self._policy
        keys: list[tuple[str, int]] = []
        bucket = None if address is None else address_bucket(address, policy.ipv6_prefix)
        if username is not None and bucket is not None:
            keys.append((f"{USER_PREFIX}{username}@{bucket}", policy.max_failures_per_user))
        if bucket is not None and proven:
            keys.append((ADDR_PREFIX + bucket, policy.max_failures_per_address))
        if username is not None:
            keys.append((USER_PREFIX + username, policy.max_failures_per_user * GLOBAL_FACTOR))
        return keys

    def check(self, username: str | None, address: str | None) -> LockoutDecision:
        """Whether to refuse this attempt now. The identity's own (global) lock refuses it only
        from an address that has failed for it: never the right secret from a clean one."""
        now = self._clock.monotonic()
        decision = LockoutDecision(locked=False)
        policy = self._policy
        bucket = None if address is None else address_bucket(address, policy.ipv6_prefix)
        candidates: list[str] = []
        pair = None
        if username is not None and bucket is not None:
            pair = f"{USER_PREFIX}{username}@{bucket}"
            candidates.append(pair)
        if bucket is not None:
            candidates.append(ADDR_PREFIX + bucket)  # counted only when proven, so forged
            # sources cannot have locked it; a locked one refuses whatever the transport
        if username is not None:
            pair_state = self._keys.get(pair) if pair is not None else None
            if pair is None or (
                pair_state is not None and (pair_state.failures or pair_state.locked_until > now)
            ):
                candidates.append(USER_PREFIX + username)
        for key in candidates:
            state = self._keys.get(key)
            if state is None or state.locked_until <= now:
                continue
            retry_after = state.locked_until - now
            if retry_after > decision.retry_after_s:
                decision = LockoutDecision(locked=True, retry_after_s=retry_after, key=key)
        return decision

    def record_failure(
        self, username: str | None, address: str | None, *, proven: bool = True
    ) -> list[str]:
        """Count one failure; return the keys that this failure locked (each exactly once).
        `proven`: the source address is the sender's (TCP), not a claim (UDP)."""
        now = self._clock.monotonic()
        self._drop_stale(now)
        newly_locked: list[str] = []
        horizon = now - self._policy.window_s
        for key, limit in self.keys_for(username, address, proven=proven):
            state = self._keys.get(key)
            if state is None:
                state = self._insert(key)
            elif state.locked_until > now:
                # Already locked (an attempt that passed check() before the lock was set).
                # Not extending the lock keeps "until the cooling period ends" true.
                continue
            failures = state.failures
            while failures and failures[0] <= horizon:
                failures.popleft()
            failures.append(now)
            self._keys.move_to_end(key)
            if len(failures) >= limit:
                state.locked_until = now + self._policy.cooldown_s
                # After the cooldown the key starts from zero rather than being re-locked by
                # the very failures that locked it (matters when cooldown < window).
                failures.clear()
                newly_locked.append(key)
        return newly_locked

    def record_success(self, username: str | None, address: str | None) -> None:
        """A successful login clears the identity's failures from this address (not the
        address's: one good device behind a NAT must not launder a guesser's count, nor the
        identity's from everywhere). A lock is never lifted here."""
        if username is None or address is None:
            return
        key = f"{USER_PREFIX}{username}@{address_bucket(address, self._policy.ipv6_prefix)}"
        state = self._keys.get(key)
        if state is None:
            return
        if state.locked_until > self._clock.monotonic():
            state.failures.clear()
        else:
            del self._keys[key]

    def locked_keys(self) -> list[tuple[str, float]]:
        """(key, seconds until its lock ends) for every key locked now, longest first: what
        the local status page shows an installer. O(tracked keys); called per page poll."""
        now = self._clock.monotonic()
        locked = [
            (k, st.locked_until - now) for k, st in self._keys.items() if st.locked_until > now
        ]
        return sorted(locked, key=lambda item: -item[1])

    def locks_until(self, now_ms: int) -> dict[str, int]:
        """Every lock in force as {key: wall-clock ms when it ends}: what survives a restart
        (the monotonic clock does not)."""
        return {key: now_ms + int(remaining * 1000) for key, remaining in self.locked_keys()}

    def restore(self, locks: dict[str, int], now_ms: int) -> int:
        """Re-impose locks saved by locks_until before a restart; returns how many still hold.
        A lock never ends later than its cooldown allows, whatever the saved time says."""
        now = self._clock.monotonic()
        restored = 0
        for key, until_ms in locks.items():
            remaining = min((until_ms - now_ms) / 1000, self._policy.cooldown_s)
            if remaining <= 0 or not isinstance(key, str):
                continue
            state = self._keys.get(key) or self._insert(key)
            state.locked_until = max(state.locked_until, now + remaining)
            self._keys.move_to_end(key)
            restored += 1
        return restored

    def _insert(self, key: str) -> _KeyState:
        while len(self._keys) >= self._policy.max_tracked_keys:
            self._keys.popitem(last=False)
            self.evictions += 1
        state = _KeyState()
        self._keys[key] = state
        return state

    def _drop_stale(self, now: float) -> None:
        horizon = now - self._policy.window_s
        while self._keys:
            state = next(iter(self._keys.values()))
            if state.locked_until > now or (state.failures and state.failures[-1] > horizon):
                return
            self._keys.popitem(last=False)
