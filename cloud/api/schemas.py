"""Response and request bodies as documented in /openapi.json (shapes from CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from cloud.app.admin_ops import MAX_PASSWORD, MIN_PASSWORD
from cloud.storage.interface import Role

Value = bool | float | str  # bool first: JSON true must not become 1.0


class LoginRequest(BaseModel):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)
    # true (the dashboard): the refresh token goes into an HttpOnly cookie, not the body
    cookie: bool = False


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class UserOut(BaseModel):
    id: str
    email: str
    role: Role
    disabled: bool
    disabled_at: int | None
    created_at: int


class UserPatch(BaseModel):
    """Fields to change; absent or null ones stay as they are."""

    model_config = ConfigDict(extra="forbid")
    role: Role | None = None
    disabled: StrictBool | None = Field(
        default=None, description="true ends the user's sessions and refuses their logins"
    )


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str | None = None  # left out when it was set as a cookie instead


class DeviceOut(BaseModel):
    device_id: str
    gateway_id: str | None
    type: str | None
    status: str = Field(pattern="^(online|offline)$")
    last_seen: int | None
    latest: dict[str, Value]


class GatewayOut(BaseModel):
    gateway_id: str
    name: str
    created_at: int
    enrolled: bool
    enrolled_at: int | None
    last_seen: int | None
    revoked: bool = False
    revoked_at: int | None = None
    clock_skew_ms: int | None = None  # the gateway's clock minus the cloud's, last request
    clock_skewed: bool = False  # more than 5 minutes off: its readings' gateway times suspect
    config_version: int | None = None  # the rule version the gateway last confirmed
    status: str | None = Field(default=None, pattern="^(online|offline)$")  # by last_seen
    # by contact, last batch and backlog (CloudSettings.gateway_state)
    state: str | None = Field(default=None, pattern="^(online|lagging|offline)$")
    last_sync_at: int | None = None  # when its newest sync batch was stored
    readings_synced: int | None = None  # readings its batches stored in the cloud
    backlog_readings: int | None = None  # readings waiting at the gateway (its last batch said)


class NotificationStatus(BaseModel):
    channel_id: str
    status: str = Field(pattern="^(pending|retrying|sent|failed)$")
    attempts: int
    event: str | None = None  # alert.raised or alert.resolved
    last_error: str | None = None
    sent_at: int | None = None
    next_attempt_at: int | None = None  # while retrying


class AlertOut(BaseModel):
    id: str
    rule_id: str | None
    state: str
    severity: str
    metric: str
    value: Value | None
    device_id: str | None
    source: str | None
    started_at: int
    acknowledged_at: int | None
    resolved_at: int | None
    notifications: list[NotificationStatus]


class PointOut(BaseModel):
    ts: int
    value: Value


class DevicePointOut(PointOut):
    flags: list[str] | None = None  # present when a time is not to be trusted


class BucketOut(BaseModel):
    ts: int
    min: float | None
    max: float | None
    avg: float | None
    count: int


class TelemetryOut(BaseModel):
    device_id: str
    metric: str
    bucket_ms: int | None
    points: list[DevicePointOut] | list[BucketOut]


class DevicePageOut(BaseModel):
    """With device list parameters: how many matched, the page, and the overview's counts."""

    total: int
    limit: int
    offset: int
    all_devices: int  # the org's devices, unfiltered
    online: int  # of those, online now
    types: list[str]  # the org's device types (the type filter's choices)


class DashboardOut(BaseModel):
    config: dict[str, Any]
    devices: list[DeviceOut]
    alerts: list[AlertOut]
    devices_page: DevicePageOut | None = None  # only with a device list parameter


class StatusOut(BaseModel):
    status: str


class RuleOut(BaseModel):
    id: str
    name: str
    metric: str
    operator: str = Field(pattern="^(>|>=|<|<=|==|!=|nodata)$")
    threshold: Value | None
    for_seconds: float
    hysteresis: float
    severity: str = Field(pattern="^(info|warning|critical)$")
    enabled: bool
    channels: list[str]
    version: int
    device_id: str | None = None
    device_type: str | None = None
    source: str | None = None


class RuleTombstone(BaseModel):
    id: str
    version: int


class RuleChangesOut(BaseModel):
    version: int
    rules: list[RuleOut]
    deleted: list[RuleTombstone]


class MetricsAccepted(BaseModel):
    received: int
    stored: int  # new ones; a (source, metric, ts) sent again is stored once


class MetricPointsOut(BaseModel):
    source: str
    metric: str
    points: list[PointOut]


class MetricSeriesOut(BaseModel):
    source: str
    metric: str
    count: int
    last_ts: int
    last_value: Value | None


class ChannelOut(BaseModel):
    id: str
    name: str
    type: str = Field(pattern="^(webhook|email)$")
    url: str | None = None
    signed: bool | None = None  # webhook: deliveries carry an HMAC signature
    to: str | None = None


class ApiKeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    created_by: str
    created_at: int
    revoked_at: int | None
    last_used_at: int | None = None  # when a request last came with it, to the minute


class ApiKeyCreated(ApiKeyOut):
    key: str  # shown once; only its digest is stored
