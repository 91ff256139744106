"""Reading a JSON request body: size-limited, authenticated on the raw bytes, validated."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..scopes import Principal, Scope
from . import json_input
from .deps import SERVICES
from .errors import ROOT_FIELD, ApiError, validation_errors

M = TypeVar("M", bound=BaseModel)


async def read_authenticated(request: web.Request,
                             scope: Scope | tuple[Scope, ...] | None) -> tuple[bytes, Principal]:
    """(raw body, principal holding `scope`). The body is read before auth because the
    signature covers it; aiohttp's `client_max_size` answers 413 before anything is
    buffered past the limit."""
    body = await request.read()
    return body, await request.app[SERVICES].auth.authenticate(request, body, scope)


def parse(model: type[M], body: bytes, request: web.Request, *, allow_empty: bool = False) -> M:
    if not body.strip() and allow_empty:
        return model()
    content_type = request.content_type
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"send JSON with Content-Type: application/json, not {content_type!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        details = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in details):
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {details[0]['msg']}") from None
        if any(e["type"] == "model_type" and not e["loc"] for e in details):
            raise ApiError(422, "validation_error", "the body must be a JSON object",
                           [{"field": ROOT_FIELD, "message": "must be a JSON object"}]) from None
        # pydantic-core parsed these bytes already, so the same parser reads them again.
        data = json_input.loads(body)
        raise ApiError(422, "validation_error", "the request body is not valid", validation_errors(exc, data)) from None
