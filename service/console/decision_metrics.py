"""`countersign_time_to_decision_seconds{policy,outcome}`: observed once, when an approval
reaches its final state. Per policy only: `/metrics` is unauthenticated, so no reviewer's
name is ever a label (the console shows per-reviewer figures behind its login).

Subscribed to `Runs.on_approval_changed`, which runs in the transaction that changed the
approval; that listener fires for other changes too (a vote short of the quorum, a delivery,
a reminder), so only a change whose `decided_at` is this very transaction counts.
"""

from __future__ import annotations

import sqlalchemy as sa
from prometheus_client import Histogram

from ..domain import ApprovalStatus
from ..store import tables as t
from ..store.db import Tx

TIME_TO_DECISION = Histogram(
    "countersign_time_to_decision_seconds",
    "From an approval being requested to its final state (approved, rejected, expired, cancelled), per policy",
    ["policy", "outcome"],
    buckets=(60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 86400, 2 * 86400, 3 * 86400, 7 * 86400),
)

_APPROVAL = (sa.select(t.approvals.c.status, t.approvals.c.policy["name"].as_string().label("policy"),
                       t.approvals.c.created_at, t.approvals.c.decided_at)
             .where(t.approvals.c.id == sa.bindparam("approval_id")))


async def observe_decision(tx: Tx, approval_id: str) -> None:
    row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).first()
    if row is None or row.status == ApprovalStatus.PENDING.value or row.decided_at != tx.now:
        return
    seconds = max(0.0, (row.decided_at - row.created_at).total_seconds())
    tx.after_commit(lambda: TIME_TO_DECISION.labels(policy=row.policy or "?", outcome=row.status).observe(seconds))
