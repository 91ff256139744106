"""The one decision path: API, Teams and email reviewers all call `Decisions.decide`.

The approval row is changed by compare-and-set on its `version`, so the first valid
decision wins even across processes; a repeat or a lost race changes nothing and reports
the state that won. Who decides is checked here against the stored policy, never taken
from the caller's payload.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from . import metrics
from .domain import (
    EMAIL_NEEDED,
    AlreadyDecided,
    Approval,
    ApprovalStatus,
    Decision,
    DecisionOutcome,
    DecisionRequest,
    DeliveryState,
    DeliveryStatus,
    EmailAction,
    NotAllowed,
    NotFound,
    RunStatus,
    apply_decision,
)
from .jobs import JobQueue
from .mail.message import CONTENT_HASH_VERSION
from .mail.message import approved_sha256 as visible_sha256
from .policy import Policy, check_reviewer, needs_email
from .runs import GatedOutcome, Runs
from .store import tables as t
from .store.db import Store, Tx

SEND_EMAIL_JOB = "send_email"


def _approval_from_row(row: Any) -> Approval:
    return Approval(
        id=row.id, run_id=row.run_id, revision=row.revision, status=ApprovalStatus(row.status),
        action=EmailAction.from_dict(row.action), policy=row.policy, requested_by=row.requested_by,
        created_at=row.created_at, version=row.version, decided_at=row.decided_at, decided_by=row.decided_by,
        approved_sha256=row.approved_sha256, tool_call_id=row.tool_call_id, sources=tuple(row.sources or ()),
    )


# Built once: a click waits for these, and building a statement costs more than running it.
_APPROVAL = sa.select(t.approvals).where(t.approvals.c.id == sa.bindparam("approval_id"))
_CLAIM = (t.approvals.update()
          .where(t.approvals.c.id == sa.bindparam("approval_id"), t.approvals.c.version == sa.bindparam("seen"))
          .values(version=t.approvals.c.version + 1,
                  **{name: sa.bindparam(name, type_=t.approvals.c[name].type)
                     for name in ("status", "decided_at", "decided_by", "approved_action", "approved_sha256",
                                  "content_hash_version")}))
_STATUS = sa.select(t.approvals.c.status).where(t.approvals.c.id == sa.bindparam("approval_id"))


def _identity(request: DecisionRequest) -> dict[str, str]:
    """Audit data saying who decided through what, beyond the event's actor."""
    out = {}
    if request.on_behalf_by:
        out["on_behalf_of"] = request.reviewer.id
    if request.credential:
        out["credential"] = request.credential
    return out


