"""Every 4xx/5xx of the cloud API is an RFC 9457 problem document (common/problem.py).

Handlers cover our own ProblemErrors, FastAPI's 422 validation errors, Starlette's 404/405,
store failures (503 + Retry-After) and anything unexpected (500, logged with its traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cloud.storage.errors import StoreError
from common.model import FieldError
from common.problem import Problem, ProblemError

log = logging.getLogger("iotsphere.cloud.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"

# The documented shape (OpenAPI): extension members are allowed.
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class HttpProblem(ProblemError):
    """A ProblemError that also carries response headers (WWW-Authenticate, Retry-After)."""

    def __init__(self, problem: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(problem)
        self.headers = dict(headers or {})
        self.cookies: list[str] = []  # Set-Cookie values (a header a dict holds only once)


def unauthorized(detail: str) -> HttpProblem:
    # RFC 6750 section 3: the challenge tells the client to (re)authenticate with a bearer token
    return HttpProblem(
        Problem("unauthorized", "Unauthorized", 401, detail),
        {"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def forbidden(detail: str) -> HttpProblem:
    return HttpProblem(Problem("forbidden", "Forbidden", 403, detail))


def not_found(detail: str) -> HttpProblem:
    return HttpProblem(Problem("not-found", "Not found", 404, detail))


def conflict(detail: str) -> HttpProblem:
    return HttpProblem(Problem("conflict", "Conflict", 409, detail))


def too_many(detail: str, retry_after_s: float) -> HttpProblem:
    seconds = max(1, int(retry_after_s + 0.999))
    return HttpProblem(
        Problem(
            "too-many-requests", "Too many requests", 429, detail, extra={"retry_after": seconds}
        ),
        {"Retry-After": str(seconds)},
    )


def unavailable(detail: str, retry_after_s: int) -> HttpProblem:
    return HttpProblem(
        Problem("store-unavailable", "Service unavailable", 503, detail),
        {"Retry-After": str(retry_after_s)},
    )


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        problem.to_json(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def _pointer(loc: tuple[Any, ...] | list[Any]) -> str:
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def install(app: FastAPI, *, retry_after_s: int) -> None:
    async def on_problem(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        response = problem_response(exc.problem, getattr(exc, "headers", None))
        for cookie in getattr(exc, "cookies", ()):
            response.raw_headers.append((b"set-cookie", cookie.encode("latin-1")))
        return response

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        status = exc.status_code
        title = _TITLES.get(status, "Error")
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else ""
        slug = title.lower().replace(" ", "-")
        headers = dict(exc.headers or {})
        if status == 405:
            headers["Allow"] = allowed_methods(request)
        return problem_response(Problem(slug, title, status, detail), headers)

    async def on_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            FieldError(_pointer(e.get("loc", ())), str(e.get("msg", ""))) for e in exc.errors()
        ]
        return problem_response(
            Problem(
                "invalid-request",
                "Invalid request",
                422,
                f"{len(errors)} invalid field(s)",
                errors=tuple(errors),
            )
        )

    async def on_store(request: Request, exc: Exception) -> Response:
        log.error(
            "store error: method=%s path=%s error=%s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
        )
        problem = unavailable("the database is unreachable; try again shortly", retry_after_s)
        return problem_response(problem.problem, problem.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(Problem("internal-error", "Internal server error", 500))

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StoreError, on_store)
    app.add_exception_handler(Exception, on_unexpected)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The Allow header of a 405 (RFC 9110 section 15.5.6): every method some route of the
    path takes. Starlette names only the first route that matched the path, and FastAPI makes
    one route per method, so its Allow left out the others. Asked through each route's public
    matches(), as the router itself asks (included routers are routes of their own)."""
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "type": "http", "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document tell the truth: every 4xx/5xx is application/problem+json,
    and an operation that takes a body may answer 400 (the body is not JSON at all)."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    ref = {"$ref": "#/components/schemas/Problem"}
    for item in openapi.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if "requestBody" in operation:
                operation["responses"].setdefault(
                    "400", {"description": "problem document (RFC 9457): the body is not JSON"}
                )
            for code, response in operation["responses"].items():
                if code[0] in "45":
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": ref}}
    return openapi
