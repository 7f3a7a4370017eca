"""Local alerting: evaluates rules on every committed batch and on a timer; owns alert episodes.

The rule engine (common.rules) is pure; this actor turns its transitions into stored alerts
(one per episode, lifecycle in common.alerts) and persists the engine's state so an episode
survives a restart without being raised twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from common.actors import Actor, ActorRef, ActorStopped, MailboxFull
from common.alerts import AlertEvent, AlertState, allowed_events, next_state
from common.clock import Clock, SystemClock
from common.model import Reading
from common.rules import EngineState, Observation, Rule, RuleEngine, Transition, parse_rule
from edge.storage.actor import Committed
from edge.storage.health import StorageHealth
from edge.storage.interfaces import RulesStorage
from edge.storage.store import AlertRow

log = logging.getLogger("iotsphere.rules")
ENGINE_STATE_KEY = "rules.engine_state"
CURSOR_KEY = "rules.cursor"  # the last reading seq the saved engine state has seen
REPLAY_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class ReloadRules:
    pass


@dataclass(frozen=True, slots=True)
class ChangeAlert:
    """An operator's acknowledge/resolve of an alert; ask() returns the updated alert dict."""

    alert_id: str
    event: AlertEvent


@dataclass(frozen=True, slots=True)
class SecurityLockout:
    """A username or address was locked out after repeated auth failures (a critical alert
    that resolves itself when the cooling period ends)."""

    key: str  # "user:<name>" or "addr:<address>"
    at_ms: int
    cooldown_s: float


LOG_EVERY_S = 10.0  # "rules are behind" at most this often

SECURITY_RULE = "security.lockout"
# A critical alert while the store cannot write (edge.storage.health), on the gateway itself.
STORAGE_RULE = "storage.unavailable"
STORAGE_SUBJECT = "gateway"

RulesMsg = Committed | Tick | ReloadRules | ChangeAlert | SecurityLockout


@dataclass
class RulesStats:
    """What `status` shows about alerts; written by the rules actor only, read for display."""

    active_alerts: int = 0  # open (active or acknowledged) alerts at this gateway
    caught_up: int = 0  # readings read back from the store after skipped commit notices


async def _load_rules(store: RulesStorage) -> list[Rule]:
    rules = []
    for body in await store.rules():
        try:
            rules.append(parse_rule(body, id=body["id"], version=int(body.get("version", 1))))
        except Exception:
            log.exception("stored rule %s is invalid; skipped", body.get("id"))
    return rules


