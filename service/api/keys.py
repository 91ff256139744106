"""`/api/keys`: API keys for a holder of `keys:admin`, who can grant only scopes it holds itself.

The same operations as `countersign keys create|list|revoke`, which work on the database
directly (and so may grant any scope, `decide` for a reviewer included).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ..durations import parse_duration
from ..keys import ApiKey, KeyNameTaken
from ..scopes import NotGrantable, Scope, ScopeRuleError
from ..store.db import utcnow
from .body import parse, read_authenticated
from .deps import SERVICES
from .errors import ApiError
from .schemas import KeyCreateIn


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "name": key.name, "prefix": key.prefix, "scopes": sorted(s.value for s in key.scopes),
        "reviewer": key.reviewer, "status": key.status(utcnow()), "created_by": key.created_by,
        "created_at": key.created_at.isoformat(), "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at), "revoked_by": key.revoked_by,
    }


async def list_keys(request: web.Request) -> web.Response:
    await read_authenticated(request, Scope.KEYS_ADMIN)
    keys = await request.app[SERVICES].keys.list()
    return web.json_response({"items": [key_json(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, Scope.KEYS_ADMIN)
    data = parse(KeyCreateIn, body, request)
    scopes = frozenset(data.scopes)
    beyond = sorted(s.value for s in scopes - principal.scopes)
    if beyond:
        raise ApiError(403, "scope_not_grantable", f"a key can grant only scopes it holds itself; this one lacks "
                       f"{', '.join(beyond)}", [{"field": "scopes", "message": f"not held: {', '.join(beyond)}"}],
                       extensions={"scope": beyond[0]})
    try:
        expires_in = parse_duration(data.expires) if data.expires is not None else None
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), [{"field": "expires", "message": str(exc)}]) from None
    try:
        created = await services.keys.create(name=data.name, scopes=scopes, reviewer=data.reviewer,
                                              expires_in=expires_in, created_by=principal.actor, grantor=principal)
    except NotGrantable as exc:
        raise ApiError(403, "scope_not_grantable", str(exc), [{"field": exc.field, "message": str(exc)}]) from None
    except ScopeRuleError as exc:
        raise ApiError(422, "validation_error", str(exc), [{"field": exc.field, "message": str(exc)}]) from None
    except KeyNameTaken as exc:
        raise ApiError(409, "key_name_taken", exc.message, [{"field": "name", "message": exc.message}]) from None
    return web.json_response({**key_json(created.key), "key": created.secret}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    _body, principal = await read_authenticated(request, Scope.KEYS_ADMIN)
    name = request.match_info["name"]
    if len(name) > 128 or not name.isprintable():
        raise ApiError(404, "not_found", "key not found (not a valid key name)")
    key = await services.keys.revoke(name, by=principal.actor)
    return web.json_response(key_json(key))
