"""The one decision path: API, Teams and email reviewers all call `Decisions.decide`.

The approval row is changed by compare-and-set on its `version`, so the first valid
decision wins even across processes; a repeat or a lost race changes nothing and reports
the state that won. Who decides is checked here against the stored policy, never taken
from the caller's payload.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from . import metrics
from .domain import (
    AlreadyDecided,
    Approval,
    ApprovalStatus,
    Decision,
    DecisionOutcome,
    DecisionRequest,
    DeliveryStatus,
    EmailAction,
    NotAllowed,
    RunStatus,
    apply_decision,
)
from .jobs import JobQueue
from .policy import Policy, check_reviewer
from .domain import NotFound
from .runs import GatedOutcome, Runs
from .store import tables as t
from .store.db import Store, Tx

SEND_EMAIL_JOB = "send_email"


def _approval_from_row(row: Any) -> Approval:
    return Approval(
        id=row.id, run_id=row.run_id, revision=row.revision, status=ApprovalStatus(row.status),
        action=EmailAction.from_dict(row.action), policy=row.policy, requested_by=row.requested_by,
        created_at=row.created_at, version=row.version, decided_at=row.decided_at, decided_by=row.decided_by,
        approved_sha256=row.approved_sha256, tool_call_id=row.tool_call_id,
    )


class Decisions:
    def __init__(self, store: Store, jobs: JobQueue, runs: Runs, message_id_domain: str) -> None:
        self.store = store
        self.jobs = jobs
        self.runs = runs
        self.message_id_domain = message_id_domain

    async def get_approval(self, approval_id: str) -> Approval:
        async def q(conn: Any) -> Approval:
            row = (await conn.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id))).first()
            if row is None:
                raise NotFound("approval", approval_id)
            return _approval_from_row(row)

        return await self.store.read(q)

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        """Take a decision. Refusals (not allowed, already decided) are outcomes, not errors,
        so that the attempt is audited in the same transaction."""

        async def op(tx: Tx) -> DecisionOutcome:
            row = (await tx.execute(sa.select(t.approvals).where(t.approvals.c.id == request.approval_id))).first()
            if row is None:
                raise NotFound("approval", request.approval_id)
            approval = _approval_from_row(row)
            try:
                check_reviewer(Policy.from_dict(approval.policy), request.reviewer, approval.requested_by)
                new_status, final_action = apply_decision(approval, request)
            except (NotAllowed, AlreadyDecided) as refusal:
                return self._refused(tx, approval, request, refusal)

            won = await tx.execute(
                t.approvals.update()
                .where(t.approvals.c.id == approval.id, t.approvals.c.version == approval.version)
                .values(
                    status=new_status.value, version=approval.version + 1, decided_at=tx.now,
                    decided_by=request.reviewer.id,
                    approved_action=final_action.to_dict() if final_action else None,
                    approved_sha256=final_action.content_sha256() if final_action else None,
                )
            )
            if won.rowcount != 1:  # another process decided between our read and write
                current = (await tx.execute(
                    sa.select(t.approvals.c.status).where(t.approvals.c.id == approval.id))).scalar_one()
                return self._refused(tx, approval, request, AlreadyDecided(
                    f"approval {approval.id} is already {current}", status=current))

            decision = Decision(
                id=str(uuid.uuid4()), approval_id=approval.id, kind=request.kind, reviewer=request.reviewer,
                channel=request.channel, created_at=tx.now, reason=request.reason, final_action=final_action,
            )
            tx.insert(t.decisions, dict(
                id=decision.id, approval_id=approval.id, run_id=approval.run_id, kind=request.kind.value,
                reviewer_id=request.reviewer.id, reviewer_name=request.reviewer.name,
                reviewer_email=request.reviewer.email, channel=request.channel.value, reason=request.reason,
                final_action=final_action.to_dict() if final_action else None, created_at=tx.now,
            ))
            audit_data: dict[str, Any] = {"approval_id": approval.id, "decision_id": decision.id,
                                          "channel": request.channel.value}
            if final_action:
                audit_data["approved_sha256"] = final_action.content_sha256()
            if request.reason:
                audit_data["reason"] = request.reason
            tx.audit(f"decision.{request.kind.value}", run_id=approval.run_id, actor=request.reviewer.id, data=audit_data)
            await self._after_decision(tx, approval, new_status, final_action, decision)
            await self.runs.approval_changed(tx, approval.id)
            tx.after_commit(metrics.DECISIONS.labels(kind=request.kind.value, channel=request.channel.value).inc)
            return DecisionOutcome(approval.id, approval.run_id, decided=True, status=new_status, decision=decision)

        return await self.store.write(op)

    def _refused(
        self, tx: Tx, approval: Approval, request: DecisionRequest, refusal: NotAllowed | AlreadyDecided
    ) -> DecisionOutcome:
        reason = refusal.code
        tx.audit("decision.refused", run_id=approval.run_id, actor=request.reviewer.id,
                 data={"approval_id": approval.id, "attempted": request.kind.value, "channel": request.channel.value,
                       "reason": reason, "message": refusal.message})
        tx.after_commit(metrics.DECISIONS_REFUSED.labels(reason=reason, channel=request.channel.value).inc)
        status = ApprovalStatus(refusal.context.get("status", approval.status.value))
        return DecisionOutcome(approval.id, approval.run_id, decided=False, status=status,
                               detail={"reason": reason, "message": refusal.message})

    async def _after_decision(
        self, tx: Tx, approval: Approval, status: ApprovalStatus, final_action: EmailAction | None, decision: Decision
    ) -> None:
        """What a decision sets in motion.

        Approved: the approved action (the stored draft, or its explicit edit) is delivered;
        for an agent run the agent resumes once the delivery is sent. Rejected: a run with
        a fixed action ends; an agent run resumes with the reason and may draft again."""
        if status is ApprovalStatus.APPROVED:
            assert final_action is not None
            delivery_id = str(uuid.uuid4())
            tx.insert(t.deliveries, dict(
                id=delivery_id, run_id=approval.run_id, approval_id=approval.id, status=DeliveryStatus.QUEUED.value,
                message_id=f"<{uuid.uuid4()}@{self.message_id_domain}>", action=final_action.to_dict(),
                approved_sha256=final_action.content_sha256(), mime=None, mime_sha256=None, sent_sha256=None,
                smtp_reply=None, attempts=0, error=None, created_at=tx.now, sending_at=None, sent_at=None,
            ))
            await self.runs.set_status(tx, approval.run_id, RunStatus.DELIVERING, actor="system",
                                       delivery_id=delivery_id)
            await self.jobs.enqueue(tx, SEND_EMAIL_JOB, {"delivery_id": delivery_id}, run_id=approval.run_id)
        elif approval.tool_call_id:
            await self.runs.gated_outcome(tx, GatedOutcome(
                run_id=approval.run_id, approval_id=approval.id, tool_call_id=approval.tool_call_id,
                status="rejected", reason=decision.reason, decided_by=decision.reviewer.id))
        else:
            await self.runs.finish(tx, approval.run_id, RunStatus.REJECTED, actor=decision.reviewer.id,
                                   failure_reason=decision.reason)
