"""The alert documents of the HTTP API beyond the CONTRACT's alert (issue 15): where and why an
alert was raised, its history, a page of alerts, the bulk action and its per-alert results,
and the gateways' own rules."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from cloud.api.schemas import AlertOut, NotificationStatus


class AlertItemOut(AlertOut):
    rule_name: str | None = None
    evaluated: Literal["gateway", "cloud"] = "cloud"
    gateway_id: str | None = None  # the gateway that evaluated the rule
    acknowledged_by: str | None = None
    resolved_by: str | None = None


class AlertEventOut(BaseModel):
    at: int
    kind: str  # raised | acknowledged | resolved
    actor: str | None  # a user's e-mail, "rule", "gateway <id>"
    detail: str | None = None


class AttemptOut(BaseModel):
    attempt: int  # 1 for the first
    at: int
    result: str  # sent | failed, will retry | failed, gave up
    error: str | None = None


class NotificationDetailOut(NotificationStatus):
    attempt_log: list[AttemptOut] = []


class AlertDetailOut(AlertItemOut):
    notifications: list[NotificationDetailOut]  # type: ignore[assignment]
    gateway_name: str | None = None
    rule: dict[str, Any] | None = None  # the rule as it was when the alert was raised
    history: list[AlertEventOut]


class AlertPageOut(BaseModel):
    items: list[AlertItemOut]
    total: int  # alerts matching the filters, all pages
    next: str | None  # pass as `cursor` for the next page; null on the last one


class BulkAlertsIn(BaseModel):
    action: Literal["ack", "resolve"]
    ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=500
    )


class BulkResultOut(BaseModel):
    id: str
    status: int  # 200 changed, 404 no such alert (or another org's), 409 not allowed now
    state: str | None = None  # the alert's state after the request, when it is ours
    detail: str | None = None


class BulkAlertsOut(BaseModel):
    action: str
    changed: int
    failed: int
    results: list[BulkResultOut]


class GatewayRuleOut(BaseModel):
    gateway_id: str
    gateway_name: str | None
    read_only: bool = True
    updated_at: int
    rule: dict[str, Any]
