"""The narrow storage interface of the cloud (CloudStore) and the frozen values it returns.

The API layer only sees this Protocol, so a PostgreSQL store can follow without touching it.
Every method that reads or changes tenant data takes the org id: scoping is part of the
interface, not something each endpoint has to remember. Errors: StoreError and its subclasses
(cloud.storage.db), nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from common.alerts import AlertState
from common.model import Reading, Value

if TYPE_CHECKING:  # device_query imports DeviceInfo from here
    from cloud.storage.alert_query import AlertQuery
    from cloud.storage.device_query import DevicePage, DeviceQuery


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    org_id: str
    role: Role
    password_hash: str
    created_at: int
    # Bumped when the user's sessions must end (password changed, disabled): access tokens
    # carry the version they were issued under and are refused once it differs.
    token_version: int = 0
    disabled_at: int | None = None  # a disabled user cannot log in; None while enabled

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "role": self.role.value,
            "disabled": self.disabled,
            "disabled_at": self.disabled_at,
            "created_at": self.created_at,
        }


class UserChange(StrEnum):
    """The outcome of changing or deleting a user (the store checks it in one transaction)."""

    OK = "ok"
    NOT_FOUND = "not_found"  # no such user in that org
    LAST_ADMIN = "last_admin"  # refused: the org would be left without an enabled admin


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    gateway_id: str
    org_id: str
    name: str
    created_at: int
    enrolled_at: int | None
    last_seen: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "name": self.name,
            "created_at": self.created_at,
            "enrolled": self.enrolled_at is not None,
            "enrolled_at": self.enrolled_at,
            "last_seen": self.last_seen,
        }


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    gateway_id: str | None
    type: str | None
    last_seen: int | None  # gateway receive time of its newest reading, ms
    latest: Mapping[str, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Point:
    ts: int
    value: Value
    flags: int = 0  # common.model.ReadingFlag bits: which times not to trust


@dataclass(frozen=True, slots=True)
class Bucket:
    ts: int  # bucket start, ms
    min: float | None  # None when the metric is not numeric
    max: float | None
    avg: float | None
    count: int


@dataclass(frozen=True, slots=True)
class AlertInfo:
    id: str
    org_id: str
    rule_id: str | None
    state: AlertState
    severity: str
    metric: str
    value: Value | None
    device_id: str | None
    source: str | None
    started_at: int
    acknowledged_at: int | None
    resolved_at: int | None
    # Why and where (issue 15): the gateway that evaluated the rule (None: the cloud did), the
    # rule as it was when the alert was raised, and who acknowledged and resolved it.
    gateway_id: str | None = None
    rule_name: str | None = None
    rule: Mapping[str, Any] | None = None
    acknowledged_by: str | None = None
    resolved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "rule_name": self.rule_name,
            "evaluated": "gateway" if self.gateway_id is not None else "cloud",
            "gateway_id": self.gateway_id,
            "acknowledged_by": self.acknowledged_by,
            "resolved_by": self.resolved_by,
            "state": self.state.value,
            "severity": self.severity,
            "metric": self.metric,
            "value": self.value,
            "device_id": self.device_id,
            "source": self.source,
            "started_at": self.started_at,
            "acknowledged_at": self.acknowledged_at,
            "resolved_at": self.resolved_at,
            # filled by the notification area (cloud/notify) when it is plugged in
            "notifications": [],
        }


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One step of an alert's history: raised, acknowledged or resolved, by whom."""

    at: int
    kind: str  # raised | acknowledged | resolved
    actor: str | None  # a user's e-mail, "rule" (the cloud's evaluation), "gateway <id>"
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "actor": self.actor, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class GatewayRule:
    gateway_id: str
    gateway_name: str | None
    rule: Mapping[str, Any]  # the CONTRACT rule shape, as the gateway sent it
    updated_at: int


@dataclass(frozen=True, slots=True)
class NewAlert:
    rule_id: str | None
    severity: str
    metric: str
    value: Value | None
    started_at: int
    device_id: str | None = None
    source: str | None = None
    rule: Mapping[str, Any] | None = None  # the rule's document when it was raised
    gateway_id: str | None = None  # None: raised by the cloud's own evaluation


class RefreshUse(StrEnum):
    OK = "ok"  # valid and now consumed: issue the next token of the family
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REUSED = "reused"  # already rotated: a stolen copy; the whole family is now revoked
    # revoked (its family was, or the user's sessions were ended: password changed, user
    # disabled or deleted); nothing more to revoke
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token_hash: str  # sha256 of the opaque token; the token itself is never stored
    family_id: str  # all tokens rotated from one login
    user_id: str
    expires_at: int
    token_version: int = 0  # the user's token_version at issue: refused once it changed


