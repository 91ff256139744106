"""Reading the audit log back in chain order, in pages so a long log is never all in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from ..audit import AuditEvent
from . import tables as t


async def iter_events(engine: AsyncEngine, page: int = 5000) -> AsyncIterator[AuditEvent]:
    after = 0
    async with engine.connect() as conn:
        while True:
            rows = (await conn.execute(
                sa.select(t.audit_events).where(t.audit_events.c.seq > after).order_by(t.audit_events.c.seq).limit(page)
            )).all()
            for r in rows:
                yield AuditEvent(r.seq, r.at, r.run_id, r.kind, r.actor, r.data, r.prev_hash, r.hash, r.alg)
            if len(rows) < page:
                return
            after = rows[-1].seq


async def head(engine: AsyncEngine) -> tuple[int, str]:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(t.audit_head.c.seq, t.audit_head.c.hash))).one()
        return row.seq, row.hash
