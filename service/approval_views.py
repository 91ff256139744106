"""What a reviewer channel shows of an approval (a Teams card, the email review page): the
approval with its decision and delivery, read from the store or taken from the outcome of
the decision that was just made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from adaptive_cards import (
    PROGRESS_LINE_CHARS,
    PROGRESS_LINES,
    ApprovalView,
    ChangeHunk,
    ChangeLine,
    ChangesView,
    DeliveryView,
    SourceView,
)

from .domain import Approval, ApprovalStatus, DecisionKind, DecisionOutcome, NotFound
from .policy import Policy
from .store import tables as t
from .store.db import Store
from .text_diff import EditDiff, diff_edit, first_draft
from .votes import Added, multi_vote, progress_lines, tally, votes_of


@dataclass(frozen=True, slots=True)
class ApiLinks:
    """Where a card points for what it cannot show: the ops API under PUBLIC_URL."""

    public_url: str

    def run(self, run_id: str) -> str:
        return f"{self.public_url}/api/runs/{run_id}"

    def decisions(self, approval_id: str) -> str:
        return f"{self.public_url}/api/approvals/{approval_id}/decisions"


def _view_query() -> sa.Select[Any]:
    # One round trip: the approval, its latest decision and its delivery. Built once,
    # because building it costs more than running it.
    approval_id: sa.BindParameter[str] = sa.bindparam("approval_id")
    latest = (sa.select(t.decisions.c.id).where(t.decisions.c.approval_id == approval_id)
              .order_by(t.decisions.c.created_at.desc()).limit(1).scalar_subquery())
    d, v = t.decisions.alias("d"), t.deliveries.alias("v")
    return (
        sa.select(t.approvals, d.c.reviewer_name, d.c.reviewer_email, d.c.reviewer_id, d.c.reason, d.c.actor,
                  d.c.kind.label("decision_kind"), d.c.id.label("decision_id"), v.c.status.label("delivery_status"),
                  v.c.smtp_reply, v.c.error.label("delivery_error"), v.c.sent_at, v.c.sending_at,
                  v.c.created_at.label("delivery_created_at"), v.c.id.label("delivery_id"))
        .select_from(t.approvals.outerjoin(d, d.c.id == latest).outerjoin(v, v.c.approval_id == t.approvals.c.id))
        .where(t.approvals.c.id == approval_id)
    )


_VIEW = _view_query()
_VOTES_OF = sa.select(t.decisions).where(t.decisions.c.approval_id == sa.bindparam("approval_id")).order_by(
    t.decisions.c.created_at)


def _sources(stored: Any) -> tuple[SourceView, ...]:
    return tuple(SourceView(title=s["title"], location=s.get("location"), snippet=s.get("snippet"))
                 for s in stored or ())


def _delegable(policy: Policy) -> bool:
    return not policy.anyone and bool(policy.delegates or policy.timers.escalate_to)


def shown_decider(reviewer: str, on_behalf_by: str | None) -> str:
    """A decision an API key took for a reviewer says so wherever it is shown."""
    return f"{on_behalf_by} on behalf of {reviewer}" if on_behalf_by else reviewer


def changes_view(diff: EditDiff | None) -> ChangesView | None:
    """The card's view of what an edit changed (service.text_diff)."""
    if diff is None:
        return None
    subject = None
    if diff.subject:
        lines = [line for hunk in diff.subject.hunks for line in hunk.lines]
        subject = ("\n".join(x.text for x in lines if x.kind == "removed"),
                   "\n".join(x.text for x in lines if x.kind == "added"))
    hunks = tuple(ChangeHunk(draft_line=hunk.old_start if hunk.old_count else hunk.old_start - 1,
                             lines=tuple(ChangeLine(x.kind, x.text) for x in hunk.lines))
                  for hunk in (diff.body.hunks if diff.body else ()))
    return ChangesView(subject=subject, hunks=hunks)


