"""The one decision path: API, Teams and email reviewers all call `Decisions.decide`.

Every decision is a vote (a decisions row); the policy's mode counts them (service/votes.py).
Each vote changes the approval row by compare-and-set on its `version`, so votes are
counted one after the other and the final state is reached once, even across processes: a
vote that lost a race reads the approval again and is counted against what won (a vote on
a settled approval changes nothing and reports the state that won). Who votes is checked
here against the stored policy, never taken from the caller's payload; a second vote from
the same reviewer on the same text is refused with the first one.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from . import metrics
from .audit_summaries import AuditSummaries
from .audit_throttle import AuditThrottle, Subject
from .domain import (
    EMAIL_NEEDED,
    AlreadyDecided,
    AlreadyVoted,
    Approval,
    ApprovalStatus,
    Channel,
    Contended,
    Decision,
    DecisionKind,
    DecisionOutcome,
    DecisionRequest,
    DelegationOutcome,
    DelegationRequest,
    DeliveryState,
    DeliveryStatus,
    DraftChanged,
    EmailAction,
    NotAllowed,
    NotFound,
    PersonLookup,
    Reviewer,
    RunStatus,
    apply_decision,
)
from .jobs import JobQueue
from .mail.message import CONTENT_HASH_VERSION
from .mail.message import approved_sha256 as visible_sha256
from .policy import ExpiryOutcome, Policy, needs_email, requester_unmatched
from .runs import GatedOutcome, Runs
from .store import tables as t
from .store.db import Store, Tx
from .text_diff import first_draft
from .votes import DELEGATION, Added, Tally, Vote, check_vote, holders, multi_vote, stage_of_reviewer, stages_of, tally

SEND_EMAIL_JOB = "send_email"
SYSTEM_ACTOR = "system"
# A vote that lost its compare-and-set is counted again against what won; on SQLite (one
# writer) it never loses, on PostgreSQL each retry follows a vote that was committed.
_CAS_ATTEMPTS = 20


class _LostRace:
    pass


_LOST_RACE = _LostRace()


def _approval_from_row(row: Any) -> Approval:
    return Approval(
        id=row.id, run_id=row.run_id, revision=row.revision, status=ApprovalStatus(row.status),
        action=EmailAction.from_dict(row.action), policy=row.policy, requested_by=row.requested_by,
        created_at=row.created_at, version=row.version, decided_at=row.decided_at, decided_by=row.decided_by,
        approved_sha256=row.approved_sha256, tool_call_id=row.tool_call_id, sources=tuple(row.sources or ()),
        draft_version=row.draft_version, stage=row.stage, added_reviewers=tuple(row.added_reviewers or ()),
    )


def added_of(approval: Approval) -> list[Added]:
    return [Added.from_dict(a) for a in approval.added_reviewers]


# The votes on one text of an approval (delegations are not votes).
_VOTES = (sa.select(t.decisions.c.slot, t.decisions.c.kind, t.decisions.c.stage, t.decisions.c.draft_version,
                    t.decisions.c.reviewer_id, t.decisions.c.reviewer_name, t.decisions.c.reviewer_email,
                    t.decisions.c.reviewer_upn,
                    t.decisions.c.created_at, t.decisions.c.channel, t.decisions.c.id)
          .where(t.decisions.c.approval_id == sa.bindparam("approval_id"),
                 t.decisions.c.draft_version == sa.bindparam("draft_version"),
                 t.decisions.c.slot.is_not(None), t.decisions.c.kind != DecisionKind.DELEGATE.value)
          .order_by(t.decisions.c.created_at))


async def read_votes(conn: Any, approval_id: str, draft_version: int) -> list[Vote]:
    """On a read connection or in a store op's `Tx`."""
    rows = (await conn.execute(_VOTES, {"approval_id": approval_id, "draft_version": draft_version})).all()
    return [Vote(slot=r.slot, approve=r.kind != DecisionKind.REJECT.value, stage=r.stage or 0,
                 draft_version=r.draft_version, reviewer_id=r.reviewer_id,
                 reviewer_name=r.reviewer_name or r.reviewer_email, at=r.created_at,
                 reviewer_email=r.reviewer_email, reviewer_upn=r.reviewer_upn) for r in rows]


