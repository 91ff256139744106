"""The reads console pages need beyond what the API already has (store reads only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..audit import AuditEvent
from ..domain import ApprovalStatus
from ..jobs import Job, JobStatus
from ..store import tables as t
from ..store.db import Store
from .levels import Decided, Waiting


@dataclass(frozen=True, slots=True)
class RunRow:
    """What the runs list shows of a run besides its summary."""

    policy: str
    subject: str | None
    customer: str | None


async def run_rows(store: Store, run_ids: list[str]) -> dict[str, RunRow]:
    if not run_ids:
        return {}
    latest = (sa.select(t.approvals.c.run_id, sa.func.max(t.approvals.c.revision).label("revision"))
              .where(t.approvals.c.run_id.in_(run_ids)).group_by(t.approvals.c.run_id).subquery())
    subjects = (sa.select(t.approvals.c.run_id, t.approvals.c.action)
                .join(latest, sa.and_(latest.c.run_id == t.approvals.c.run_id,
                                      latest.c.revision == t.approvals.c.revision)))

    async def q(conn: Any) -> dict[str, RunRow]:
        runs = (await conn.execute(sa.select(t.runs.c.id, t.runs.c.policy, t.runs.c.customer)
                                   .where(t.runs.c.id.in_(run_ids)))).all()
        subject = {r.run_id: (r.action or {}).get("subject") for r in await conn.execute(subjects)}
        out = {}
        for r in runs:
            customer = r.customer or {}
            shown = customer.get("name") or customer.get("email")
            if customer.get("name") and customer.get("email"):
                shown = f"{customer['name']} <{customer['email']}>"
            out[r.id] = RunRow((r.policy or {}).get("name", "?"), subject.get(r.id), shown)
        return out

    return await store.read(q)


async def dead_jobs(store: Store, limit: int = 200) -> list[Job]:
    query = (sa.select(t.jobs).where(t.jobs.c.status == JobStatus.DEAD.value)
             .order_by(t.jobs.c.updated_at.desc(), t.jobs.c.id.desc()).limit(limit))

    async def q(conn: Any) -> list[Job]:
        return [Job.from_row(r) for r in await conn.execute(query)]

    return await store.read(q)


def _event(r: Any) -> AuditEvent:
    return AuditEvent(r.seq, r.at, r.run_id, r.kind, r.actor, r.data, r.prev_hash, r.hash, r.alg)


async def audit_page(store: Store, before: int | None, limit: int) -> list[AuditEvent]:
    """Newest first, `limit` events with seq below `before`."""
    query = sa.select(t.audit_events).order_by(t.audit_events.c.seq.desc()).limit(limit)
    if before is not None:
        query = query.where(t.audit_events.c.seq < before)

    async def q(conn: Any) -> list[AuditEvent]:
        return [_event(r) for r in await conn.execute(query)]

    return await store.read(q)


async def audit_events_after(store: Store, after: int, limit: int) -> list[AuditEvent]:
    query = (sa.select(t.audit_events).where(t.audit_events.c.seq > after)
             .order_by(t.audit_events.c.seq).limit(limit))

    async def q(conn: Any) -> list[AuditEvent]:
        return [_event(r) for r in await conn.execute(query)]

    return await store.read(q)


async def audit_head(store: Store) -> tuple[int, str]:
    async def q(conn: Any) -> tuple[int, str]:
        row = (await conn.execute(sa.select(t.audit_head.c.seq, t.audit_head.c.hash))).one()
        return row.seq, row.hash

    return await store.read(q)


MAX_LEVEL_ROWS = 20_000  # the service levels page reads at most this many approvals


async def decided_since(store: Store, since: datetime) -> list[Decided]:
    """Approvals that reached a final state since `since`, with each voter's decision time."""
    approvals = (sa.select(t.approvals.c.id, t.approvals.c.status, t.approvals.c.policy, t.approvals.c.created_at,
                           t.approvals.c.decided_at)
                 .where(t.approvals.c.decided_at >= since, t.approvals.c.status != ApprovalStatus.PENDING.value)
                 .order_by(t.approvals.c.decided_at.desc()).limit(MAX_LEVEL_ROWS))
    # The votes of those approvals only: bounded as they are.
    chosen = sa.select(approvals.subquery().c.id)
    votes = (sa.select(t.decisions.c.approval_id, t.decisions.c.reviewer_id, t.decisions.c.created_at)
             .where(t.decisions.c.approval_id.in_(chosen), t.decisions.c.kind != "delegate"))

    async def q(conn: Any) -> list[Decided]:
        by_approval: dict[str, list[tuple[str, datetime]]] = {}
        for v in await conn.execute(votes):
            by_approval.setdefault(v.approval_id, []).append((v.reviewer_id, v.created_at))
        return [Decided(policy=(r.policy or {}).get("name", "?"), status=r.status, created_at=r.created_at,
                        decided_at=r.decided_at, votes=tuple(by_approval.get(r.id, ())))
                for r in await conn.execute(approvals)]

    return await store.read(q)


async def waiting(store: Store) -> list[Waiting]:
    query = (sa.select(t.approvals.c.policy, t.approvals.c.created_at)
             .where(t.approvals.c.status == ApprovalStatus.PENDING.value).limit(MAX_LEVEL_ROWS))

    async def q(conn: Any) -> list[Waiting]:
        return [Waiting((r.policy or {}).get("name", "?"), r.created_at) for r in await conn.execute(query)]

    return await store.read(q)