async def load_view(store: Store, approval_id: str, links: ApiLinks) -> ApprovalView:
    async def q(conn: Any) -> ApprovalView:
        row = (await conn.execute(_VIEW, {"approval_id": approval_id})).first()
        if row is None:
            raise NotFound("approval", approval_id)
        # Once approved, a card shows what was approved (the edit), not the draft.
        action = row.approved_action or row.action
        policy = Policy.from_dict(row.policy or {})
        decided = row.decision_id is not None
        decided_by = (shown_decider(row.reviewer_name or row.reviewer_email or row.reviewer_id, row.actor)
                      if decided else row.decided_by)
        progress: tuple[str, ...] = ()
        rows = []
        # Edits that replaced the text (draft_version > 1) only happen under multi-vote policies.
        if multi_vote(policy) or policy.timers.any or row.draft_version > 1:
            rows = (await conn.execute(_VOTES_OF, {"approval_id": row.id})).all()
        if multi_vote(policy) or policy.timers.any:
            current = tally(policy, votes_of(rows), draft_version=row.draft_version,
                            added=[Added.from_dict(a) for a in row.added_reviewers or ()])
            progress = progress_lines(policy, current, remind_at=row.remind_at, escalate_at=row.escalate_at,
                                      expire_at=row.expire_at)
        changes = None
        if row.status == "approved" and row.approved_action is not None:
            draft = first_draft(row.action, [(d.draft_version or 1, d.replaced_action) for d in rows])
            changes = changes_view(diff_edit(draft, row.approved_action))
        return ApprovalView(
            approval_id=row.id, run_id=row.run_id, revision=row.revision, status=row.status,
            draft_version=row.draft_version, progress=progress, delegable=_delegable(policy),
            to=tuple(action["to"]), cc=tuple(action.get("cc") or ()), subject=action["subject"], body=action["body"],
            in_reply_to=action.get("in_reply_to"), requested_by=row.requested_by, policy=policy.name,
            reviewers=policy.reviewers, anyone=policy.anyone, decided_by=decided_by,
            decided_at=row.decided_at, read_at=links.run(row.run_id), decide_at=links.decisions(row.id),
            reason=row.reason if decided else None,
            edited=decided and row.decision_kind == "edit", changes=changes,
            sources=_sources(row.sources),
            delivery=DeliveryView(status=row.delivery_status, detail=row.smtp_reply or row.delivery_error,
                                  at=row.sent_at or row.sending_at or row.delivery_created_at)
            if row.delivery_id is not None else None,
        )

    return await store.read(q)


def decided_view(outcome: DecisionOutcome, links: ApiLinks) -> ApprovalView:
    """The view `load_view` would read right after the decision in `outcome` committed."""
    approval, decision, delivery = outcome.approval, outcome.decision, outcome.delivery
    if approval is None or decision is None:
        raise ValueError(f"outcome for approval {outcome.approval_id} is not a decision taken")
    action = decision.final_action or approval.action
    reviewer = decision.reviewer
    policy = Policy.from_dict(approval.policy)
    changes = None
    if approval.status is ApprovalStatus.APPROVED and outcome.drafted is not None:
        changes = changes_view(diff_edit(outcome.drafted.to_dict(), action.to_dict()))
    return ApprovalView(
        approval_id=approval.id, run_id=approval.run_id, revision=approval.revision, status=approval.status.value,
        draft_version=approval.draft_version, progress=progress_lines(policy, outcome.tally),
        delegable=_delegable(policy),
        to=action.to, cc=action.cc, subject=action.subject, body=action.body, in_reply_to=action.in_reply_to,
        requested_by=approval.requested_by, policy=policy.name, reviewers=policy.reviewers,
        anyone=policy.anyone, read_at=links.run(approval.run_id), decide_at=links.decisions(approval.id),
        decided_by=shown_decider(reviewer.name or reviewer.email or reviewer.id, decision.on_behalf_by),
        decided_at=approval.decided_at,
        reason=decision.reason, edited=decision.kind is DecisionKind.EDIT, changes=changes,
        sources=_sources(approval.sources),
        delivery=DeliveryView(status=delivery.status.value, detail=delivery.detail, at=delivery.at)
        if delivery is not None else None,
    )


def pending_view(approval: Approval, links: ApiLinks) -> ApprovalView:
    """The pending card's view of a stored approval, as `load_view` reads it (for `CardFit`)."""
    policy = Policy.from_dict(approval.policy)
    action = approval.action
    return ApprovalView(
        approval_id=approval.id, run_id=approval.run_id, revision=approval.revision, status="pending",
        draft_version=approval.draft_version, delegable=_delegable(policy),
        # The votes are not known here: judged with the largest notice a card can carry.
        progress=(("x" * PROGRESS_LINE_CHARS,) * PROGRESS_LINES) if multi_vote(policy) or policy.timers.any else (),
        to=action.to, cc=action.cc, subject=action.subject, body=action.body, in_reply_to=action.in_reply_to,
        requested_by=approval.requested_by, policy=policy.name, reviewers=policy.reviewers,
        anyone=policy.anyone, sources=_sources(approval.sources),
        read_at=links.run(approval.run_id), decide_at=links.decisions(approval.id),
    )
