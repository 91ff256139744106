"""`GET /api/audit`: the audit log in chain order, a page at a time (`audit:read`)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web

from ..audit import AuditEvent
from ..scopes import Scope
from ..store import tables as t
from .body import read_authenticated
from .deps import SERVICES
from .errors import ApiError


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, str(default)))
        if not low <= value <= high:
            raise ValueError
    except ValueError:
        raise ApiError(422, "validation_error", f"invalid {name}",
                       [{"field": name, "message": f"must be an integer from {low} to {high}"}]) from None
    return value


async def list_audit(request: web.Request) -> web.Response:
    await read_authenticated(request, Scope.AUDIT_READ)
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 500, 1, 5000)
    query = (sa.select(t.audit_events).where(t.audit_events.c.seq > after)
             .order_by(t.audit_events.c.seq).limit(limit))

    async def q(conn: Any) -> list[AuditEvent]:
        return [AuditEvent(r.seq, r.at, r.run_id, r.kind, r.actor, r.data, r.prev_hash, r.hash, r.alg)
                for r in await conn.execute(query)]

    events = await request.app[SERVICES].store.read(q)
    return web.json_response({"items": [e.to_dict() for e in events],
                              "next_after": events[-1].seq if len(events) == limit else None})
