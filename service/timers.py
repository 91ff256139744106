"""Approval timers: reminders, escalation and expiry, as job rows with a `due_at`.

When an approval with policy timers is created, one job per timer is queued in the same
transaction (`approval.remind`, `approval.escalate`, `approval.expire`) and the approval's
`remind_at`, `escalate_at`, `expire_at` say when each falls due. Being jobs, they survive
restarts (one that fell due while the service was down fires at start) and fire once
with several processes (the lease). Each handler does all its work in the transaction
that finishes its job, re-reading the approval there: it acts only while the approval is
pending and the timer it carries (`payload["due_at"]`) is still the approval's current
one, never judged by the moment it runs (the worker may have held it back for requests).
When the approval leaves pending, its queued timers are cancelled and the columns cleared.

Reviewer channels (Teams now, email next) hear of reminders and escalations through
`on_reminder` / `on_escalation`, inside that transaction, and queue their own jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import metrics
from .decisions import Decisions, _approval_from_row, current_tally
from .domain import Approval, ApprovalStatus
from .jobs import Job, JobHandler, JobQueue, JobStatus
from .policy import Policy, Timers
from .runs import NewApproval, Runs
from .store import tables as t
from .store.db import Op, Tx
from .votes import ESCALATION, Added

log = logging.getLogger(__name__)

REMIND_JOB = "approval.remind"
ESCALATE_JOB = "approval.escalate"
EXPIRE_JOB = "approval.expire"
TIMER_JOBS = (REMIND_JOB, ESCALATE_JOB, EXPIRE_JOB)
SYSTEM_ACTOR = "system"


# Timer jobs only read and write the store (their notices are jobs of their own), so many
# may run at once: a wide lane of the worker's, apart from the slots of SMTP and Teams jobs.
TIMER_LANE = "timers"
TIMER_LANE_SLOTS = 64


def deadline(timers: Timers, start: datetime, duration: timedelta) -> datetime:
    """When `duration` after `start` falls due under the policy's timers. The one place
    that knows about calendars: with one, working time counts (service/business_hours.py)."""
    return timers.calendar.add(start, duration) if timers.calendar else start + duration


@dataclass(frozen=True, slots=True)
class Reminder:
    """A reminder that fired: `asked` are the identities of the current stage not yet voted
    (empty when anyone may decide)."""

    approval_id: str
    run_id: str
    number: int  # 1 for the first
    asked: tuple[str, ...]
    policy: Policy


@dataclass(frozen=True, slots=True)
class Escalation:
    approval_id: str
    run_id: str
    added: tuple[str, ...]  # the escalate_to identities newly added as reviewers
    stage: int
    policy: Policy


ReminderListener = Callable[[Tx, Reminder], Awaitable[None]]
EscalationListener = Callable[[Tx, Escalation], Awaitable[None]]

_APPROVAL = sa.select(t.approvals).where(t.approvals.c.id == sa.bindparam("approval_id"))
_TIMER_STATE = (sa.select(t.approvals.c.run_id, t.approvals.c.status, t.approvals.c.remind_at,
                          t.approvals.c.escalate_at, t.approvals.c.expire_at)
                .where(t.approvals.c.id == sa.bindparam("approval_id")))


async def still_asked(tx: Tx, approval: Approval) -> tuple[str, ...]:
    """Who is still asked to vote (service.votes.tally's `asked`)."""
    return (await current_tally(tx, approval)).asked


class ApprovalTimers:
    def __init__(self, jobs: JobQueue, runs: Runs, decisions: Decisions) -> None:
        self.jobs = jobs
        self.runs = runs
        self.decisions = decisions
        # Reviewer channels subscribe here (service/app.py wires them): called inside the
        # transaction that records the timer, to queue their notifications. The email
        # channel's reminders hook in here too.
        self.on_reminder: list[ReminderListener] = []
        self.on_escalation: list[EscalationListener] = []

    def register(self) -> None:
        # cancel_with_run (the default): a cancelled run cancels its timers.
        self.jobs.register(REMIND_JOB, JobHandler(run=self._handler(self._remind), lane=TIMER_LANE))
        self.jobs.register(ESCALATE_JOB, JobHandler(run=self._handler(self._escalate), lane=TIMER_LANE))
        self.jobs.register(EXPIRE_JOB, JobHandler(run=self._handler(self._expire), lane=TIMER_LANE))
        self.runs.on_approval_created.append(self.schedule)
        self.runs.on_approval_changed.append(self.on_approval_changed)

    @staticmethod
    def _handler(step: Callable[[Tx, Job, datetime], Awaitable[None]]) -> Callable[[Job], Awaitable[Op[None]]]:
        async def run(job: Job) -> Op[None]:
            # No side effect of its own: everything happens in the finishing transaction,
            # so a timer fires exactly once even if the worker dies between run and finish.
            due = datetime.fromisoformat(job.payload["due_at"])

            async def op(tx: Tx) -> None:
                await step(tx, job, due)

            return op

        return run

    # ---- scheduling (inside the transaction that creates or changes an approval) -----

    async def schedule(self, tx: Tx, approval: NewApproval) -> None:
        timers = approval.policy.timers
        if not timers.any:
            return
        start = tx.now
        values: dict[str, datetime | None] = {}
        if timers.remind_after and timers.max_reminders > 0:
            values["remind_at"] = deadline(timers, start, timers.remind_after)
        if timers.escalate_after and timers.escalate_to:
            values["escalate_at"] = deadline(timers, start, timers.escalate_after)
        if timers.expire_after:
            values["expire_at"] = deadline(timers, start, timers.expire_after)
        if not values:
            return
        queued = tx.queued(t.approvals, approval.id)
        if queued is not None:  # the usual case: the approval's insert is still queued
            queued.update(values)
        else:
            await tx.execute(t.approvals.update().where(t.approvals.c.id == approval.id).values(**values))
        kinds = {"remind_at": REMIND_JOB, "escalate_at": ESCALATE_JOB, "expire_at": EXPIRE_JOB}
        for column, due in values.items():
            assert due is not None
            await self._enqueue(tx, kinds[column], approval.id, approval.run_id, due)

    async def _enqueue(self, tx: Tx, kind: str, approval_id: str, run_id: str, due: datetime) -> None:
        await self.jobs.enqueue(tx, kind, {"approval_id": approval_id, "due_at": due.isoformat()},
                                run_id=run_id, due_at=due)

    async def on_approval_changed(self, tx: Tx, approval_id: str) -> None:
        """Decided, expired or cancelled: its timers are cancelled (one read by key when not)."""
        row = (await tx.execute(_TIMER_STATE, {"approval_id": approval_id})).first()
        if row is None or row.status == ApprovalStatus.PENDING.value:
            return
        if row.remind_at is None and row.escalate_at is None and row.expire_at is None:
            return
        queued = (await tx.execute(
            sa.select(t.jobs.c.id, t.jobs.c.payload)
            .where(t.jobs.c.run_id == row.run_id, t.jobs.c.status == JobStatus.QUEUED.value,
                   t.jobs.c.kind.in_(TIMER_JOBS))
        )).all()
        ids = [j.id for j in queued if (j.payload or {}).get("approval_id") == approval_id]
        if ids:
            await tx.execute(t.jobs.update().where(t.jobs.c.id.in_(ids), t.jobs.c.status == JobStatus.QUEUED.value)
                             .values(status=JobStatus.CANCELLED.value, finished_at=tx.now, updated_at=tx.now))
        await tx.execute(t.approvals.update().where(t.approvals.c.id == approval_id)
                         .values(remind_at=None, escalate_at=None, expire_at=None))

    # ---- the timers (each in the transaction finishing its job) -----------------------

    async def _pending(self, tx: Tx, job: Job) -> Any:
        row = (await tx.execute(_APPROVAL, {"approval_id": job.payload["approval_id"]})).first()
        if row is None or row.status != ApprovalStatus.PENDING.value:
            return None
        return row

    async def _remind(self, tx: Tx, job: Job, due: datetime) -> None:
        row = await self._pending(tx, job)
        if row is None or row.remind_at != due:
            return  # decided, or not the current reminder
        approval = _approval_from_row(row)
        policy = Policy.from_dict(row.policy)
        timers = policy.timers
        number = row.reminders_sent + 1
        next_at = (deadline(timers, due, timers.remind_after)
                   if timers.remind_after and number < timers.max_reminders else None)
        won = await tx.execute(
            t.approvals.update()
            .where(t.approvals.c.id == row.id, t.approvals.c.status == ApprovalStatus.PENDING.value,
                   t.approvals.c.reminders_sent == row.reminders_sent)
            .values(reminders_sent=number, remind_at=next_at))
        if won.rowcount != 1:
            return
        asked = await still_asked(tx, approval)
        if next_at is not None:
            await self._enqueue(tx, REMIND_JOB, row.id, row.run_id, next_at)
        tx.audit("approval.reminded", run_id=row.run_id, actor=SYSTEM_ACTOR,
                 data={"approval_id": row.id, "number": number, "asked": list(asked),
                       **({"next_at": next_at.isoformat()} if next_at else {})})
        reminder = Reminder(row.id, row.run_id, number, asked, policy)
        for listener in self.on_reminder:
            await listener(tx, reminder)
        await self.runs.approval_changed(tx, row.id)  # the cards show the next reminder
        tx.after_commit(metrics.TIMERS_FIRED.labels(kind="remind").inc)

    async def _escalate(self, tx: Tx, job: Job, due: datetime) -> None:
        for _ in range(5):  # a vote may win the compare-and-set: read again and retry
            row = await self._pending(tx, job)
            if row is None or row.escalate_at != due or row.escalated_at is not None:
                return
            policy = Policy.from_dict(row.policy)
            existing = [Added.from_dict(a) for a in row.added_reviewers or ()]
            taken = {a.slot for a in existing}
            new = [Added(identity=x, slot=x.casefold(), via=ESCALATION, stage=row.stage, at=tx.now)
                   for x in dict.fromkeys(policy.timers.escalate_to) if x.casefold() not in taken]
            won = await tx.execute(
                t.approvals.update()
                .where(t.approvals.c.id == row.id, t.approvals.c.version == row.version,
                       t.approvals.c.status == ApprovalStatus.PENDING.value)
                .values(version=t.approvals.c.version + 1, escalated_at=tx.now, escalate_at=None,
                        added_reviewers=[*(a.to_dict() for a in existing), *(a.to_dict() for a in new)]))
            if won.rowcount == 1:
                break
        else:
            log.warning("escalation of approval %s lost its compare-and-set 5 times; retrying later",
                        job.payload["approval_id"])
            raise RuntimeError(f"escalation of approval {job.payload['approval_id']} kept losing to votes")
        added = tuple(a.identity for a in new)
        tx.audit("approval.escalated", run_id=row.run_id, actor=SYSTEM_ACTOR,
                 data={"approval_id": row.id, "added": list(added), "stage": row.stage})
        escalation = Escalation(row.id, row.run_id, added, row.stage, policy)
        for listener in self.on_escalation:
            await listener(tx, escalation)
        if added:  # channels reach the people added as they reach delegates
            await self.runs.reviewers_added(tx, row.id, list(added), ESCALATION)
        await self.runs.approval_changed(tx, row.id)
        tx.after_commit(metrics.TIMERS_FIRED.labels(kind="escalate").inc)

    async def _expire(self, tx: Tx, job: Job, due: datetime) -> None:
        # Decisions.expire settles by compare-and-set, reading the approval again when a
        # change that left it pending (an escalation, a vote) won in between.
        if await self.decisions.expire(tx, job.payload["approval_id"], due_at=due):
            tx.after_commit(metrics.TIMERS_FIRED.labels(kind="expire").inc)
