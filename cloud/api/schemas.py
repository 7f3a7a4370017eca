"""Response and request bodies as documented in /openapi.json (shapes from CONTRACT.md)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Value = bool | float | str  # bool first: JSON true must not become 1.0


class LoginRequest(BaseModel):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


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


class NotificationStatus(BaseModel):
    channel_id: str
    status: str
    attempts: int


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
    points: list[PointOut] | list[BucketOut]


class DashboardOut(BaseModel):
    config: dict[str, Any]
    devices: list[DeviceOut]
    alerts: list[AlertOut]


class StatusOut(BaseModel):
    status: str
