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
When a sequential approval moves to another stage (`Runs.on_stage_started`), that stage's
reviewers are asked from then: its reminders count again from zero and its escalation
runs again from that moment (the expiry stays the approval's); the old jobs are cancelled.
This module is the one place that computes when a timer falls due.

Reviewer channels (Teams now, email next) hear of reminders and escalations through
`on_reminder` / `on_escalation`, inside that transaction, and queue their own jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from . import metrics
from .decisions import Decisions, _approval_from_row, current_tally, read_votes
from .domain import Approval, ApprovalStatus, Contended
from .jobs import Deferred, Job, JobHandler, JobQueue, JobStatus
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
_JOB_OF = {"remind_at": REMIND_JOB, "escalate_at": ESCALATE_JOB, "expire_at": EXPIRE_JOB}  # approval column -> job
SYSTEM_ACTOR = "system"


# Timer jobs only read and write the store (their notices are jobs of their own), so many
# may run at once: a wide lane of the worker's, apart from the slots of SMTP and Teams jobs.
TIMER_LANE = "timers"
TIMER_LANE_SLOTS = 64


def deadline(timers: Timers, start: datetime, duration: timedelta) -> datetime:
    """When `duration` after `start` falls due under the policy's timers. The one place
    that knows about calendars: with one, working time counts (service/business_hours.py)."""
    return timers.calendar.add(start, duration) if timers.calendar else start + duration


def first_reminder_at(timers: Timers, start: datetime) -> datetime | None:
    return deadline(timers, start, timers.remind_after) if timers.remind_after and timers.max_reminders > 0 else None


def escalation_at(timers: Timers, start: datetime) -> datetime | None:
    return deadline(timers, start, timers.escalate_after) if timers.escalate_after and timers.escalate_to else None


def expiry_at(timers: Timers, start: datetime) -> datetime | None:
    return deadline(timers, start, timers.expire_after) if timers.expire_after else None


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
# Built once: 10,000 expiries a minute on PostgreSQL are bound by statements per expiry
# and the Python that builds each one.
_CLEAR_TIMERS = (t.approvals.update()
                 .where(t.approvals.c.id == sa.bindparam("approval_id"),
                        t.approvals.c.status != ApprovalStatus.PENDING.value,
                        sa.or_(t.approvals.c.remind_at.is_not(None), t.approvals.c.escalate_at.is_not(None),
                               t.approvals.c.expire_at.is_not(None)))
                 .values(remind_at=None, escalate_at=None, expire_at=None)
                 .returning(t.approvals.c.run_id))
_CANCEL_TIMER_JOBS = (t.jobs.update()
                      .where(t.jobs.c.run_id == sa.bindparam("for_run"), t.jobs.c.status == JobStatus.QUEUED.value,
                             t.jobs.c.kind.in_(TIMER_JOBS),
                             t.jobs.c.payload["approval_id"].as_string() == sa.bindparam("approval_id"))
                      .values(status=JobStatus.CANCELLED.value, finished_at=sa.bindparam("now"),
                              updated_at=sa.bindparam("now")))


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
        self.runs.on_stage_started.append(self.on_stage_started)

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
        values = {column: due for column, due in (
            ("remind_at", first_reminder_at(timers, start)), ("escalate_at", escalation_at(timers, start)),
            ("expire_at", expiry_at(timers, start))) if due is not None}
        if not values:
            return
        queued = tx.queued(t.approvals, approval.id)
        if queued is not None:  # the usual case: the approval's insert is still queued
            queued.update(values)
        else:
            await tx.execute(t.approvals.update().where(t.approvals.c.id == approval.id).values(**values))
        for column, due in values.items():
            await self._enqueue(tx, _JOB_OF[column], approval.id, approval.run_id, due)

    async def on_stage_started(self, tx: Tx, approval_id: str, stage: int) -> None:
        """A sequential approval moved on to `stage`: its reviewers are asked from now, so its
        reminders start again (counted from zero, capped by max_reminders again) and so does
        its escalation, done or not for the stage before. The expiry stays the approval's.
        Queued jobs of the old reminder and escalation are cancelled (they would find their
        `due_at` no longer current anyway)."""
        row = (await tx.execute(_APPROVAL, {"approval_id": approval_id})).first()
        if row is None or row.status != ApprovalStatus.PENDING.value:
            return
        timers = Policy.from_dict(row.policy).timers
        remind_at, escalate_at = first_reminder_at(timers, tx.now), escalation_at(timers, tx.now)
        if remind_at is None and escalate_at is None:
            return
        values: dict[str, Any] = {}
        if remind_at is not None:
            values.update(remind_at=remind_at, reminders_sent=0)
        if escalate_at is not None:
            values.update(escalate_at=escalate_at, escalated_at=None)
        # In the transaction of the vote that moved the stage, which holds the approval's row.
        await tx.execute(t.approvals.update().where(t.approvals.c.id == approval_id).values(**values))
        kinds = [_JOB_OF[c] for c, due in (("remind_at", remind_at), ("escalate_at", escalate_at)) if due]
        await self._cancel_queued(tx, row.run_id, approval_id, kinds)
        for column, due in (("remind_at", remind_at), ("escalate_at", escalate_at)):
            if due is not None:
                await self._enqueue(tx, _JOB_OF[column], approval_id, row.run_id, due)

    async def _enqueue(self, tx: Tx, kind: str, approval_id: str, run_id: str, due: datetime) -> None:
        await self.jobs.enqueue(tx, kind, {"approval_id": approval_id, "due_at": due.isoformat()},
                                run_id=run_id, due_at=due)

    async def _cancel_queued(self, tx: Tx, run_id: str, approval_id: str, kinds: Sequence[str]) -> None:
        await tx.execute(
            t.jobs.update()
            .where(t.jobs.c.run_id == run_id, t.jobs.c.status == JobStatus.QUEUED.value, t.jobs.c.kind.in_(kinds),
                   t.jobs.c.payload["approval_id"].as_string() == approval_id)
            .values(status=JobStatus.CANCELLED.value, finished_at=tx.now, updated_at=tx.now))

    async def on_approval_changed(self, tx: Tx, approval_id: str) -> None:
        """Decided, expired or cancelled: its timers are cancelled and its timer columns
        cleared. One statement when it is still pending or has no timers left (a vote that
        counts, a reminder; an expiry clears them in its own compare-and-set)."""
        row = (await tx.execute(_CLEAR_TIMERS, {"approval_id": approval_id})).first()
        if row is not None:
            await tx.execute(_CANCEL_TIMER_JOBS, {"approval_id": approval_id, "for_run": row.run_id, "now": tx.now})

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
        # Counted from now when it fires late (the service was down for several periods):
        # the reminders missed meanwhile are not sent in a burst, one after the other.
        next_at = (deadline(timers, max(due, tx.now), timers.remind_after)
                   if timers.remind_after and number < timers.max_reminders else None)
        won = await tx.execute(
            t.approvals.update()
            .where(t.approvals.c.id == row.id, t.approvals.c.status == ApprovalStatus.PENDING.value,
                   t.approvals.c.reminders_sent == row.reminders_sent, t.approvals.c.remind_at == due)
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
            # Each stage of a sequential policy escalates on its own: people escalation added
            # to an earlier stage are added again to this one, unless they voted on this text
            # there (one vote a person: a slot they could not fill would only be waited for).
            taken = {a.slot for a in existing if a.via != ESCALATION or a.stage == row.stage}
            if row.stage > 0:
                votes = await read_votes(tx, row.id, row.draft_version)
                taken |= {x.casefold() for x in policy.timers.escalate_to
                          if any(v.slot == x.casefold() or v.cast_by({x.casefold()}) for v in votes)}
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
            # Like an expiry: the job waits its turn rather than use up an attempt (gone dead,
            # nobody would ever be added).
            message = f"escalation of approval {job.payload['approval_id']} lost its compare-and-set 5 times to votes"
            log.warning("%s; trying again in a second", message)
            raise Deferred(message, retry_after=1)
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
        try:
            expired = await self.decisions.expire(tx, job.payload["approval_id"], due_at=due)
        except Contended as exc:
            # Votes kept winning: the job waits its turn rather than use up an attempt, since
            # an expiry job gone dead would leave the approval waiting for ever.
            log.warning("%s", exc.message)
            raise Deferred(exc.message, retry_after=exc.retry_after_seconds) from exc
        if expired:
            tx.after_commit(metrics.TIMERS_FIRED.labels(kind="expire").inc)