async def current_tally(conn: Any, approval: Approval) -> Tally:
    votes = await read_votes(conn, approval.id, approval.draft_version)
    return tally(Policy.from_dict(approval.policy), votes, draft_version=approval.draft_version,
                 added=added_of(approval))


# Built once: a click waits for these, and building a statement costs more than running it.
_APPROVAL = sa.select(t.approvals).where(t.approvals.c.id == sa.bindparam("approval_id"))
_CLAIM = (t.approvals.update()
          .where(t.approvals.c.id == sa.bindparam("approval_id"), t.approvals.c.version == sa.bindparam("seen"))
          .values(version=t.approvals.c.version + 1,
                  **{name: sa.bindparam(name, type_=t.approvals.c[name].type)
                     for name in ("status", "decided_at", "decided_by", "approved_action", "approved_sha256",
                                  "content_hash_version", "draft_version", "stage", "action")}))
# The texts the edits of an approval replaced (multi-vote policies), to find the first draft.
_REPLACED = (sa.select(t.decisions.c.draft_version, t.decisions.c.replaced_action)
             .where(t.decisions.c.approval_id == sa.bindparam("approval_id"),
                    t.decisions.c.kind == DecisionKind.EDIT.value))
# An expiry that fails closed ends the approval with its timers: the columns go in the
# same statement, the queued timer jobs with the run's other jobs (cancel_for_run).
_CLAIM_ENDING_TIMERS = _CLAIM.values(remind_at=None, escalate_at=None, expire_at=None)
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
                 mail_from: str, mail_reply_to: str | None, refusals: AuditThrottle | None = None) -> None:
        self.store = store
        # Refused attempts are audited once per (approval, who, what, why) a minute: anyone
        # with a credential could otherwise grow the audit log as fast as we answer.
        self.refusals = refusals or AuditThrottle()
        self.refusal_summaries = AuditSummaries(store, self.refusals)
        # For approvals created before From/Reply-To were frozen on them (migration 0005):
        # the settings at the decision, frozen on the delivery from then on.
        self.mail_from = mail_from
        self.mail_reply_to = mail_reply_to
        self.jobs = jobs
        self.runs = runs
        self.message_id_domain = message_id_domain
        # Who a channel knows a person to be under their other ids (Teams' member records),
        # set where the channels are wired: one person is one voter whatever id they use.
        self.people: PersonLookup | None = None

    async def _known_as(self, tx: Tx, reviewer: Reviewer) -> Reviewer:
        """`reviewer` with the ids a channel knows for the same person (their email for an
        object id, their object id for an email); as it is when nobody (or several) match."""
        if self.people is None:
            return reviewer
        person = await self.people(tx, reviewer.email or reviewer.id)  # found by that id, so the same person
        if person is None:
            return reviewer
        return replace(reviewer, email=reviewer.email or person.email, upn=reviewer.upn or person.upn,
                       aliases=reviewer.aliases | person.identities())

    async def decide(self, request: DecisionRequest) -> DecisionOutcome:
        """Take a decision. Refusals (not allowed, already decided) are outcomes, not errors,
        so that the attempt is audited in the same transaction."""

        attempt = object()  # this call, however many times its op runs (AuditThrottle)

        async def op(tx: Tx) -> DecisionOutcome | None:
            # Expected conditions are results, not exceptions: an op that raises makes the
            # store run its whole batch again, one transaction per op.
            for _ in range(_CAS_ATTEMPTS):
                row = (await tx.execute(_APPROVAL, {"approval_id": request.approval_id})).first()
                if row is None:
                    return None
                result = await self._vote(tx, row, request, attempt)
                if result is not _LOST_RACE:
                    assert not isinstance(result, _LostRace)
                    return result
            raise Contended(f"approval {request.approval_id} changed {_CAS_ATTEMPTS} times while this vote was "
                            "counted; it was not recorded: try again")

        outcome = await self.store.write(op)
        await self.refusal_summaries.flush()  # a burst of refusals that stopped, of any key
        if outcome is None:
            raise NotFound("approval", request.approval_id)
        return outcome

    async def _vote(self, tx: Tx, row: Any, request: DecisionRequest,
                    attempt: object) -> DecisionOutcome | _LostRace:
        approval = _approval_from_row(row)
        policy = Policy.from_dict(approval.policy)
        reviewer = request.reviewer
        added = added_of(approval)
        email_needed = needs_email(policy, approval.requested_by, [a.identity for a in added])
        if email_needed and request.known_email is None:
            reviewer = await self._known_as(tx, reviewer)  # an API key bound to one id, say
        if email_needed and not (reviewer.email or reviewer.upn):
            known = await request.known_email(tx) if request.known_email is not None else None
            if known is not None and (known[0] or known[1]):
                email, upn = known
                reviewer = replace(reviewer, email=email or upn, upn=upn)
            elif request.can_resolve_email:
                return DecisionOutcome(approval.id, approval.run_id, decided=False, status=approval.status,
                                       detail={"reason": EMAIL_NEEDED})
            elif request.email_unresolved:
                return self._refused(tx, approval, request, attempt, NotAllowed(
                    "Countersign could not look up your email address, so it cannot check that you did not "
                    "request this yourself; nothing was decided. Try again later, or decide through the API.",
                    reviewer=reviewer.id, policy=policy.name))
            elif request.kind is not DecisionKind.REJECT and requester_unmatched(policy, approval.requested_by,
                                                                                  reviewer):
                # A rejection fails closed: the requester rejecting their own request harms nothing.
                return self._refused(tx, approval, request, attempt, NotAllowed(
                    f"this run was requested by an email address and {reviewer.id!r} carries none, so Countersign "
                    "cannot check that the reviewer did not request it themselves; nothing was decided. Decide with "
                    "a key bound to the reviewer's email (countersign keys create --reviewer EMAIL).",
                    reviewer=reviewer.id, policy=policy.name))
        multi = multi_vote(policy)
        votes = await read_votes(tx, approval.id, approval.draft_version) if multi else []
        before = tally(policy, votes, draft_version=approval.draft_version, added=added)
        try:
            new_status, final_action = apply_decision(approval, request)
            # Not saying which text one read is fine only while there was one text: after an
            # edit, an Approve or Edit must name the version it is about (a reject fails closed).
            if (request.draft_version != approval.draft_version and request.kind is not DecisionKind.REJECT
                    and (request.draft_version is not None or approval.draft_version > 1)):
                raise DraftChanged(
                    f"the text of approval {approval.id} was edited since (now version {approval.draft_version}, "
                    + (f"you saw version {request.draft_version}); " if request.draft_version is not None
                       else "you did not say which you read: send `draft_version`); ")
                    + "read it again before approving",
                    draft_version=approval.draft_version)
            slot = check_vote(policy, before, added, reviewer, approval.requested_by)
            # The same slot, or the same person holding another slot under another of their
            # identities (a policy naming them by object id and email, or a delegation to one).
            first = next((v for v in votes if v.slot == slot or v.cast_by(reviewer.identities())), None)
            if first is not None:
                raise AlreadyVoted(
                    f"{first.reviewer_name or first.reviewer_id} already voted "
                    f"{'approve' if first.approve else 'reject'} on this text of approval {approval.id} "
                    f"at {first.at.isoformat()}", first_vote={
                        "reviewer": first.reviewer_id, "approve": first.approve, "at": first.at.isoformat(),
                        "draft_version": first.draft_version, "stage": first.stage + 1})
            refusal_text = (request.approval_refusal(approval)
                            if request.approval_refusal is not None and final_action is not None else None)
            if refusal_text:
                raise NotAllowed(refusal_text, reviewer=reviewer.id, policy=policy.name)
        except (NotAllowed, AlreadyDecided, AlreadyVoted, DraftChanged) as refusal:
            return self._refused(tx, approval, request, attempt, refusal)

        # An edit under a multi-vote mode is a new text: the votes cast for the old one stay
        # on the record but do not count, so what is sent is what the counted votes approved.
        new_text = multi and request.kind is DecisionKind.EDIT
        draft_version = approval.draft_version + 1 if new_text else approval.draft_version
        asked_action = final_action if new_text and final_action is not None else approval.action
        vote = Vote(slot=slot, approve=request.kind is not DecisionKind.REJECT, stage=before.stage,
                    draft_version=draft_version, reviewer_id=reviewer.id, reviewer_name=reviewer.name or reviewer.email,
                    at=tx.now)
        after = tally(policy, [vote] if new_text else [*votes, vote], draft_version=draft_version, added=added)
        new_status = after.status
        final = new_status is not ApprovalStatus.PENDING
        if new_status is not ApprovalStatus.APPROVED:
            final_action = None

        sender, reply_to = ((row.mail_from, row.mail_reply_to) if row.mail_from
                            else (self.mail_from, self.mail_reply_to))
        # Covers From, Reply-To and the HTML part as the templates render them now:
        # the delivery refuses a message that shows anything else.
        approved_sha256 = (visible_sha256(final_action, sender=sender, reply_to=reply_to)
                           if final_action else None)
        won = await tx.execute(_CLAIM, {
            "approval_id": approval.id, "seen": approval.version, "status": new_status.value,
            "decided_at": tx.now if final else None, "decided_by": reviewer.id if final else None,
            "approved_action": final_action.to_dict() if final_action else None,
            "approved_sha256": approved_sha256,
            "content_hash_version": CONTENT_HASH_VERSION if final_action else None,
            "draft_version": draft_version, "stage": after.stage, "action": asked_action.to_dict(),
        })
        if won.rowcount != 1:  # another vote or process changed it between our read and write
            return _LOST_RACE
        drafted = None
        if new_status is ApprovalStatus.APPROVED:
            # The text first drafted: the one before this vote, unless an earlier edit replaced it
            # (read before this vote's row is queued, so the decisions insert stays batched).
            drafted = approval.action
            if approval.draft_version > 1:
                replaced = (await tx.execute(_REPLACED, {"approval_id": approval.id})).all()
                drafted = EmailAction.from_dict(first_draft(approval.action.to_dict(),
                                                            [(r.draft_version or 1, r.replaced_action)
                                                             for r in replaced]))

        decision = Decision(
            id=str(uuid.uuid4()), approval_id=approval.id, kind=request.kind, reviewer=reviewer,
            channel=request.channel, created_at=tx.now, reason=request.reason, final_action=final_action,
            on_behalf_by=request.on_behalf_by,
        )
        # What the vote approved: the text as approved, or an edit's text while more votes are needed.
        recorded = final_action or (approval.action.with_edit(request.subject, request.body)
                                    if request.kind is DecisionKind.EDIT else None)
        tx.insert(t.decisions, dict(
            id=decision.id, approval_id=approval.id, run_id=approval.run_id, kind=request.kind.value,
            reviewer_id=reviewer.id, reviewer_name=reviewer.name,
            reviewer_email=reviewer.email, reviewer_upn=reviewer.upn, channel=request.channel.value,
            reason=request.reason,
            final_action=recorded.to_dict() if recorded else None,
            created_at=tx.now, actor=request.on_behalf_by, draft_version=draft_version, stage=before.stage, slot=slot,
            delegate_to=None, replaced_action=approval.action.to_dict() if new_text else None,
        ))
        audit_data: dict[str, Any] = {"approval_id": approval.id, "decision_id": decision.id,
                                      "channel": request.channel.value, **_identity(request)}
        if multi:
            audit_data.update(draft_version=draft_version, stage=before.stage + 1, slot=slot,
                              counted=f"{len(after.approvals)} of {after.required}", outcome=new_status.value)
        if new_text:
            audit_data["replaced_sha256"] = approval.action.content_sha256()
            audit_data["content_sha256"] = asked_action.content_sha256()
        if approved_sha256:
            audit_data["approved_sha256"] = approved_sha256
            audit_data["content_hash_version"] = CONTENT_HASH_VERSION
        if request.reason:
            audit_data["reason"] = request.reason
        tx.audit(f"decision.{request.kind.value}", run_id=approval.run_id, actor=request.actor, data=audit_data)
        if after.stage != before.stage and not final:
            tx.audit("approval.stage_started", run_id=approval.run_id, actor="system", data={
                "approval_id": approval.id, "stage": after.stage + 1, "of": after.stages, "asked": list(after.asked)})
            await self.runs.stage_started(tx, approval.id, after.stage)  # its timers start again
        delivery = None
        if final:
            delivery = await self._after_decision(tx, approval, new_status, final_action, decision,
                                                  (sender, reply_to, approved_sha256))
        await self.runs.approval_changed(tx, approval.id)
        tx.after_commit(metrics.DECISIONS.labels(kind=request.kind.value, channel=request.channel.value).inc)
        updated = replace(approval, status=new_status, version=approval.version + 1,
                          decided_at=tx.now if final else None, decided_by=reviewer.id if final else None,
                          approved_sha256=approved_sha256, action=asked_action, draft_version=draft_version,
                          stage=after.stage)
        return DecisionOutcome(approval.id, approval.run_id, decided=True, status=new_status, decision=decision,
                               approval=updated, delivery=delivery, tally=after, drafted=drafted)

    async def delegate(self, request: DelegationRequest) -> DelegationOutcome:
        """Hand `request.reviewer`'s vote to `request.to`: never to the requester, to someone
        who already voted on this text, or to someone who already holds a vote here (one
        person would count twice); only to whom the policy allows (`delegates`, `escalate_to`,
        anyone under "anyone"). Recorded (a decisions row of kind delegate) and audited."""
        to = request.to.strip()
        attempt = object()  # this call, however many times its op runs (AuditThrottle)

        async def op(tx: Tx) -> DelegationOutcome | None:
            for _ in range(_CAS_ATTEMPTS):
                row = (await tx.execute(_APPROVAL, {"approval_id": request.approval_id})).first()
                if row is None:
                    return None
                approval = _approval_from_row(row)
                policy = Policy.from_dict(approval.policy)
                added = added_of(approval)
                votes = await read_votes(tx, approval.id, approval.draft_version)
                reviewer = await self._known_as(tx, request.reviewer)
                # The delegate under every id a channel knows them by: handing a vote to
                # someone's object id must not let their email's vote count again.
                delegate = await self.people(tx, to) if self.people is not None else None
                to_ids = {to.casefold()} | (delegate.identities() if delegate is not None else set())

                def refuse(reason: str, message: str, approval: Approval = approval) -> DelegationOutcome:
                    # Not keyed by `to`: a key holder could name another delegate each time.
                    key = (approval.id, request.actor, request.reviewer.id, reason)
                    self._audit_refusal(tx, "delegation.refused", key, attempt, run_id=approval.run_id,
                                        actor=request.actor, data={
                                            "approval_id": approval.id, "to": to, "reason": reason,
                                            "message": message, "channel": request.channel.value})
                    return DelegationOutcome(approval.id, approval.run_id, delegated=False,
                                             detail={"reason": reason, "message": message})

                if approval.status is not ApprovalStatus.PENDING:
                    return refuse("already_decided", f"approval {approval.id} is already {approval.status.value}")
                if policy.anyone:
                    return refuse("not_allowed", f"policy {policy.name!r} lets anyone decide: there is no vote to "
                                                 "hand over")
                stage = stage_of_reviewer(policy, added, reviewer, approval.stage)
                if stage is None:
                    return refuse("not_allowed", f"reviewer {request.reviewer.id!r} holds no vote on approval "
                                                 f"{approval.id}")
                slot = next(s for s, h in holders(policy, stage, added).items() if h in reviewer.identities())
                if requester_unmatched(policy, approval.requested_by, reviewer):
                    return refuse("not_allowed", (
                        f"this run was requested by an email address and {request.reviewer.id!r} carries none, so "
                        "Countersign cannot check that the vote handed over is not the requester's"))
                if (not policy.allow_self_approval and approval.requested_by
                        and approval.requested_by.casefold() in reviewer.identities()):
                    # The requester's vote never counts: handing it over would let them pick who
                    # approves in their place.
                    return refuse("not_allowed", f"{request.reviewer.id} requested this action and policy "
                                                 f"{policy.name!r} forbids self-approval: their vote cannot be "
                                                 "handed over")
                if any(v.slot == slot or v.cast_by(reviewer.identities()) for v in votes):
                    return refuse("already_voted", f"{request.reviewer.id} already voted on this text; a vote cast "
                                                   "cannot be handed over")
                handed = next((a for a in added if a.stage == stage and a.handed_by(reviewer.identities())), None)
                if handed is not None:  # one named twice holds two slots, and is still one vote
                    return refuse("already_voted", f"{request.reviewer.id} already handed their vote to "
                                                   f"{handed.identity}")
                folded = to.casefold()
                allowed = {d.casefold() for d in (*policy.delegates, *policy.timers.escalate_to)}
                holders_now = {h for i in range(len(stages_of(policy))) for h in holders(policy, i, added).values()}
                voters = ({v.reviewer_id.casefold() for v in votes} | {v.slot for v in votes}
                          | {v.reviewer_email.casefold() for v in votes if v.reviewer_email}
                          | {v.reviewer_upn.casefold() for v in votes if v.reviewer_upn})
                if to_ids & reviewer.identities():
                    return refuse("invalid_delegate", "a vote cannot be handed to oneself")
                if approval.requested_by and approval.requested_by.casefold() in to_ids:
                    return refuse("invalid_delegate", f"{to} requested this action: a vote can never be handed "
                                                      "to the requester")
                if to_ids & voters:
                    return refuse("invalid_delegate", f"{to} already voted on this approval")
                if to_ids & holders_now:
                    return refuse("invalid_delegate", f"{to} already holds a vote on this approval; handing them "
                                                      "another would count one person twice")
                if folded not in allowed:
                    return refuse("invalid_delegate", f"policy {policy.name!r} does not allow handing a vote to "
                                                      f"{to} (allowed: {', '.join(sorted(allowed)) or 'nobody'})")
                entry = Added(identity=to, slot=slot, via=DELEGATION, stage=stage, at=tx.now, by=request.reviewer.id,
                              by_ids=tuple(sorted(reviewer.identities())))
                won = await tx.execute(
                    t.approvals.update()
                    .where(t.approvals.c.id == approval.id, t.approvals.c.version == approval.version)
                    .values(version=t.approvals.c.version + 1,
                            added_reviewers=[*approval.added_reviewers, entry.to_dict()]))
                if won.rowcount != 1:
                    continue
                tx.insert(t.decisions, dict(
                    id=str(uuid.uuid4()), approval_id=approval.id, run_id=approval.run_id,
                    kind=DecisionKind.DELEGATE.value, reviewer_id=request.reviewer.id,
                    reviewer_name=request.reviewer.name, reviewer_email=request.reviewer.email,
                    reviewer_upn=request.reviewer.upn,
                    channel=request.channel.value, reason=None, final_action=None, created_at=tx.now,
                    actor=request.on_behalf_by, draft_version=approval.draft_version, stage=stage, slot=slot,
                    delegate_to=to, replaced_action=None,
                ))
                data: dict[str, Any] = {"approval_id": approval.id, "to": to, "slot": slot, "stage": stage + 1,
                                        "channel": request.channel.value}
                if request.on_behalf_by:
                    data["on_behalf_of"] = request.reviewer.id
                if request.credential:
                    data["credential"] = request.credential
                tx.audit("approval.delegated", run_id=approval.run_id, actor=request.actor, data=data)
                await self.runs.reviewers_added(tx, approval.id, [to], DELEGATION)
                await self.runs.approval_changed(tx, approval.id)
                return DelegationOutcome(approval.id, approval.run_id, delegated=True, slot=slot)
            raise Contended(f"approval {request.approval_id} changed {_CAS_ATTEMPTS} times during this delegation; "
                            "it was not recorded: try again")

        outcome = await self.store.write(op)
        await self.refusal_summaries.flush()
        if outcome is None:
            raise NotFound("approval", request.approval_id)
        return outcome

    def _audit_refusal(self, tx: Tx, kind: str, key: tuple[str, ...], attempt: object, *, run_id: str, actor: str,
                       data: dict[str, Any]) -> None:
        """Audit a refused attempt, unless the same one (`key`) was audited less than a
        minute ago: then it is counted (`countersign_audit_suppressed_total`), and the
        next one audited says how many were left out before it (`data.suppressed`)."""
        left_out = self.refusals.admit((kind, *key), tx.now, attempt, Subject(kind, run_id, actor, data))
        if left_out is None:
            def count() -> None:
                self.refusals.left_out((kind, *key))
                metrics.AUDIT_SUPPRESSED.labels(kind=kind).inc()

            tx.after_commit(count)
            return
        tx.audit(kind, run_id=run_id, actor=actor, data={**data, "suppressed": left_out} if left_out else data)

    def _refused(
        self, tx: Tx, approval: Approval, request: DecisionRequest, attempt: object,
        refusal: NotAllowed | AlreadyDecided | AlreadyVoted | DraftChanged,
    ) -> DecisionOutcome:
        reason = refusal.code
        # Keyed by who asked (the key, and the reviewer an on-behalf key named), what and why.
        self._audit_refusal(
            tx, "decision.refused", (approval.id, request.actor, request.reviewer.id, request.kind.value, reason),
            attempt, run_id=approval.run_id, actor=request.actor,
            data={"approval_id": approval.id, "attempted": request.kind.value, "channel": request.channel.value,
                  "reason": reason, "message": refusal.message, **_identity(request)})
        tx.after_commit(metrics.DECISIONS_REFUSED.labels(reason=reason, channel=request.channel.value).inc)
        status = ApprovalStatus(refusal.context.get("status", approval.status.value))
        detail: dict[str, Any] = {"reason": reason, "message": refusal.message}
        if "first_vote" in refusal.context:
            detail["first_vote"] = refusal.context["first_vote"]
        return DecisionOutcome(approval.id, approval.run_id, decided=False, status=status, detail=detail)

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

    async def expire(self, tx: Tx, approval_id: str, *, due_at: datetime) -> bool:
        """Settle a still-pending approval whose expiry (`due_at`) has come, as its policy's
        `on_expiry` says: reject (fail closed: the approval `expired`, the run `expired`, an
        agent run's snapshot dropped as by a cancel) or approve (an automatic decision,
        audited as such, and the delivery queued). The same compare-and-set as a vote, so a
        vote racing the expiry either wins (False here) or finds it settled. False too when
        the approval is no longer pending, or this expiry is not the current one. A change
        that leaves the approval pending (an escalation, a vote that did not settle it, on
        PostgreSQL from another process) is read again, as `decide` counts a vote again."""
        for _ in range(_CAS_ATTEMPTS):
            row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).first()
            if row is None or row.status != ApprovalStatus.PENDING.value:
                return False
            if row.expire_at is not None and row.expire_at != due_at:
                return False  # rescheduled: another timer carries the current expiry
            approval = _approval_from_row(row)
            policy = Policy.from_dict(approval.policy)
            # An automatic approval sends the requester's own text, never one a single
            # reviewer's edit put in its place while the other votes were still missing.
            edited = approval.draft_version > 1
            approve = policy.timers.on_expiry is ExpiryOutcome.APPROVE and not edited
            sender, reply_to = ((row.mail_from, row.mail_reply_to) if row.mail_from
                                else (self.mail_from, self.mail_reply_to))
            final_action = approval.action if approve else None
            approved_sha256 = visible_sha256(final_action, sender=sender, reply_to=reply_to) if final_action else None
            status = ApprovalStatus.APPROVED if approve else ApprovalStatus.EXPIRED
            won = await tx.execute(_CLAIM if approve else _CLAIM_ENDING_TIMERS, {
                "approval_id": approval.id, "seen": approval.version, "status": status.value,
                "decided_at": tx.now, "decided_by": SYSTEM_ACTOR,
                "approved_action": final_action.to_dict() if final_action else None,
                "approved_sha256": approved_sha256,
                "content_hash_version": CONTENT_HASH_VERSION if final_action else None,
                "draft_version": approval.draft_version, "stage": approval.stage, "action": approval.action.to_dict(),
            })
            if won.rowcount == 1:
                break
        else:
            raise Contended(f"approval {approval_id} changed {_CAS_ATTEMPTS} times while its expiry was settled; "
                            "the expiry job tries again")
        waited: dict[str, Any] = {"approval_id": approval.id, "due_at": due_at.isoformat(),
                                  "on_expiry": policy.timers.on_expiry.value}
        if policy.timers.on_expiry is ExpiryOutcome.APPROVE and not approve:
            waited["failed_closed"] = ("the text was edited while votes were missing: an automatic approval would "
                                       "send an edit the policy's votes never approved")
        tx.audit("approval.expired", run_id=approval.run_id, actor=SYSTEM_ACTOR, data=waited)
        if approve:
            decision = Decision(id=str(uuid.uuid4()), approval_id=approval.id, kind=DecisionKind.APPROVE,
                                reviewer=Reviewer(id=SYSTEM_ACTOR, name="Countersign (expiry)"),
                                channel=Channel.SYSTEM, created_at=tx.now, final_action=final_action)
            tx.insert(t.decisions, dict(
                id=decision.id, approval_id=approval.id, run_id=approval.run_id, kind=DecisionKind.APPROVE.value,
                reviewer_id=SYSTEM_ACTOR, reviewer_name=decision.reviewer.name, reviewer_email=None, reviewer_upn=None,
                channel=Channel.SYSTEM.value, reason="approved automatically: nobody decided before the expiry",
                final_action=approval.action.to_dict(), created_at=tx.now, actor=None,
                draft_version=approval.draft_version, stage=approval.stage, slot=None, delegate_to=None,
                replaced_action=None))
            tx.audit("decision.approve", run_id=approval.run_id, actor=SYSTEM_ACTOR, data={
                "approval_id": approval.id, "decision_id": decision.id, "channel": Channel.SYSTEM.value,
                "automatic": True, "reason": "on_expiry = approve", "approved_sha256": approved_sha256,
                "content_hash_version": CONTENT_HASH_VERSION})
            await self._after_decision(tx, approval, status, final_action, decision,
                                       (sender, reply_to, approved_sha256))
        else:
            await self.jobs.cancel_for_run(tx, approval.run_id)
            # Nothing will resume the agent: its paused workflow goes, as with a cancel.
            await tx.execute(t.agent_snapshots.delete().where(t.agent_snapshots.c.run_id == approval.run_id))
            await self.runs.finish(tx, approval.run_id, RunStatus.EXPIRED, actor=SYSTEM_ACTOR,
                                   failure_reason=f"nobody decided before the approval expired at {due_at.isoformat()}")
        await self.runs.approval_changed(tx, approval.id)
        return True
