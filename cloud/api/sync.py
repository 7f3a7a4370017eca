"""The gateway side of the cloud: enrollment, signed sync batches, configuration pull.

These routes are authenticated by the gateway's Ed25519 key (common/gateway_auth.py), never
by a user JWT: each request carries a token bound to its method, path (with query) and body.
Verification runs in a worker thread (it reads the key from the store) and answers 401
problems; every refusal is logged with the source address so an operator can see probing.

Tenancy: a gateway acts for its organization only. A batch naming another gateway's id is
403; a batch naming a device that another organization's gateway owns is 403 and stores
nothing (the whole batch is one transaction).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from cloud.api.deps import AUTHED, Admin, PathId, ServicesDep, problems
from cloud.api.problems import HttpProblem, conflict, forbidden, not_found, too_many
from cloud.app.services import Services
from cloud.security.auth import token_digest
from cloud.sync.records import EnrollmentRefused, GatewayIdentity
from cloud.sync.store import SyncStore
from common.gateway_auth import (
    GatewayAuthError,
    GatewayVerifier,
    UnknownGateway,
    parse_public_key_b64,
)
from common.model import FieldError
from common.problem import Problem, ProblemError
from common.sync_wire import decode_batch, encode_ack

# How long a pipelined batch waits for the one it follows (sent just before it, so normally
# milliseconds: this bounds a predecessor that failed).
FOLLOWS_WAIT_S = 10.0
log = logging.getLogger("iotsphere.cloud.sync")

router = APIRouter(tags=["gateway sync"])


class EnrollIn(BaseModel):
    enrollment_token: str = Field(min_length=1, max_length=256)
    # 32 bytes in standard base64: every such value is an Ed25519 public key
    public_key: str = Field(
        pattern=r"^[A-Za-z0-9+/]{43}=$", description="the raw 32-byte Ed25519 key, base64"
    )
    name: str | None = Field(default=None, max_length=128, description="informational")


class EnrollOut(BaseModel):
    gateway_id: str
    org: str
    cloud_time_ms: int


class AckOut(BaseModel):
    batch_id: str
    first_seq: int
    last_seq: int
    stored: int
    duplicates: int


class ConfigOut(BaseModel):
    version: int
    rules: list[dict[str, Any]]
    revoked_devices: list[str]
    device_types: list[dict[str, Any]] = []
    alert_acks: list[str]
    alert_changes: list[dict[str, Any]]


def _unavailable() -> HttpProblem:
    return HttpProblem(
        Problem("not-configured", "Service unavailable", 503, "gateway sync not configured"),
        {"Retry-After": "60"},
    )


def sync_of(services: Services) -> tuple[SyncStore, GatewayVerifier]:
    if services.sync is None or services.gateway_verifier is None:
        raise _unavailable()
    return services.sync, services.gateway_verifier


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _target(request: Request) -> str:
    """The request target as the gateway signed it: path and query, as sent."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


async def authenticated_gateway(request: Request, services: ServicesDep) -> GatewayIdentity:
    """The enrolled, not revoked gateway that signed this request (401 otherwise)."""
    store, verifier = sync_of(services)
    body = await request.body()
    try:
        verified = await asyncio.to_thread(
            verifier.verify_authorization,
            request.headers.get("authorization"),
            method=request.method,
            path=_target(request),
            body=body,
        )
    except GatewayAuthError as exc:
        log.warning(
            "gateway request refused: %s %s from %s: %s",
            request.method,
            request.url.path,
            _address(request),
            exc.problem.detail,
        )
        raise
    ident = await store.identity(verified.gateway_id)
    if ident is None or ident.revoked:  # revoked between lookup and here
        raise UnknownGateway("unknown or revoked gateway")
    since = request.query_params.get("since")
    config = int(since) if since is not None and since.isdigit() and len(since) < 19 else None
    await store.seen(
        ident.gateway_id,
        services.clock.now_ms(),
        verified.skew_ms,
        verified.clock_skewed,
        config if request.url.path.endswith("/config") else None,
    )
    request.state.gateway_skew_ms = verified.skew_ms
    if verified.clock_skewed:
        log.warning("gateway %s clock skewed by %d ms", ident.gateway_id, verified.skew_ms)
    return ident


Gateway = Annotated[GatewayIdentity, Depends(authenticated_gateway)]


@router.post(
    "/api/v1/gateways/enroll",
    response_model=EnrollOut,
    responses=problems(401, 409, 422, 429, 503),
)
async def enroll(body: EnrollIn, request: Request, services: ServicesDep) -> dict[str, Any]:
    store, _ = sync_of(services)
    limiter = services.enroll_limiter
    key = f"enroll:{_address(request)}"
    if limiter is not None and (wait := await limiter.retry_after(key)) is not None:
        raise too_many("too many failed enrollment attempts from this address", wait)
    try:
        public_key = parse_public_key_b64(body.public_key)
    except ValueError as exc:
        raise ProblemError(
            Problem(
                "invalid-request",
                "Invalid request",
                422,
                str(exc),
                errors=(FieldError("/body/public_key", str(exc)),),
            )
        ) from exc
    now = services.clock.now_ms()
    try:
        done = await store.enroll(token_digest(body.enrollment_token), public_key, now)
    except EnrollmentRefused as exc:
        if limiter is not None:
            await limiter.record_failure(key)
        log.warning("enrollment refused from %s: %s", _address(request), exc.problem.detail)
        raise
    log.info("gateway %s enrolled (org %s)", done.gateway_id, done.org_name)
    return {"gateway_id": done.gateway_id, "org": done.org_name, "cloud_time_ms": now}


