"""Who gets a review email when, and the job that sends it (`email_review.send`).

In the transaction that changes the approval, the channel queues one job per address:
the request (a policy's `email_reviewers`, when the approval is created), a reminder (to
those of them still asked), an escalation or a delegation (to an email address added as a
reviewer of a policy that uses email), and the Teams fallback (`email_fallback`: when a
card cannot be posted for good, to the policy's reviewers named by email). The job mints
the link when it sends (a retried job sends a fresh one; the old one was never delivered
or is as good), writes its hash, then hands the message to the same SMTP transport the
customer emails use. A decision in any channel ends every link's use: the page then shows
the outcome.
"""

from __future__ import annotations

import uuid
from email.utils import parseaddr
from typing import Any

import sqlalchemy as sa

from adaptive_cards import ApprovalView

from ..approval_views import ApiLinks, load_view
from ..jobs import Job, JobHandler, JobQueue
from ..mail.smtp import SmtpTransport
from ..policy import Policy
from ..runs import NewApproval
from ..store import tables as t
from ..store.db import Op, Store, Tx
from ..timers import Reminder
from . import links
from .handlers import ROUTE
from .message import RequestEmail, build_code, build_request

SEND_REQUEST_JOB = "email_review.send"
_APPROVAL = sa.select(t.approvals.c.policy, t.approvals.c.run_id, t.approvals.c.expire_at).where(
    t.approvals.c.id == sa.bindparam("approval_id"))
_FALLBACK_SENT = sa.select(t.review_links.c.id).where(
    t.review_links.c.approval_id == sa.bindparam("approval_id"), t.review_links.c.purpose == "fallback",
    sa.func.lower(t.review_links.c.reviewer) == sa.bindparam("reviewer")).limit(1)


def email_reviewers(policy: Policy) -> tuple[str, ...]:
    """Who the policy asks by email: `email_reviewers`."""
    return policy.email.reviewers


def fallback_reviewers(policy: Policy) -> tuple[str, ...]:
    """Who a failed Teams post falls back to: the policy's reviewers named by email (its
    email reviewers already have the request)."""
    asked = {r.casefold() for r in policy.email.reviewers}
    return tuple(r for r in policy.reviewers if "@" in r and r.casefold() not in asked)


class EmailReviewChannel:
    def __init__(self, store: Store, jobs: JobQueue, transport: SmtpTransport, *, sender: str, public_url: str,
                 message_id_domain: str) -> None:
        self.store = store
        self.jobs = jobs
        self.transport = transport
        self.sender = sender
        self.public_url = public_url.rstrip("/")
        self.api_links = ApiLinks(self.public_url)
        self.message_id_domain = message_id_domain

    def register(self) -> None:
        self.jobs.register(SEND_REQUEST_JOB, JobHandler(run=self.send_request))

    def link_url(self, approval_id: str, token: str) -> str:
        return self.public_url + ROUTE.format(approval_id=approval_id, token=token)

    # ---- who is asked (inside the transaction that changes the approval) ---------------

    async def _queue(self, tx: Tx, approval_id: str, run_id: str, reviewers: tuple[str, ...], purpose: str,
                     number: int | None = None) -> None:
        for reviewer in dict.fromkeys(reviewers):
            await self.jobs.enqueue(tx, SEND_REQUEST_JOB, {
                "approval_id": approval_id, "reviewer": reviewer, "purpose": purpose,
                **({"number": number} if number else {})}, run_id=run_id)

    async def on_approval_created(self, tx: Tx, approval: NewApproval) -> None:
        await self._queue(tx, approval.id, approval.run_id, email_reviewers(approval.policy), "request")

    async def on_reminder(self, tx: Tx, reminder: Reminder) -> None:
        asked = {a.casefold() for a in reminder.asked}
        targets = tuple(r for r in email_reviewers(reminder.policy) if reminder.policy.anyone or r.casefold() in asked)
        await self._queue(tx, reminder.approval_id, reminder.run_id, targets, "reminder", reminder.number)

    async def on_reviewers_added(self, tx: Tx, approval_id: str, identities: list[str], via: str) -> None:
        row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).one()
        if not Policy.from_dict(row.policy or {}).email.configured:
            return  # a policy without email review: Teams tells them (TeamsCards.on_reviewers_added)
        await self._queue(tx, approval_id, row.run_id, tuple(i for i in identities if "@" in i), via)

    async def on_teams_post_failed(self, tx: Tx, approval_id: str, error: str) -> None:
        row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).one()
        policy = Policy.from_dict(row.policy or {})
        if policy.email.fallback:
            await self._queue(tx, approval_id, row.run_id, fallback_reviewers(policy), "fallback")

    # ---- the job ----------------------------------------------------------------------

    def _message_id(self) -> str:
        return f"<{uuid.uuid4()}@{self.message_id_domain}>"

    async def send_request(self, job: Job) -> Op[None] | None:
        approval_id, reviewer, purpose = job.payload["approval_id"], job.payload["reviewer"], job.payload["purpose"]
        view = await load_view(self.store, approval_id, self.api_links)
        if not view.is_pending:
            return None  # decided (or ended) before the email went: nothing to ask

        async def mint(tx: Tx) -> tuple[str, Any] | None:
            row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).one()
            if purpose == "fallback" and (await tx.execute(
                    _FALLBACK_SENT, {"approval_id": approval_id, "reviewer": reviewer.casefold()})).first():
                return None  # another card's failure already fell back to them
            policy = Policy.from_dict(row.policy or {})
            expires_at = links.expiry(tx.now, row.expire_at, policy.email.link_ttl)
            token = links.create(tx, approval_id=approval_id, reviewer=reviewer, purpose=purpose,
                                 expires_at=expires_at)
            return token, expires_at

        minted = await self.store.write(mint)
        if minted is None:
            return None
        token, expires_at = minted
        message_id = self._message_id()
        mime = build_request(RequestEmail(view=view, reviewer=reviewer, link=self.link_url(approval_id, token),
                                          expires_at=expires_at, purpose=purpose,
                                          reminder_number=job.payload.get("number")),
                             sender=self.sender, message_id=message_id, date=self.store.clock())
        reply = await self.transport.send(mime, parseaddr(self.sender)[1], [reviewer])

        async def record(tx: Tx) -> None:
            tx.audit("review.email_sent", run_id=job.run_id, actor="system", data={
                "approval_id": approval_id, "reviewer": reviewer, "purpose": purpose, "message_id": message_id,
                "smtp_reply": str(reply)})

        return record

    async def send_code(self, reviewer: str, code: str, view: ApprovalView) -> None:
        mime = build_code(reviewer, code, view, sender=self.sender, message_id=self._message_id(),
                          date=self.store.clock())
        await self.transport.send(mime, parseaddr(self.sender)[1], [reviewer])
