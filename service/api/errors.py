"""Errors as RFC 9457 problem details, and the middleware that guarantees no request ever
gets a bare 500: every failure becomes a JSON body that names what was wrong."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from .. import metrics
from ..domain import Contended, DomainError, NotFound
from ..logs import request_id
from ..runs import IdempotencyConflict

log = logging.getLogger("service.api")
PROBLEM_JSON = "application/problem+json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extensions = extensions or {}  # RFC 9457 extension members, e.g. the missing `scope`


TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
          408: "Request timeout", 409: "Conflict", 413: "Payload too large", 415: "Unsupported media type",
          422: "Validation failed",
          500: "Internal error", 503: "Service unavailable"}


def problem(status: int, code: str, detail: str, errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None, extensions: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"type": f"https://countersign.dev/problems/{code}", "title": TITLES.get(status, "Error"),
                            "status": status, "detail": detail, "request_id": request_id.get(), **(extensions or {})}
    if errors:
        body["errors"] = errors
    return web.Response(status=status, text=json.dumps(body), content_type=PROBLEM_JSON, headers=headers)


_MISSING = object()
ROOT_FIELD = "$"  # the body as a whole (not its `body` member, which DecisionIn has)


def _field_path(loc: tuple[int | str, ...], data: Any, missing: bool) -> list[int | str]:
    """The error's location as the caller wrote it: pydantic puts union branch labels in
    `loc` ("send_email" for a tagged action, "function-after[...]" or "PolicyIn" for a
    plain union); walking the submitted JSON alongside tells those apart from real keys."""
    if data is _MISSING:
        return list(loc)
    path: list[int | str] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(part, int) and isinstance(current, list) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif isinstance(part, str) and isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif missing and i == len(loc) - 1:
            path.append(part)  # the missing field itself
        # else: a union branch label, not part of the document
    return path


def _dotted(path: list[int | str]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_errors(exc: ValidationError, data: Any = _MISSING) -> list[dict[str, str]]:
    """`[{field, message}]` for a pydantic error; `data` is the submitted JSON, when there is one."""
    out: list[dict[str, str]] = []
    for err in exc.errors(include_url=False):
        path = _field_path(tuple(err["loc"]), data, err["type"] == "missing")
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "value_error" and isinstance(cause, ValueError):
            message = str(cause)  # without pydantic's "Value error, " prefix
        fields = [_dotted([*path, f]) for f in getattr(cause, "fields", ())] or [_dotted(path) or ROOT_FIELD]
        for field in fields:
            entry = {"field": field, "message": message}
            if entry not in out:
                out.append(entry)
    return out


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _http_detail(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound) and exc.text == "404: Not Found":
        return f"no route matches {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(exc.allowed_methods))}"
    return exc.text or exc.reason


_REVIEW_TOKEN = re.compile(r"^(/review/[^/]*/)[^/]+")


def loggable_path(request: web.Request) -> str:
    """The path as logs may show it: a secret in it (an email review link's token) is left
    out, since whoever reads the logs must not be able to decide with it. By its place in
    the path, not by the route: a method the route does not take (a 405) matches none."""
    return _REVIEW_TOKEN.sub(r"\1[token]", request.path)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id") or str(uuid.uuid4())
    if len(rid) > 128 or not (rid.isascii() and rid.isprintable()):  # it is echoed in a header and logs
        rid = str(uuid.uuid4())
    token = request_id.set(rid)
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = problem(exc.status, exc.code, exc.detail, exc.errors, exc.headers, exc.extensions)
        except ValidationError as exc:
            response = problem(422, "validation_error", "the request body is not valid", validation_errors(exc))
        except NotFound as exc:
            response = problem(404, "not_found", str(exc))
        except IdempotencyConflict as exc:
            response = problem(409, "idempotency_key_reused", str(exc))
        except Contended as exc:  # nothing was recorded: the same request can be sent again
            response = problem(503, "approval_contended", exc.message,
                               headers={"Retry-After": str(exc.retry_after_seconds)})
        except DomainError as exc:
            field = exc.context.get("field")
            response = problem(409, exc.code, exc.message, [{"field": field, "message": exc.message}] if field else None)
        except web.HTTPRequestEntityTooLarge:
            response = problem(413, "payload_too_large",
                               f"the request body is larger than the {request.client_max_size} bytes allowed")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = problem(exc.status, exc.reason.lower().replace(" ", "_"), _http_detail(request, exc),
                               headers={k: v for k, v in exc.headers.items() if k == "Allow"})
        except Exception:
            log.exception("unhandled error in %s %s", request.method, loggable_path(request))
            response = problem(500, "internal_error", "an unexpected error occurred; it has been logged with this request id")
        response.headers["X-Request-Id"] = rid
        route = _route_name(request)
        duration = time.perf_counter() - started
        metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status)).inc()
        metrics.HTTP_DURATION.labels(route).observe(duration)
        if log.isEnabledFor(logging.INFO):
            path = loggable_path(request)
            log.log(logging.ERROR if response.status >= 500 else logging.INFO, "%s %s %d", request.method,
                    path, response.status, extra={"method": request.method, "path": path,
                    "status": response.status, "duration_ms": round(duration * 1000, 2)})
        return response
    finally:
        request_id.reset(token)
