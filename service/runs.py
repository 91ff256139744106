"""Runs: intake, queries, cancellation and the end of a run. Every change is a store op."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import metrics
from .domain import ApprovalStatus, EmailAction, InvalidTransition, NotFound, RunStatus
from .jobs import Job, JobQueue
from .policy import Policy
from .redact import redact_urls_in
from .store import tables as t
from .store.db import Store, Tx
from .text_diff import diff_edit, first_draft
from .votes import Added, tally, votes_of

CALLBACK_JOB = "callback"
AGENT_JOB = "agent.step"  # service.agent.runner: start or resume the agent of a run


class IdempotencyConflict(Exception):
    def __init__(self, key: str, run_id: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request body (run {run_id})")
        self.key = key
        self.run_id = run_id


@dataclass(frozen=True, slots=True)
class Customer:
    email: str
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"email": self.email, "name": self.name}


@dataclass(frozen=True, slots=True)
class NewRun:
    """A validated `POST /api/runs`: either a pre-drafted action or a request for the agent."""

    policy: Policy
    action: EmailAction | None = None
    request: str | None = None
    customer: Customer | None = None
    requested_by: str | None = None
    callback_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    created_by: str = "api"  # the credential that triggered the run (audit actor)
    request_sha256: str | None = None
    route: int | None = None  # the [[routes]] table (1 = the first) that chose the policy, if one did


@dataclass(frozen=True, slots=True)
class CreatedRun:
    run_id: str
    replayed: bool  # True: the Idempotency-Key matched an earlier identical request


@dataclass(frozen=True, slots=True)
class RunSummary:
    id: str
    kind: str
    status: RunStatus
    requested_by: str | None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any]
    summary: str | None
    failure_reason: str | None

    @classmethod
    def from_row(cls, row: Any) -> RunSummary:
        return cls(
            id=row.id, kind=row.kind, status=RunStatus(row.status), requested_by=row.requested_by,
            created_at=row.created_at, updated_at=row.updated_at, metadata=row.metadata,
            summary=row.summary, failure_reason=row.failure_reason,
        )


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: RunSummary
    request: str | None
    customer: dict[str, Any] | None
    callback_url: str | None
    policy: dict[str, Any]
    approvals: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    jobs: list[Job]
    timeline: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class NewApproval:
    id: str
    run_id: str
    policy: Policy


@dataclass(frozen=True, slots=True)
class GatedOutcome:
    """What became of an approval that gates an agent's tool call, from the service's records."""

    run_id: str
    approval_id: str
    tool_call_id: str
    status: str  # "sent" | "rejected"
    reason: str | None = None
    sent_action: dict[str, Any] | None = None  # the action as delivered (after any edit)
    message_id: str | None = None
    decided_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tool_call_id": self.tool_call_id, "approval_id": self.approval_id, "status": self.status,
                "reason": self.reason, "sent_action": self.sent_action, "message_id": self.message_id,
                "decided_by": self.decided_by}


ApprovalListener = Callable[[Tx, str], Awaitable[None]]
NewApprovalListener = Callable[[Tx, NewApproval], Awaitable[None]]
# (tx, approval id, identities added, "escalation" | "delegation")
ReviewersAddedListener = Callable[[Tx, str, list[str], str], Awaitable[None]]
# (tx, approval id, the stage now asked, 0-based)
StageListener = Callable[[Tx, str, int], Awaitable[None]]
GatedOutcomeListener = Callable[[Tx, GatedOutcome], Awaitable[None]]


def lock_run(tx: Tx, run_id: str) -> sa.Select[Any]:
    """The run's row, locked until the transaction ends on PostgreSQL (SQLite has one writer).

    Cancelling and an agent step recording its result both take this lock first, so a
    cancel in one process cannot interleave with an approval created in another."""
    query = sa.select(t.runs).where(t.runs.c.id == run_id)
    return query.with_for_update() if tx.dialect == "postgresql" else query


def _typed(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=t.runs.c[name].type)


# Built once: decisions and deliveries move runs along on every click and every email.
_SET_STATUS = (t.runs.update().where(t.runs.c.id == sa.bindparam("run_id"))
               .values(status=_typed("status"), updated_at=_typed("updated_at")))
# A None summary or failure reason leaves the stored one as it is.
_FINISH = (t.runs.update().where(t.runs.c.id == sa.bindparam("run_id"))
           .values(status=_typed("status"), updated_at=_typed("updated_at"),
                   summary=sa.func.coalesce(_typed("summary"), t.runs.c.summary),
                   failure_reason=sa.func.coalesce(_typed("failure_reason"), t.runs.c.failure_reason))
           .returning(t.runs.c.callback_url))


class Runs:
    def __init__(self, store: Store, jobs: JobQueue, *, mail_from: str | None = None,
                 mail_reply_to: str | None = None) -> None:
        self.store = store
        self.jobs = jobs
        # Frozen on every approval when it is created, so that a later settings change
        # neither changes what was approved nor fails the emails waiting to be sent.
        self.mail_from = mail_from
        self.mail_reply_to = mail_reply_to
        # Reviewer channels (Teams, email) subscribe here: called inside the transaction
        # that created an approval, or changed it or its delivery, to enqueue their jobs.
        self.on_approval_created: list[NewApprovalListener] = []
        self.on_approval_changed: list[ApprovalListener] = []
        # People added to a pending approval (escalation, delegation): channels notify them.
        self.on_reviewers_added: list[ReviewersAddedListener] = []
        # A sequential approval moved to another stage (its reviewers are asked from now):
        # the timers restart their reminders and escalation for it (service/timers.py).
        self.on_stage_started: list[StageListener] = []
        # The agent (service.agent.runner) resumes on these; set where the app is wired.
        self.on_gated_outcome: GatedOutcomeListener | None = None

    async def gated_outcome(self, tx: Tx, outcome: GatedOutcome) -> None:
        if self.on_gated_outcome is None:
            raise RuntimeError(f"approval {outcome.approval_id} gates an agent tool call but no agent is wired")
        await self.on_gated_outcome(tx, outcome)

    async def reviewers_added(self, tx: Tx, approval_id: str, identities: list[str], via: str) -> None:
        for listener in self.on_reviewers_added:
            await listener(tx, approval_id, identities, via)

    async def stage_started(self, tx: Tx, approval_id: str, stage: int) -> None:
        for listener in self.on_stage_started:
            await listener(tx, approval_id, stage)

    async def approval_changed(self, tx: Tx, approval_id: str) -> None:
        for listener in self.on_approval_changed:
            await listener(tx, approval_id)

    async def create(self, new: NewRun) -> CreatedRun:
        async def op(tx: Tx) -> CreatedRun:
            if new.idempotency_key:
                row = (
                    await tx.execute(
                        sa.select(t.idempotency_keys).where(t.idempotency_keys.c.key == new.idempotency_key)
                    )
                ).first()
                if row is not None:
                    if row.request_sha256 != new.request_sha256:
                        raise IdempotencyConflict(new.idempotency_key, row.run_id)
                    return CreatedRun(row.run_id, replayed=True)
            run_id = str(uuid.uuid4())
            kind = "action" if new.action else "agent"
            status = RunStatus.AWAITING_APPROVAL if new.action else RunStatus.DRAFTING
            tx.insert(t.runs, dict(
                id=run_id, kind=kind, status=status.value, request=new.request,
                customer=new.customer.to_dict() if new.customer else None,
                requested_by=new.requested_by, callback_url=new.callback_url, metadata=new.metadata,
                policy=new.policy.to_dict(), summary=None, failure_reason=None, created_at=tx.now, updated_at=tx.now,
            ))
            # The actor is the credential; `requested_by` is only what the caller says.
            tx.audit("run.created", run_id=run_id, actor=new.created_by,
                     data={"kind": kind, "policy": new.policy.name, "metadata": new.metadata,
                           "requested_by": new.requested_by,
                           **({"route": new.route} if new.route is not None else {})})
            if new.action:
                await self.add_approval(tx, run_id, 1, new.action, new.policy, new.requested_by)
            else:
                # Drafting is the agent's job (service.agent); it is queued here so the
                # request is durable the moment it is accepted.
                await self.jobs.enqueue(tx, AGENT_JOB, {"run_id": run_id}, run_id=run_id)
            if new.idempotency_key:
                tx.insert(t.idempotency_keys, dict(
                    key=new.idempotency_key, request_sha256=new.request_sha256, run_id=run_id, created_at=tx.now))
            tx.after_commit(metrics.RUNS_CREATED.labels(kind=kind).inc)
            return CreatedRun(run_id, replayed=False)

        for attempt in range(3):
            try:
                return await self.store.write(op)
            except sa.exc.IntegrityError:
                # Another process inserted the same Idempotency-Key between our look-up and
                # our insert. Its row is committed now: the next attempt replays it (or 409s).
                if not new.idempotency_key or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def add_approval(
        self, tx: Tx, run_id: str, revision: int, action: EmailAction, policy: Policy, requested_by: str | None,
        *, sources: list[dict[str, Any]] | None = None, tool_call_id: str | None = None,
    ) -> str:
        approval_id = str(uuid.uuid4())
        tx.insert(t.approvals, dict(
            id=approval_id, run_id=run_id, revision=revision, status=ApprovalStatus.PENDING.value,
            action=action.to_dict(), policy=policy.to_dict(), requested_by=requested_by, version=0, created_at=tx.now,
            decided_at=None, decided_by=None, approved_action=None, approved_sha256=None, sources=sources,
            tool_call_id=tool_call_id, mail_from=self.mail_from,
            mail_reply_to=self.mail_reply_to if self.mail_from else None, content_hash_version=None,
        ))
        data: dict[str, Any] = {"approval_id": approval_id, "revision": revision,
                                "content_sha256": action.content_sha256()}
        if tool_call_id:
            data["tool_call_id"] = tool_call_id
        tx.audit("approval.requested", run_id=run_id, actor="system", data=data)
        for listener in self.on_approval_created:
            await listener(tx, NewApproval(approval_id, run_id, policy))
        return approval_id

    async def finish(
        self, tx: Tx, run_id: str, status: RunStatus, *, actor: str, summary: str | None = None,
        failure_reason: str | None = None, via: str | None = None,
    ) -> None:
        """Move a run to a terminal state and queue its callback."""
        assert status.is_terminal, status
        callback_url = (await tx.execute(_FINISH, {
            "run_id": run_id, "status": status.value, "updated_at": tx.now, "summary": summary,
            "failure_reason": failure_reason})).scalar_one()
        tx.audit(f"run.{status.value}", run_id=run_id, actor=actor,
                 data={k: v for k, v in (("summary", summary), ("failure_reason", failure_reason), ("via", via)) if v})
        if callback_url:
            await self.jobs.enqueue(tx, CALLBACK_JOB, {"run_id": run_id, "status": status.value}, run_id=run_id)

    async def set_status(self, tx: Tx, run_id: str, status: RunStatus, *, actor: str, **data: Any) -> None:
        await tx.execute(_SET_STATUS, {"run_id": run_id, "status": status.value, "updated_at": tx.now})
        tx.audit(f"run.{status.value}", run_id=run_id, actor=actor, data=data)

    async def cancel(self, run_id: str, *, actor: str, reason: str | None, via: str | None = None) -> RunSummary:
        """`via`: where the operator acted, when not the API ("console"), recorded in the audit event."""
        async def op(tx: Tx) -> RunSummary:
            row = (await tx.execute(lock_run(tx, run_id))).first()
            if row is None:
                raise NotFound("run", run_id)
            status = RunStatus(row.status)
            if status not in (RunStatus.DRAFTING, RunStatus.AWAITING_APPROVAL):
                raise InvalidTransition(
                    f"run {run_id} is {status.value}; only drafting or awaiting_approval runs can be cancelled",
                    run_id=run_id, status=status.value,
                )
            pending = (await tx.execute(
                sa.select(t.approvals.c.id)
                .where(t.approvals.c.run_id == run_id, t.approvals.c.status == ApprovalStatus.PENDING.value)
            )).scalars().all()
            await tx.execute(
                t.approvals.update()
                .where(t.approvals.c.id.in_(pending))
                .values(status=ApprovalStatus.CANCELLED.value, version=t.approvals.c.version + 1,
                        decided_at=tx.now, decided_by=actor)
            )
            await self.jobs.cancel_for_run(tx, run_id)
            # A paused agent is dropped with its run: nothing will resume it.
            await tx.execute(t.agent_snapshots.delete().where(t.agent_snapshots.c.run_id == run_id))
            await self.finish(tx, run_id, RunStatus.CANCELLED, actor=actor, failure_reason=reason, via=via)
            for approval_id in pending:
                await self.approval_changed(tx, approval_id)
            new = (await tx.execute(sa.select(t.runs).where(t.runs.c.id == run_id))).one()
            return RunSummary.from_row(new)

        return await self.store.write(op)

    async def get(self, run_id: str) -> RunDetail:
        async def q(conn: AsyncConnection) -> RunDetail:
            row = (await conn.execute(sa.select(t.runs).where(t.runs.c.id == run_id))).first()
            if row is None:
                raise NotFound("run", run_id)
            approvals = (await conn.execute(
                sa.select(t.approvals).where(t.approvals.c.run_id == run_id).order_by(t.approvals.c.revision)
            )).all()
            decisions = (await conn.execute(
                sa.select(t.decisions).where(t.decisions.c.run_id == run_id).order_by(t.decisions.c.created_at)
            )).all()
            deliveries = (await conn.execute(
                sa.select(t.deliveries).where(t.deliveries.c.run_id == run_id).order_by(t.deliveries.c.created_at)
            )).all()
            attempts: dict[str, list[dict[str, Any]]] = {d.id: [] for d in deliveries}
            if deliveries:
                for a in (await conn.execute(
                    sa.select(t.delivery_attempts).where(t.delivery_attempts.c.delivery_id.in_(list(attempts)))
                    .order_by(t.delivery_attempts.c.number)
                )).all():
                    attempts[a.delivery_id].append(_attempt_dict(a))
            jobs = (await conn.execute(
                sa.select(t.jobs).where(t.jobs.c.run_id == run_id).order_by(t.jobs.c.created_at)
            )).all()
            events = (await conn.execute(
                sa.select(t.audit_events).where(t.audit_events.c.run_id == run_id).order_by(t.audit_events.c.seq)
            )).all()
            current = {a.id: a.draft_version for a in approvals}
            return RunDetail(
                run=RunSummary.from_row(row), request=row.request, customer=row.customer,
                callback_url=row.callback_url, policy=_shown_policy(row.policy),
                approvals=[_approval_dict(a, [d for d in decisions if d.approval_id == a.id]) for a in approvals],
                decisions=[_decision_dict(d, current.get(d.approval_id, 1)) for d in decisions],
                deliveries=[{**_delivery_dict(d), "attempt_log": attempts[d.id]} for d in deliveries],
                jobs=[Job.from_row(j) for j in jobs],
                timeline=[{"seq": e.seq, "at": e.at.isoformat(), "event": e.kind, "actor": e.actor,
                           "data": _shown_event_data(e.kind, e.data)} for e in events],
            )

        return await self.store.read(q)

    async def list(
        self, *, status: RunStatus | None, limit: int, cursor: tuple[datetime, str] | None,
        where: Sequence[sa.ColumnElement[bool]] = (),
    ) -> tuple[list[RunSummary], tuple[datetime, str] | None]:
        """Newest first; the cursor is the (created_at, id) of the last run of the previous page.
        `where`: further conditions on `runs` (the console's filters)."""

        async def q(conn: AsyncConnection) -> tuple[list[RunSummary], tuple[datetime, str] | None]:
            query = (sa.select(t.runs).where(*where)
                     .order_by(t.runs.c.created_at.desc(), t.runs.c.id.desc()).limit(limit + 1))
            if status is not None:
                query = query.where(t.runs.c.status == status.value)
            if cursor is not None:
                created_at, run_id = cursor
                query = query.where(
                    sa.or_(t.runs.c.created_at < created_at,
                           sa.and_(t.runs.c.created_at == created_at, t.runs.c.id < run_id))
                )
            rows = (await conn.execute(query)).all()
            page = [RunSummary.from_row(r) for r in rows[:limit]]
            next_cursor = (page[-1].created_at, page[-1].id) if len(rows) > limit else None
            return page, next_cursor

        return await self.store.read(q)


def _shown_event_data(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    # `job.dead` events written before errors were redacted can quote a callback URL with
    # its credentials; the event stays as it is (the chain covers it), the answer does not.
    if kind == "job.dead" and isinstance(data.get("error"), str):
        return {**data, "error": redact_urls_in(data["error"])}
    return data


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _shown_policy(stored: dict[str, Any]) -> dict[str, Any]:
    # As it decides: a policy stored before "anyone" had to be explicit shows it explicitly.
    return Policy.from_dict(stored).to_dict()


def _progress(row: Any, decisions: list[Any]) -> dict[str, Any]:
    policy = Policy.from_dict(row.policy)
    added = [Added.from_dict(a) for a in row.added_reviewers or ()]
    shown = tally(policy, votes_of(decisions), draft_version=row.draft_version, added=added).to_dict()
    if row.status != ApprovalStatus.PENDING.value:  # settled (or cancelled, expired): nobody is asked any more
        shown.update(outcome=row.status, asked=[])
    return shown


def approval_diff(row: Any, decisions: list[Any]) -> dict[str, Any] | None:
    """The diff of what was approved against the draft, for an approval a reviewer edited
    before approving (None otherwise): computed from the stored texts, never stored. The
    draft is the text first drafted (under a multi-vote policy an edit replaced
    `approvals.action`; the first edit's `replaced_action` keeps it)."""
    if row.status != ApprovalStatus.APPROVED.value or row.approved_action is None:
        return None
    draft = first_draft(row.action, [(d.draft_version or 1, d.replaced_action) for d in decisions])
    diff = diff_edit(draft, row.approved_action)
    if diff is None:
        return None
    return {"draft_version": 1, "approved_draft_version": row.draft_version, **diff.to_dict()}


def _approval_dict(row: Any, decisions: list[Any]) -> dict[str, Any]:
    return {
        "id": row.id, "revision": row.revision, "status": row.status, "action": row.action,
        "policy": _shown_policy(row.policy), "requested_by": row.requested_by, "created_at": _iso(row.created_at),
        "decided_at": _iso(row.decided_at), "decided_by": row.decided_by,
        "approved_action": row.approved_action, "approved_sha256": row.approved_sha256,
        "sources": row.sources or [], "tool_call_id": row.tool_call_id,
        "mail_from": row.mail_from, "mail_reply_to": row.mail_reply_to,
        "content_hash_version": row.content_hash_version or 1,
        "draft_version": row.draft_version, "progress": _progress(row, decisions),
        "remind_at": _iso(row.remind_at), "escalate_at": _iso(row.escalate_at), "expire_at": _iso(row.expire_at),
        "added_reviewers": list(row.added_reviewers or ()),
        "diff": approval_diff(row, decisions),
    }


def _decision_dict(row: Any, current_draft_version: int) -> dict[str, Any]:
    draft_version = row.draft_version or 1
    return {
        "id": row.id, "approval_id": row.approval_id, "kind": row.kind,
        "reviewer": {"id": row.reviewer_id, "name": row.reviewer_name, "email": row.reviewer_email},
        "actor": row.actor or row.reviewer_id, "on_behalf_of": row.reviewer_id if row.actor else None,
        "channel": row.channel, "reason": row.reason, "created_at": _iso(row.created_at),
        "draft_version": draft_version, "stage": (row.stage or 0) + 1,
        "counted": row.kind != "delegate" and draft_version == current_draft_version,
        "delegate_to": row.delegate_to,
    }


def _attempt_dict(row: Any) -> dict[str, Any]:
    return {
        "number": row.number, "step": row.step, "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
        "outcome": row.outcome, "smtp_reply": row.smtp_reply, "error": row.error,
        "possible_duplicate": row.possible_duplicate,
    }


def _delivery_dict(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "approval_id": row.approval_id, "status": row.status, "message_id": row.message_id,
        "approved_sha256": row.approved_sha256, "sent_sha256": row.sent_sha256, "mime_sha256": row.mime_sha256,
        "smtp_reply": row.smtp_reply, "attempts": row.attempts, "error": row.error,
        "created_at": _iso(row.created_at), "sending_at": _iso(row.sending_at), "sent_at": _iso(row.sent_at),
        "mail_from": row.mail_from, "mail_reply_to": row.mail_reply_to,
        "content_hash_version": row.content_hash_version or 1,
    }
