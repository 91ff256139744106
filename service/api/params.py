"""Ids taken from the path or the query string, checked before they reach the store.

Every id is at most 36 printable characters (`store.tables.ID`); anything else cannot name a
row, and PostgreSQL refuses some of it outright (a NUL byte), so it is answered here."""

from __future__ import annotations

from aiohttp import web

from .errors import ApiError

MAX_ID_LENGTH = 36


def valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def path_id(request: web.Request, name: str, what: str) -> str:
    """The path parameter `name`, or 404: an id that cannot exist names nothing."""
    value = request.match_info[name]
    if not valid_id(value):
        raise ApiError(404, "not_found", f"{what} not found (not a valid {what} id)")
    return value


def query_id(request: web.Request, name: str) -> str | None:
    """The optional query parameter `name`, or 422 naming it."""
    value = request.query.get(name)
    if value is not None and not valid_id(value):
        raise ApiError(422, "validation_error", f"invalid {name}",
                       [{"field": name, "message": f"must be an id of 1-{MAX_ID_LENGTH} printable characters"}])
    return value
