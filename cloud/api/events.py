"""Live pages: POST /api/events/ticket and GET /api/events (Server-Sent Events).

EventSource cannot send an Authorization header, and a long-lived access token in a URL ends
up in proxies' logs and the browser's history. So the page, with its bearer token, asks for a
stream ticket: a JWT of its own type (`stream+jwt`, audience `<audience>/events`), valid for
TICKET_TTL_S, good for opening a stream and for nothing else (the API refuses it as a bearer
token: TokenService.verify wants `at+jwt`; and an access token is refused here). It is signed
with the key every worker shares, so any worker accepts it. When the stream opens, its user is
checked against the store as for any request (disabled users and ended sessions get 401).

The same kind of ticket, with scope `export`, lets a plain link download a device's readings
as CSV (GET /api/devices/{id}/readings.csv?ticket=...): the browser streams the file to disk
instead of the page holding it in memory. A ticket's scope is checked: a stream ticket
downloads nothing, an export ticket opens no stream.

A stream lives at most STREAM_MAX_S and then ends; the page asks for a new ticket and
reconnects, so a session ended meanwhile is noticed within that time. Each notice says only
which kinds of data changed for the caller's org (cloud.app.changes); the page then fetches
what it shows through the ordinary, org-scoped API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import jwt
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from cloud.api.deps import AUTHED, ServicesDep, Viewer, problems, unavailable_area
from cloud.api.problems import unauthorized
from cloud.app.changes import ChangeFeed
from cloud.app.services import Services
from cloud.security.auth import ALGORITHM, AuthError, Principal
from cloud.storage.interface import Role

router = APIRouter(prefix="/api/events", tags=["events"])

TICKET_TYPE = "stream+jwt"
TICKET_TTL_S = 60
STREAM_MAX_S = 300.0
KEEPALIVE_S = 15.0  # a comment line: proxies and the browser see the stream is alive
RECONNECT_MS = 2000  # the browser's own retry after a dropped stream


Scope = Literal["events", "export"]


def issue_ticket(services: Services, principal: Principal, scope: Scope = "events") -> str:
    tokens = services.tokens
    now = services.clock.now_ms() // 1000
    claims = {
        "iss": tokens.issuer,
        "aud": f"{tokens.audience}/events",
        "sub": principal.user_id,
        "org": principal.org_id,
        "role": principal.role.value,
        "token_version": principal.token_version,
        "iat": now,
        "exp": now + TICKET_TTL_S,
        "jti": uuid.uuid4().hex,
        "scope": scope,
    }
    return jwt.encode(claims, tokens.signing_key, algorithm=ALGORITHM, headers={"typ": TICKET_TYPE})


def verify_ticket(services: Services, ticket: str, scope: Scope = "events") -> Principal:
    tokens = services.tokens
    try:
        if jwt.get_unverified_header(ticket).get("typ") != TICKET_TYPE:
            raise AuthError("not a stream ticket")
        claims = jwt.decode(
            ticket,
            tokens.signing_key,
            algorithms=[ALGORITHM],
            audience=f"{tokens.audience}/events",
            issuer=tokens.issuer,
            options={"require": ["exp", "iat", "sub"], "verify_exp": False, "verify_iat": False},
        )
        now = services.clock.now_ms() / 1000
        if not isinstance(claims["exp"], int) or now >= claims["exp"]:
            raise AuthError("stream ticket expired")
        if claims.get("scope") != scope:
            raise AuthError(f"not a ticket for {scope}")
        return Principal(
            str(claims["sub"]),
            str(claims["org"]),
            Role(claims["role"]),
            int(claims.get("token_version", 0)),
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
        raise AuthError(f"invalid stream ticket: {exc}") from exc


def feed_of(services: Services) -> ChangeFeed:
    if services.changes is None:
        raise unavailable_area("live update")
    return services.changes


@router.post("/ticket", responses=problems(*AUTHED, 422))
async def ticket(
    principal: Viewer,
    services: ServicesDep,
    scope: Annotated[
        Scope, Query(description="events: GET /api/events; export: a readings.csv link")
    ] = "events",
) -> dict[str, Any]:
    """A short-lived ticket to open GET /api/events?ticket=... (EventSource sends no
    headers), or with scope=export to download GET /api/devices/{id}/readings.csv?ticket=..."""
    return {"ticket": issue_ticket(services, principal, scope), "expires_in": TICKET_TTL_S}


async def ticket_principal(services: Services, ticket: str | None, scope: Scope) -> Principal:
    """The principal a ticket names, checked against the store like a bearer token's."""
    if not ticket:
        raise unauthorized(f"a ticket is required (POST /api/events/ticket?scope={scope})")
    try:
        principal = verify_ticket(services, ticket, scope)
        if services.users is not None:
            principal = await services.users.current(principal)
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    return principal


def _event(name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(feed: ChangeFeed, org_id: str) -> AsyncIterator[bytes]:
    # subscribed here, not in the endpoint: the finally below is what unsubscribes, and it runs
    # only once the response has started this generator (a client gone before would leak it)
    loop = asyncio.get_running_loop()
    ends = loop.time() + STREAM_MAX_S
    sub = feed.subscribe(org_id)
    try:
        await feed.baseline(sub.org_id)
        yield f"retry: {RECONNECT_MS}\n".encode() + _event("ready", {})
        n = 0
        while (left := ends - loop.time()) > 0:
            try:
                kinds = await asyncio.wait_for(sub.queue.get(), min(KEEPALIVE_S, left))
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if kinds is None:  # dropped (did not keep up) or the server is stopping
                break
            n += 1
            yield _event("change", {"kinds": sorted(kinds)}, n)
    finally:
        feed.unsubscribe(sub)


@router.get(
    "",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "change notices"},
        **problems(*AUTHED),
    },
)
async def events(
    services: ServicesDep,
    ticket: Annotated[
        str | None, Query(max_length=4096, description="from POST /api/events/ticket")
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: `ready` once, then `change` with the kinds of data that changed in
    the caller's org (devices, gateways, alerts, deliveries). Ends after 5 minutes or when
    the page does not keep up; reconnect with a new ticket and refetch."""
    principal = await ticket_principal(services, ticket, "events")
    return StreamingResponse(
        _stream(feed_of(services), principal.org_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