class CommitFeed:
    """The store actor's on_commit: tells the rules actor about each commit, never waiting.

    The store must never block on the rules actor, which itself waits on the store (its
    queries, SaveAlerts): with both mailboxes full each would wait for the other forever. When
    the rules mailbox is full the notice is skipped and counted; the rules actor sees the gap
    in sequence numbers (or a Tick sees the store ahead of it) and reads those readings from
    the store, so no reading goes unevaluated."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self.rules: ActorRef[RulesMsg] | None = None
        self.skipped = 0  # notices not delivered (mailbox full): read back by the rules actor
        self._last_log = -LOG_EVERY_S

    async def __call__(self, committed: Committed) -> None:
        if self.rules is None:
            return
        try:
            self.rules.tell(committed)
        except MailboxFull:
            self.skipped += 1
            now = self._clock.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.warning(
                    "rules are behind (mailbox full): %d commit notices skipped so far; "
                    "their readings are evaluated from the store",
                    self.skipped,
                )
        except ActorStopped:
            # Stopping: the readings are durable and the rules actor replays everything after
            # its saved cursor at the next start.
            log.info(
                "rules stopped; %d readings will be evaluated at the next start",
                len(committed.readings),
            )


class RulesActor(Actor[RulesMsg]):
    def __init__(
        self,
        store: RulesStorage,
        clock: Clock,
        device_type_of: Callable[[str], str | None],
        tick_s: float,
        stats: RulesStats | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._device_type_of = device_type_of
        self._tick_s = tick_s
        self._engine = RuleEngine([])
        self._open: dict[tuple[str, str], AlertRow] = {}  # (rule, subject) -> open alert
        self.stats = stats if stats is not None else RulesStats()  # given: outlives restarts
        self._cursor = 0  # highest reading seq evaluated
        self._saved_cursor = 0
        self._store_ahead = 0  # the store's last seq at the previous tick

    async def on_start(self) -> None:
        rules = await _load_rules(self._store)
        raw_state = await self._store.kv_get(ENGINE_STATE_KEY)
        state = EngineState.from_json(raw_state) if raw_state else None
        self._engine = RuleEngine(rules, state)
        open_alerts = await self._store.alerts()
        self._open = {
            (a.rule_id, a.subject): a for a in open_alerts if a.state != AlertState.RESOLVED
        }
        self.stats.active_alerts = len(self._open)
        await self._replay()
        self.schedule_every(self._tick_s, Tick())

    async def _replay(self) -> None:
        """Evaluate readings committed after the saved state (a crash between a commit and its
        evaluation must not swallow an alert). The engine ignores readings it has seen."""
        raw = await self._store.kv_get(CURSOR_KEY)
        if raw is None:  # first start of this store: nothing was evaluated, nothing is owed
            self._cursor = self._saved_cursor = await self._store.last_seq()
            return
        self._cursor = self._saved_cursor = int(raw)
        replayed = await self._read_store()
        if replayed:
            log.info(
                "rules: re-evaluated %d readings committed after the last saved state", replayed
            )
            await self._save_state()

    async def _catch_up(self) -> None:
        """Evaluate, from the store, the commits whose notices the CommitFeed skipped."""
        self.stats.caught_up += await self._read_store()

    async def _read_store(self) -> int:
        """Observe every stored reading after the cursor that a rule watches, in seq order;
        how many there were."""
        read = 0
        while True:
            last, chunk = await self._store.watched_readings_after(
                self._cursor, REPLAY_CHUNK, self._engine.metrics
            )
            if last <= self._cursor:
                return read
            self._cursor = last
            await self._observe(chunk)
            read += len(chunk)

    async def _observe(self, readings: list[Reading]) -> None:
        types, watched = self._device_type_of, self._engine.metrics
        obs = [
            Observation.from_reading(r, types(r.device_id)) for r in readings if r.metric in watched
        ]
        await self._apply(self._engine.observe(obs, self._clock.now_ms()))

    async def _persist(self, alerts: list[AlertRow], kv: dict[str, str] | None = None) -> None:
        self.stats.active_alerts = len(self._open)
        await self._store.save_alerts(alerts, kv or {})

    async def _save_state(self) -> None:
        await self._store.save_alerts([], self._state_kv())

    def _state_kv(self) -> dict[str, str]:
        self._saved_cursor = self._cursor
        return {ENGINE_STATE_KEY: self._engine.state().to_json(), CURSOR_KEY: str(self._cursor)}

    async def receive(self, msg: RulesMsg) -> object:
        now = self._clock.now_ms()
        match msg:
            case Committed(readings, result):
                if result.first_seq is not None and result.first_seq > self._cursor + 1:
                    await self._catch_up()  # notices were skipped (CommitFeed): read the store
                if result.last_seq is not None:
                    if result.last_seq <= self._cursor:
                        return None  # evaluated by the catch-up
                    self._cursor = result.last_seq
                await self._observe(readings)
            case Tick():
                # The newest commits' notices were skipped when the store was ahead at the
                # previous tick and their notices have not arrived since. Not at this tick:
                # under load the notices of the commits made while the store answered are
                # still in our mailbox, and reading them back cost a fifth of the store's
                # time in a flood (bench/ingest_mqtt.py).
                if self._store_ahead > self._cursor:
                    await self._catch_up()
                # Asked, not shared: the store answers from memory, and never waits on us.
                view = await self._store.state()
                self._store_ahead = view.last_seq
                await self._apply(self._engine.tick(now))
                await self._expire_security(now)
                await self._watch_storage(view.health, now)
                if self._cursor != self._saved_cursor:
                    await self._save_state()
            case ReloadRules():
                rules = await _load_rules(self._store)
                await self._apply(self._engine.set_rules(rules, now))
            case ChangeAlert(alert_id, event):
                return await self._change(alert_id, event, now)
            case SecurityLockout(key, at_ms, cooldown_s):
                await self._security(key, at_ms, cooldown_s)
        return None

    async def _security(self, key: str, at_ms: int, cooldown_s: float) -> None:
        """One critical alert per lockout; resolved by a Tick once the cooldown has passed."""
        if (SECURITY_RULE, key) in self._open:
            return
        until = at_ms + int(cooldown_s * 1000)
        alert = _raised(SECURITY_RULE, key, "auth_failures", "critical", {"until": until}, at_ms)
        self._open[(SECURITY_RULE, key)] = alert
        log.warning("security alert: %s locked out", key)
        await self._persist([alert])

    async def _expire_security(self, now: int) -> None:
        expired = []
        for key, alert in list(self._open.items()):
            until = alert.value.get("until") if isinstance(alert.value, dict) else None
            if key[0] == SECURITY_RULE and isinstance(until, int) and now >= until:
                del self._open[key]
                expired.append(_resolved(alert, now))
        if expired:
            await self._persist(expired)

    async def _watch_storage(self, health: StorageHealth, now: int) -> None:
        """Raise the critical storage alert while the store actor reports storage unavailable,
        resolve it once it writes again. `health` is the store's answer to this tick's
        StoreState; a tick is soon enough for an outage that lasts until space returns. The
        alert is stored when the store writes again (held there meanwhile), and shows in
        status at once through active_alerts."""
        key = (STORAGE_RULE, STORAGE_SUBJECT)
        opened = self._open.get(key)
        if not health.available and opened is None:
            failure = health.failure
            value = {
                "reason": failure.reason if failure else "unknown",
                "disk_full": bool(failure and failure.disk_full),
            }
            alert = _raised(
                STORAGE_RULE, STORAGE_SUBJECT, "storage", "critical", value, health.since or now
            )
            self._open[key] = alert
            log.error("storage alert: the gateway cannot store data (%s)", alert.value)
            await self._persist([alert])
        elif health.available and opened is not None:
            del self._open[key]
            resolved = _resolved(opened, health.recovered_at or now)
            log.warning("storage alert resolved: the gateway stores data again")
            await self._persist([resolved])

    async def _apply(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        changed: list[AlertRow] = []
        for t in transitions:
            key = (t.rule_id, t.subject)
            if t.kind == "raised":
                alert = _raised(t.rule_id, t.subject, t.metric, t.severity, t.value, t.at_ms)
                self._open[key] = alert
                log.warning(
                    "alert raised: rule %s on %s (%s=%r)", t.rule_id, t.subject, t.metric, t.value
                )
            else:
                opened = self._open.pop(key, None)
                if opened is None:
                    continue
                alert = _resolved(opened, t.at_ms)
                log.info("alert resolved: rule %s on %s", t.rule_id, t.subject)
            changed.append(alert)
        await self._persist(changed, self._state_kv())

    async def _change(self, alert_id: str, event: AlertEvent, now: int) -> dict[str, object] | None:
        for key, alert in self._open.items():
            if alert.id == alert_id:
                if event not in allowed_events(AlertState(alert.state)):
                    return None  # e.g. acknowledged twice: nothing to change
                new_state = next_state(AlertState(alert.state), event)
                updated = replace(
                    alert,
                    state=new_state,
                    acknowledged_at=now if event == AlertEvent.ACK else alert.acknowledged_at,
                    resolved_at=now if new_state == AlertState.RESOLVED else None,
                )
                if new_state == AlertState.RESOLVED:
                    del self._open[key]
                else:
                    self._open[key] = updated
                await self._persist([updated])
                return updated.to_dict()
        return None  # not open here (already resolved, or never raised at this gateway)


def _raised(
    rule_id: str, subject: str, metric: str, severity: str, value: object, started_at: int
) -> AlertRow:
    """A newly raised alert: its own id, active."""
    return AlertRow(
        id=str(uuid.uuid4()),
        rule_id=rule_id,
        subject=subject,
        metric=metric,
        severity=severity,
        state=AlertState.ACTIVE,
        value=value,
        started_at=started_at,
    )


def _resolved(alert: AlertRow, at_ms: int) -> AlertRow:
    """The alert after a RESOLVE at at_ms (the lifecycle table in common.alerts says to what)."""
    return replace(
        alert, state=next_state(AlertState(alert.state), AlertEvent.RESOLVE), resolved_at=at_ms
    )
