"""Notification channels (webhook, email), org-scoped. Operators read them, admins change
them (a channel decides where alert data leaves the system). Secrets are never returned."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from cloud.api.bodies import (
    CHANNEL_BASES,
    channel_body_schema,
    fits_some,
    json_body,
    patch_conflict,
)
from cloud.api.deps import AUTHED, Admin, Operator, PathId, ServicesDep, notify_of, problems
from cloud.api.problems import conflict, not_found
from cloud.api.schemas import ChannelOut
from cloud.app.services import Services
from cloud.notify.channels import Channel, apply_patch, parse_channel
from common.problem import ProblemError

router = APIRouter(prefix="/api/notification_channels", tags=["notifications"])


@router.get("", response_model=list[ChannelOut], responses=problems(*AUTHED, 403))
async def list_channels(principal: Operator, services: ServicesDep) -> list[dict[str, Any]]:
    return [c.to_dict() for c in await notify_of(services).list_channels(principal.org_id)]


@router.post(
    "",
    response_model=ChannelOut,
    responses=problems(*AUTHED, 403, 422),
    openapi_extra=json_body(channel_body_schema(post=True), "a notification channel"),
)
async def create_channel(
    principal: Admin, services: ServicesDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    channel = parse_channel(body, id=uuid.uuid4().hex)  # 422 listing every problem
    await notify_of(services).save_channel(principal.org_id, channel, services.clock.now_ms())
    return channel.to_dict()


def _parse_probe(data: dict[str, Any]) -> Channel:
    return parse_channel(data, id="probe")


async def _found(services: Services, org_id: str, channel_id: str) -> Channel:
    channel = await notify_of(services).get_channel(org_id, channel_id)
    if channel is None:  # other orgs' channels too: no existence leak
        raise not_found(f"no notification channel {channel_id!r}")
    return channel


@router.get("/{channel_id}", response_model=ChannelOut, responses=problems(*AUTHED, 403, 404))
async def get_channel(
    channel_id: PathId, principal: Operator, services: ServicesDep
) -> dict[str, Any]:
    return (await _found(services, principal.org_id, channel_id)).to_dict()


@router.patch(
    "/{channel_id}",
    response_model=ChannelOut,
    responses=problems(*AUTHED, 403, 404, 409, 422),
    openapi_extra=json_body(
        channel_body_schema(post=False),
        "fields to change; a new type needs its address (url or to). A patch that does not"
        " fit the stored channel (e.g. a url for an email channel) is a 409",
    ),
)
async def patch_channel(
    channel_id: PathId, principal: Admin, services: ServicesDep, body: Annotated[Any, Body()]
) -> dict[str, Any]:
    current = await _found(services, principal.org_id, channel_id)
    try:
        channel = apply_patch(current, body)
    except ProblemError as exc:
        patch = {k: v for k, v in body.items() if k != "id"} if isinstance(body, dict) else None
        if patch is None or not fits_some(patch, CHANNEL_BASES, _parse_probe):
            raise  # invalid for any channel: 422
        raise patch_conflict("channel", exc) from exc
    await notify_of(services).save_channel(principal.org_id, channel, services.clock.now_ms())
    return channel.to_dict()


@router.delete(
    "/{channel_id}",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404, 409),
)
async def delete_channel(channel_id: PathId, principal: Admin, services: ServicesDep) -> Response:
    await _found(services, principal.org_id, channel_id)
    if services.monitoring is not None:
        users = await services.monitoring.rules_using_channel(principal.org_id, channel_id)
        if users:
            raise conflict(f"channel is used by alert rule(s) {', '.join(users)}; edit them first")
    await notify_of(services).delete_channel(principal.org_id, channel_id)
    return Response(status_code=204)