class CloudStore(Protocol):
    async def ping(self) -> None:
        """Raise StoreError unless the store answers a trivial query."""
        ...

    # tenants and users
    async def ensure_org(self, name: str, now_ms: int) -> Org: ...
    async def create_user(
        self, email: str, password_hash: str, role: Role, org_id: str, now_ms: int
    ) -> User:
        """Raises Conflict when the e-mail is taken (e-mails are unique across orgs)."""
        ...

    async def user_by_email(self, email: str) -> User | None: ...
    async def user_by_id(self, user_id: str) -> User | None: ...
    async def list_orgs(self) -> list[Org]: ...
    async def list_users(self, org_id: str | None) -> list[User]:
        """The users of one org (None: of every org), by e-mail."""
        ...

    async def update_user(
        self,
        org_id: str,
        user_id: str,
        now_ms: int,
        *,
        role: Role | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> tuple[UserChange, User | None]:
        """Change what is given, in one transaction. A new password or a disable ends the
        user's sessions: token_version is bumped and every refresh token revoked. Refused
        (LAST_ADMIN) when it would leave the org without an enabled admin."""
        ...

    async def delete_user(self, org_id: str, user_id: str) -> tuple[UserChange, User | None]:
        """Delete the user and their refresh tokens (LAST_ADMIN as update_user)."""
        ...

    # refresh tokens
    async def save_refresh_token(self, token: RefreshToken) -> None: ...
    async def consume_refresh_token(
        self, token_hash: str, now_ms: int
    ) -> tuple[RefreshUse, RefreshToken | None]:
        """Atomically mark the token used; on reuse, revoke its whole family."""
        ...

    # gateways
    async def create_gateway(
        self, org_id: str, name: str, token_hash: str, expires_at: int, now_ms: int
    ) -> GatewayInfo:
        """Raises Conflict when the org already has a gateway of that name."""
        ...

    async def list_gateways(self, org_id: str) -> list[GatewayInfo]: ...

    # dashboard
    async def get_dashboard_config(self, org_id: str) -> dict[str, Any] | None: ...
    async def put_dashboard_config(
        self, org_id: str, config: Mapping[str, Any], now_ms: int
    ) -> None: ...

    # devices and telemetry
    async def list_devices(self, org_id: str) -> list[DeviceInfo]: ...
    async def device_list_json(self, org_id: str, now_ms: int, online_threshold_s: float) -> str:
        """Every device as the dashboard lists it (cloud.api.views.device_view), as a JSON
        array written by the database (cloud/storage/device_json.py)."""
        ...

    async def device_page(self, org_id: str, query: DeviceQuery) -> DevicePage:
        """One page of devices searched, filtered and sorted in the database."""
        ...

    async def get_device(self, org_id: str, device_id: str) -> DeviceInfo | None: ...
    async def upsert_device(
        self, org_id: str, device_id: str, gateway_id: str | None, device_type: str | None
    ) -> None: ...
    async def insert_readings(
        self, org_id: str, gateway_id: str, readings: Sequence[Reading], now_ms: int
    ) -> int:
        """Store readings once per (device, metric, ts); returns how many were new."""
        ...

    async def telemetry_points(
        self, org_id: str, device_id: str, metric: str, from_ms: int, to_ms: int, limit: int
    ) -> list[Point]:
        """Raw points in [from_ms, to_ms), oldest first."""
        ...

    async def telemetry_buckets(
        self,
        org_id: str,
        device_id: str,
        metric: str,
        from_ms: int,
        to_ms: int,
        bucket_ms: int,
        limit: int,
    ) -> list[Bucket]:
        """Buckets aligned to the epoch, covering [from_ms, to_ms), oldest first; at most
        `limit` (those with readings)."""
        ...

    # alerts (the monitoring area creates them; users ack and resolve them)
    async def create_alert(self, org_id: str, alert: NewAlert) -> AlertInfo: ...
    async def list_alerts(
        self, org_id: str, states: frozenset[AlertState] | None = None
    ) -> list[AlertInfo]: ...
    async def get_alert(self, org_id: str, alert_id: str) -> AlertInfo | None: ...
    async def set_alert_state(
        self,
        org_id: str,
        alert_id: str,
        state: AlertState,
        now_ms: int,
        actor: str | None = None,
        expected: AlertState | None = None,
    ) -> AlertInfo | None: ...
    async def alert_page(
        self, org_id: str, query: AlertQuery
    ) -> tuple[list[AlertInfo], int, str | None]:
        """One page of alerts searched, filtered and sorted in the database: (alerts, total
        matching, the next page's cursor or None). Raises BadCursor for a foreign cursor."""
        ...

    async def alert_history(self, org_id: str, alert_id: str) -> list[AlertEvent]: ...
    async def gateway_rules(self, org_id: str) -> list[GatewayRule]:
        """The rules gateways evaluate themselves (not the cloud's own, which they also
        hold), as each gateway last synced them."""
        ...
