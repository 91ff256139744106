"""Reading a JSON request body: size-limited, authenticated on the raw bytes, validated."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .deps import SERVICES
from .errors import ApiError, validation_errors

M = TypeVar("M", bound=BaseModel)


async def read_authenticated(request: web.Request) -> tuple[bytes, str]:
    """(raw body, principal). The body is read before auth because the signature covers it;
    aiohttp's `client_max_size` answers 413 before anything is buffered past the limit."""
    body = await request.read()
    return body, request.app[SERVICES].auth.check(request, body)


def parse(model: type[M], body: bytes, request: web.Request, *, allow_empty: bool = False) -> M:
    if not body.strip() and allow_empty:
        return model()
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"send JSON with Content-Type: application/json, not {content_type!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {errors[0]['message']}") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors(include_url=False)):
            raise ApiError(422, "validation_error", "the body must be a JSON object") from None
        raise ApiError(422, "validation_error", "the request body is not valid", errors) from None
