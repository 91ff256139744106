"""What a card shows, read from the store: an approval with its decision and delivery."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from adaptive_cards import ApprovalView, DeliveryView, SourceView

from ..domain import NotFound
from ..store import tables as t
from ..store.db import Store


async def load_view(store: Store, approval_id: str) -> ApprovalView:
    async def q(conn: Any) -> ApprovalView:
        approval = (await conn.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id))).first()
        if approval is None:
            raise NotFound("approval", approval_id)
        decision = (await conn.execute(
            sa.select(t.decisions).where(t.decisions.c.approval_id == approval_id)
            .order_by(t.decisions.c.created_at.desc()).limit(1)
        )).first()
        delivery = (await conn.execute(sa.select(t.deliveries).where(t.deliveries.c.approval_id == approval_id))).first()
        # Once approved, a card shows what was approved (the edit), not the draft.
        action = approval.approved_action or approval.action
        policy = approval.policy or {}
        decided_by = None
        if decision is not None:
            decided_by = decision.reviewer_name or decision.reviewer_email or decision.reviewer_id
        elif approval.decided_by:
            decided_by = approval.decided_by
        return ApprovalView(
            approval_id=approval.id, run_id=approval.run_id, revision=approval.revision, status=approval.status,
            to=tuple(action["to"]), cc=tuple(action.get("cc") or ()), subject=action["subject"], body=action["body"],
            in_reply_to=action.get("in_reply_to"), requested_by=approval.requested_by, policy=policy.get("name"),
            reviewers=tuple(policy.get("reviewers") or ()), decided_by=decided_by, decided_at=approval.decided_at,
            reason=decision.reason if decision is not None else None,
            edited=decision is not None and decision.kind == "edit",
            sources=tuple(SourceView(title=s["title"], location=s.get("location"), snippet=s.get("snippet"))
                          for s in approval.sources or ()),
            delivery=DeliveryView(status=delivery.status, detail=delivery.smtp_reply or delivery.error,
                                  at=delivery.sent_at or delivery.sending_at or delivery.created_at)
            if delivery is not None else None,
        )

    return await store.read(q)