@router.post(
    "/api/v1/sync/batches",
    response_class=Response,
    responses={200: {"model": AckOut}, **problems(400, 401, 403, 409, 415, 503)},
)
async def post_batch(request: Request, gateway: Gateway, services: ServicesDep) -> Response:
    store, _ = sync_of(services)
    body = await request.body()
    batch = await asyncio.to_thread(
        decode_batch,
        body,
        request.headers.get("content-type", ""),
        request.headers.get("content-encoding", "identity"),
    )
    if batch.gateway_id != gateway.gateway_id:
        log.warning("gateway %s sent a batch for gateway %s", gateway.gateway_id, batch.gateway_id)
        raise forbidden("the batch belongs to another gateway")
    if batch.follows is not None and not await store.wait_until_stored(
        batch.gateway_id, batch.follows, FOLLOWS_WAIT_S
    ):
        # Its predecessor failed or never came: applying this one now would let readings
        # arrive out of order. The gateway resends from its acknowledged cursor.
        raise conflict(f"the batch follows {batch.follows}, which is not stored; resend in order")
    ack = await store.apply_batch(
        gateway.org_id,
        batch,
        services.clock.now_ms(),
        getattr(request.state, "gateway_skew_ms", None),
    )
    if ack.stored:
        services.hooks.wake_monitor()  # device readings feed the cloud's rules
    return Response(encode_ack(ack), media_type="application/json")


@router.get("/api/v1/sync/config", response_model=ConfigOut, responses=problems(401, 422, 503))
async def get_config(
    gateway: Gateway,
    services: ServicesDep,
    since: Annotated[int, Query(ge=0, le=2**62, description="the last version applied")] = 0,
) -> dict[str, Any]:
    store, _ = sync_of(services)
    scope = await store.scope(gateway.org_id, gateway.gateway_id)
    version, rules = 0, []
    if services.monitoring is not None:
        changes = await services.monitoring.rule_changes_since(gateway.org_id, since)
        version = changes.version
        for rule in changes.rules:
            # Device-type and unscoped rules go to every gateway (it may provision such a
            # device later); device rules unless the device is another gateway's; model
            # ("source") rules stay in the cloud. A rule that left this gateway's scope is
            # a delete for it.
            ours = rule.source is None and (
                rule.device_id is None or rule.device_id not in scope.other_devices
            )
            if ours:
                rules.append(rule.to_dict())
            elif since > 0:
                rules.append({"id": rule.id, "deleted": True, "version": rule.version})
        for rule_id, deleted_at in changes.deleted:
            rules.append({"id": rule_id, "deleted": True, "version": deleted_at})
    return {
        "version": version,
        "rules": rules,
        # whole lists (small, idempotent): the gateway replaces its cloud types with these,
        # and revokes those devices still active there
        "device_types": await store.device_types(gateway.org_id),
        "revoked_devices": await store.revoked_devices(gateway.org_id, gateway.gateway_id),
        "alert_acks": [a[0] for a in scope.alert_changes],
        "alert_changes": [
            {"id": i, "state": s, "acknowledged_at": ack, "resolved_at": res}
            for i, s, ack, res in scope.alert_changes
        ],
    }


@router.post(
    "/api/gateways/{gateway_id}/revoke",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404),
    tags=["devices"],
)
async def revoke_gateway(
    gateway_id: PathId,
    principal: Admin,
    services: ServicesDep,
) -> Response:
    store, _ = sync_of(services)
    if not await store.revoke(principal.org_id, gateway_id, services.clock.now_ms()):
        raise not_found(f"no gateway {gateway_id!r}")
    log.warning("gateway %s revoked by %s", gateway_id, principal.user_id)
    return Response(status_code=204)


@router.post(
    "/api/devices/{device_id}/revoke",
    status_code=204,
    response_class=Response,
    responses=problems(*AUTHED, 403, 404),
    tags=["devices"],
)
async def revoke_device(
    device_id: PathId,
    principal: Admin,
    services: ServicesDep,
) -> Response:
    """Revoke a device centrally: its gateway revokes it (credentials gone, sessions closed)
    at its next configuration fetch, also if it has been offline meanwhile."""
    store, _ = sync_of(services)
    if not await store.revoke_device(principal.org_id, device_id, services.clock.now_ms()):
        raise not_found(f"no device {device_id!r}")
    log.warning("device %s revoked by %s", device_id, principal.user_id)
    return Response(status_code=204)