class Decisions:
    def __init__(self, store: Store, jobs: JobQueue, runs: Runs, message_id_domain: str, *,
                 mail_from: str, mail_reply_to: str | None) -> None:
        self.store = store
        # For approvals created before From/Reply-To were frozen on them (migration 0005):
        # the settings at the decision, frozen on the delivery from then on.
        self.mail_from = mail_from
        self.mail_reply_to = mail_reply_to
        self.jobs = jobs
        self.runs = runs
        self.message_id_domain = message_id_domain

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        """Take a decision. Refusals (not allowed, already decided) are outcomes, not errors,
        so that the attempt is audited in the same transaction."""

        async def op(tx: Tx) -> DecisionOutcome | None:
            # Expected conditions are results, not exceptions: an op that raises makes the
            # store run its whole batch again, one transaction per op.
            row = (await tx.execute(_APPROVAL, {"approval_id": request.approval_id})).first()
            if row is None:
                return None
            approval = _approval_from_row(row)
            policy = Policy.from_dict(approval.policy)
            reviewer = request.reviewer
            if needs_email(policy, approval.requested_by) and not (reviewer.email or reviewer.upn):
                known = await request.known_email(tx) if request.known_email is not None else None
                if known is not None and (known[0] or known[1]):
                    email, upn = known
                    reviewer = replace(reviewer, email=email or upn, upn=upn)
                elif request.can_resolve_email:
                    return DecisionOutcome(approval.id, approval.run_id, decided=False, status=approval.status,
                                           detail={"reason": EMAIL_NEEDED})
                elif request.email_unresolved:
                    return self._refused(tx, approval, request, NotAllowed(
                        "Countersign could not look up your email address, so it cannot check that you did not "
                        "request this yourself; nothing was decided. Try again later, or decide through the API.",
                        reviewer=reviewer.id, policy=policy.name))
            try:
                check_reviewer(policy, reviewer, approval.requested_by)
                new_status, final_action = apply_decision(approval, request)
                refusal_text = (request.approval_refusal(approval)
                                if request.approval_refusal is not None and final_action is not None else None)
                if refusal_text:
                    raise NotAllowed(refusal_text, reviewer=reviewer.id, policy=policy.name)
            except (NotAllowed, AlreadyDecided) as refusal:
                return self._refused(tx, approval, request, refusal)

            sender, reply_to = ((row.mail_from, row.mail_reply_to) if row.mail_from
                                else (self.mail_from, self.mail_reply_to))
            # Covers From, Reply-To and the HTML part as the templates render them now:
            # the delivery refuses a message that shows anything else.
            approved_sha256 = (visible_sha256(final_action, sender=sender, reply_to=reply_to)
                               if final_action else None)
            won = await tx.execute(_CLAIM, {
                "approval_id": approval.id, "seen": approval.version, "status": new_status.value,
                "decided_at": tx.now, "decided_by": reviewer.id,
                "approved_action": final_action.to_dict() if final_action else None,
                "approved_sha256": approved_sha256,
                "content_hash_version": CONTENT_HASH_VERSION if final_action else None,
            })
            if won.rowcount != 1:  # another process decided between our read and write
                current = (await tx.execute(_STATUS, {"approval_id": approval.id})).scalar_one()
                return self._refused(tx, approval, request, AlreadyDecided(
                    f"approval {approval.id} is already {current}", status=current))

            decision = Decision(
                id=str(uuid.uuid4()), approval_id=approval.id, kind=request.kind, reviewer=reviewer,
                channel=request.channel, created_at=tx.now, reason=request.reason, final_action=final_action,
                on_behalf_by=request.on_behalf_by,
            )
            tx.insert(t.decisions, dict(
                id=decision.id, approval_id=approval.id, run_id=approval.run_id, kind=request.kind.value,
                reviewer_id=reviewer.id, reviewer_name=reviewer.name,
                reviewer_email=reviewer.email, channel=request.channel.value, reason=request.reason,
                final_action=final_action.to_dict() if final_action else None, created_at=tx.now,
                actor=request.on_behalf_by,
            ))
            audit_data: dict[str, Any] = {"approval_id": approval.id, "decision_id": decision.id,
                                          "channel": request.channel.value, **_identity(request)}
            if approved_sha256:
                audit_data["approved_sha256"] = approved_sha256
                audit_data["content_hash_version"] = CONTENT_HASH_VERSION
            if request.reason:
                audit_data["reason"] = request.reason
            tx.audit(f"decision.{request.kind.value}", run_id=approval.run_id, actor=request.actor, data=audit_data)
            delivery = await self._after_decision(tx, approval, new_status, final_action, decision,
                                                  (sender, reply_to, approved_sha256))
            await self.runs.approval_changed(tx, approval.id)
            tx.after_commit(metrics.DECISIONS.labels(kind=request.kind.value, channel=request.channel.value).inc)
            after = replace(approval, status=new_status, version=approval.version + 1, decided_at=tx.now,
                            decided_by=reviewer.id, approved_sha256=approved_sha256)
            return DecisionOutcome(approval.id, approval.run_id, decided=True, status=new_status, decision=decision,
                                   approval=after, delivery=delivery)

        outcome = await self.store.write(op)
        if outcome is None:
            raise NotFound("approval", request.approval_id)
        return outcome

    def _refused(
        self, tx: Tx, approval: Approval, request: DecisionRequest, refusal: NotAllowed | AlreadyDecided
    ) -> DecisionOutcome:
        reason = refusal.code
        tx.audit("decision.refused", run_id=approval.run_id, actor=request.actor,
                 data={"approval_id": approval.id, "attempted": request.kind.value, "channel": request.channel.value,
                       "reason": reason, "message": refusal.message, **_identity(request)})
        tx.after_commit(metrics.DECISIONS_REFUSED.labels(reason=reason, channel=request.channel.value).inc)
        status = ApprovalStatus(refusal.context.get("status", approval.status.value))
        return DecisionOutcome(approval.id, approval.run_id, decided=False, status=status,
                               detail={"reason": reason, "message": refusal.message})

    async def _after_decision(
        self, tx: Tx, approval: Approval, status: ApprovalStatus, final_action: EmailAction | None, decision: Decision,
        frozen: tuple[str, str | None, str | None],
    ) -> DeliveryState | None:
        """What a decision sets in motion.

        Approved: the approved action (the stored draft, or its explicit edit) is delivered;
        for an agent run the agent resumes once the delivery is sent. Rejected: a run with
        a fixed action ends; an agent run resumes with the reason and may draft again."""
        if status is ApprovalStatus.APPROVED:
            assert final_action is not None
            sender, reply_to, approved_sha256 = frozen
            delivery_id = str(uuid.uuid4())
            tx.insert(t.deliveries, dict(
                id=delivery_id, run_id=approval.run_id, approval_id=approval.id, status=DeliveryStatus.QUEUED.value,
                message_id=f"<{uuid.uuid4()}@{self.message_id_domain}>", action=final_action.to_dict(),
                approved_sha256=approved_sha256, mime=None, mime_sha256=None, sent_sha256=None,
                smtp_reply=None, attempts=0, error=None, created_at=tx.now, sending_at=None, sent_at=None,
                mail_from=sender, mail_reply_to=reply_to, content_hash_version=CONTENT_HASH_VERSION,
            ))
            await self.runs.set_status(tx, approval.run_id, RunStatus.DELIVERING, actor="system",
                                       delivery_id=delivery_id)
            await self.jobs.enqueue(tx, SEND_EMAIL_JOB, {"delivery_id": delivery_id}, run_id=approval.run_id)
            return DeliveryState(delivery_id, DeliveryStatus.QUEUED, tx.now)
        if approval.tool_call_id:
            await self.runs.gated_outcome(tx, GatedOutcome(
                run_id=approval.run_id, approval_id=approval.id, tool_call_id=approval.tool_call_id,
                status="rejected", reason=decision.reason, decided_by=decision.reviewer.id))
        else:
            await self.runs.finish(tx, approval.run_id, RunStatus.REJECTED,
                                   actor=decision.on_behalf_by or decision.reviewer.id, failure_reason=decision.reason)
        return None
