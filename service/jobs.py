"""The jobs table: enqueue, lease, finish, retry with backoff, dead letters, timers.

Every side effect (email, callback, card post, LLM call) is a job row written in the same
transaction as the state change that asks for it. Workers lease due jobs (`FOR UPDATE
SKIP LOCKED` on PostgreSQL, so several processes can share one database), run the
handler outside any transaction, then record the outcome and finish the job in one
transaction guarded by the lease token: a worker whose lease ran out cannot finish a job
that another worker has taken over. A timer is a job with a future `due_at`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa

from . import metrics
from .domain import InvalidTransition, NotFound
from .foreground import Foreground, mark_job
from .redact import redact_urls_in
from .store import tables as t
from .store.db import Op, Store, Tx

log = logging.getLogger(__name__)


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    DONE = "done"
    DEAD = "dead"
    CANCELLED = "cancelled"


class TransientError(Exception):
    """Worth trying again later (connection refused, timeout, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(TransientError):
    """Not a failure: the job must wait its turn (a rate limit). It runs again after
    `retry_after` seconds without using up an attempt."""


class PermanentError(Exception):
    """Trying again cannot help (5xx SMTP reply, 4xx from a callback, bad data)."""


class LeaseLost(Exception):
    """The job's lease ran out and another worker took it; this outcome is dropped."""


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    run_id: str | None
    payload: dict[str, Any]
    status: JobStatus
    attempts: int
    max_attempts: int
    due_at: datetime
    lease_token: str | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    # What the handler's `prefetch` read in the lease's transaction (None without one).
    prefetched: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_row(cls, row: Any) -> Job:
        return cls(
            id=row.id, kind=row.kind, run_id=row.run_id, payload=row.payload, status=JobStatus(row.status),
            attempts=row.attempts, max_attempts=row.max_attempts, due_at=row.due_at,
            lease_token=row.lease_token, last_error=row.last_error, created_at=row.created_at,
            finished_at=row.finished_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "run_id": self.run_id, "status": self.status.value,
            "attempts": self.attempts, "max_attempts": self.max_attempts, "due_at": self.due_at.isoformat(),
            # Errors stored before URLs were redacted on the way in may still hold credentials.
            "last_error": redact_urls_in(self.last_error) if self.last_error else None,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


# A handler does the side effect and returns the op that records its outcome; the worker
# runs that op in the transaction that finishes the job.
RunHandler = Callable[[Job], Awaitable[Op[None] | None]]
DeadHook = Callable[[Tx, Job, str], Awaitable[None]]
RetryHook = Callable[[Tx, Job], Awaitable[None]]


DEFAULT_LANE = "default"


@dataclass(frozen=True, slots=True)
class JobHandler:
    run: RunHandler
    on_dead: DeadHook | None = None  # record the permanent failure where users see it
    on_retry: RetryHook | None = None  # undo on_dead when an operator retries
    cancel_with_run: bool = True  # a cancelled run cancels its queued jobs of this kind
    timeout_seconds: float | None = None  # instead of the worker's, for slow kinds (LLM calls)
    # Record a failed attempt's detail (retry and dead alike), in the transaction of `fail`.
    on_failed_attempt: Callable[[Tx, Job, str], Awaitable[None]] | None = None
    # Read what the job works on in the transaction that leases it (`job.prefetched`):
    # one store round trip fewer between a decision and its side effect.
    prefetch: Callable[[Tx, Job], Awaitable[Any]] | None = None
    # Jobs of a lane share its slots (`Worker(lanes=)`); the default lane has `concurrency`.
    # Timers, which only read and write the store, have their own wide lane: ten thousand
    # falling due in a minute must not wait for eight slots meant for SMTP and Teams calls.
    lane: str = DEFAULT_LANE


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out."""
    ceiling = min(cap, base * (2 ** max(attempts - 1, 0)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


_FINISH = (t.jobs.update()
           .where(t.jobs.c.id == sa.bindparam("job_id"), t.jobs.c.lease_token == sa.bindparam("token"))
           .values(status=JobStatus.DONE.value, finished_at=sa.bindparam("now"), updated_at=sa.bindparam("now"),
                   leased_until=None, lease_token=None, last_error=None))


@functools.lru_cache(maxsize=8)
def _cancel_for_run(keep: tuple[str, ...]) -> sa.Update:
    # Built once per set of kinds kept (fixed once handlers are registered): expiring
    # thousands of runs a minute is bound by the Python that builds each statement.
    return (t.jobs.update()
            .where(t.jobs.c.run_id == sa.bindparam("for_run"), t.jobs.c.status == JobStatus.QUEUED.value,
                   t.jobs.c.kind.not_in(keep))
            .values(status=JobStatus.CANCELLED.value, finished_at=sa.bindparam("now"), updated_at=sa.bindparam("now")))


class JobQueue:
    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 8,
        lease_seconds: float = 10.0,
        backoff_base: float = 2.0,
        backoff_max: float = 3600.0,
    ) -> None:
        self.store = store
        self.max_attempts = max_attempts
        self.lease_duration = timedelta(seconds=lease_seconds)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.handlers: dict[str, JobHandler] = {}
        self.wakeup = asyncio.Event()
        # When this process's worker wakes next (None: awake, or no worker): a job enqueued
        # here that falls due earlier wakes it, so a new near timer is not left to the poll.
        self.sleeping_until: datetime | None = None

    def register(self, kind: str, handler: JobHandler) -> None:
        self.handlers[kind] = handler

    async def enqueue(
        self,
        tx: Tx,
        kind: str,
        payload: dict[str, Any],
        *,
        run_id: str | None = None,
        due_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> str:
        job_id = str(uuid.uuid4())
        tx.insert(t.jobs, dict(
            id=job_id, kind=kind, run_id=run_id, payload=payload, status=JobStatus.QUEUED.value,
            attempts=0, max_attempts=max_attempts or self.max_attempts, due_at=due_at or tx.now,
            leased_until=None, lease_token=None, last_error=None, created_at=tx.now, updated_at=tx.now,
            finished_at=None,
        ))
        if due_at is None or due_at <= tx.now or (
                self.sleeping_until is not None and due_at < self.sleeping_until):
            tx.after_commit(self.wakeup.set)
        return job_id

    async def cancel_for_run(self, tx: Tx, run_id: str) -> int:
        # Everything queued for the run goes, except kinds that must outlive it (the
        # callback announcing the cancellation, a delivery already under way).
        keep = tuple(k for k, h in self.handlers.items() if not h.cancel_with_run)
        result = await tx.execute(_cancel_for_run(keep), {"for_run": run_id, "now": tx.now})
        return result.rowcount

    async def next_due(self) -> datetime | None:
        """When the next job of a registered kind is due (in the past: due now), None when
        none is queued. One indexed read (status, due_at): what an idle worker polls with."""
        now = self.store.clock()

        async def q(conn: Any) -> datetime | None:
            return cast("datetime | None", (await conn.execute(
                sa.select(t.jobs.c.due_at)
                .where(*self._free(now), t.jobs.c.kind.in_(list(self.handlers)))
                .order_by(t.jobs.c.due_at).limit(1)
            )).scalar())

        return await self.store.read(q)

    def _free(self, now: datetime) -> list[Any]:
        return [
            t.jobs.c.status == JobStatus.QUEUED.value,
            sa.or_(t.jobs.c.leased_until.is_(None), t.jobs.c.leased_until < now),
        ]

    def _due(self, now: datetime) -> list[Any]:
        return [*self._free(now), t.jobs.c.due_at <= now]

    async def lease(self, limit: int, kinds: Iterable[str] | None = None) -> list[Job]:
        kinds = list(kinds) if kinds is not None else list(self.handlers)

        async def op(tx: Tx) -> list[Job]:
            pick = (
                sa.select(t.jobs.c.id)
                .where(*self._due(tx.now), t.jobs.c.kind.in_(kinds))
                .order_by(t.jobs.c.due_at)
                .limit(limit)
            )
            if tx.dialect == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            token = str(uuid.uuid4())
            rows = await tx.execute(
                t.jobs.update()
                .where(t.jobs.c.id.in_(pick.scalar_subquery()))
                .values(
                    leased_until=tx.now + self.lease_duration, lease_token=token,
                    attempts=t.jobs.c.attempts + 1, updated_at=tx.now,
                )
                .returning(*t.jobs.c)
            )
            jobs = []
            for row in rows:
                job = Job.from_row(row)
                handler = self.handlers.get(job.kind)
                if handler is not None and handler.prefetch is not None:
                    job = dataclasses.replace(job, prefetched=await handler.prefetch(tx, job))
                jobs.append(job)
            return jobs

        return await self.store.write(op)

    async def renew(self, jobs: Iterable[Job]) -> set[str]:
        """Renew the leases of running jobs in one statement; returns the ids whose lease is
        gone (another worker took the job over). Apart from the writer's batches: a batch
        stuck on a row lock must not cost this process the leases of the jobs it runs."""
        held = {(job.id, job.lease_token) for job in jobs}
        if not held:
            return set()
        ours = sa.and_(sa.tuple_(t.jobs.c.id, t.jobs.c.lease_token).in_(sorted(held)),
                       t.jobs.c.status == JobStatus.QUEUED.value)

        async def op(tx: Tx) -> set[str]:
            # A row locked by an open transaction (this process's own batch finishing the
            # job, say) is skipped rather than waited for; it is lost only if it is no
            # longer ours in what is committed.
            unlocked = sa.select(t.jobs.c.id).where(ours).with_for_update(skip_locked=True).scalar_subquery()
            rows = await tx.execute(
                t.jobs.update().where(t.jobs.c.id.in_(unlocked))
                .values(leased_until=tx.now + self.lease_duration, updated_at=tx.now)
                .returning(t.jobs.c.id)
            )
            renewed = {r.id for r in rows}
            if len(renewed) < len(held):
                renewed |= set((await tx.execute(sa.select(t.jobs.c.id).where(ours))).scalars())
            return {job_id for job_id, _ in held} - renewed

        return await self.store.write_apart(op)

    async def _guard(self, tx: Tx, job: Job, **values: Any) -> None:
        result = await tx.execute(
            t.jobs.update()
            .where(t.jobs.c.id == job.id, t.jobs.c.lease_token == job.lease_token)
            .values(leased_until=None, lease_token=None, updated_at=tx.now, **values)
        )
        if result.rowcount != 1:
            raise LeaseLost(f"job {job.id} ({job.kind}) was taken over by another worker")

    async def finish(self, job: Job, outcome: Op[None] | None) -> None:
        async def op(tx: Tx) -> None:
            done = await tx.execute(_FINISH, {"job_id": job.id, "token": job.lease_token, "now": tx.now})
            if done.rowcount != 1:
                raise LeaseLost(f"job {job.id} ({job.kind}) was taken over by another worker")
            if outcome is not None:
                await outcome(tx)

        # The handler did its side effect: recording it must not wait behind a burst.
        await self.store.write(op, urgent=True)
        metrics.JOBS.labels(kind=job.kind, outcome="done").inc()

    async def fail(self, job: Job, error: BaseException) -> JobStatus:
        """Record a failed attempt: schedule a retry, or move the job to the dead letters."""
        # Library errors quote URLs; the stored error (shown on the run, audited) never keeps
        # their user names, passwords or queries.
        message = redact_urls_in(f"{type(error).__name__}: {error}")[:2000]
        transient = not isinstance(error, PermanentError)
        handler = self.handlers.get(job.kind)

        async def op(tx: Tx) -> JobStatus:
            if isinstance(error, Deferred):
                await self._guard(tx, job, due_at=tx.now + timedelta(seconds=error.retry_after or 1.0),
                                  attempts=t.jobs.c.attempts - 1, last_error=message)
                return JobStatus.QUEUED
            if handler and handler.on_failed_attempt:
                await handler.on_failed_attempt(tx, job, message)
            if transient and job.attempts < job.max_attempts:
                delay = backoff_seconds(job.attempts, self.backoff_base, self.backoff_max)
                retry_after = getattr(error, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, retry_after)
                await self._guard(tx, job, due_at=tx.now + timedelta(seconds=delay), last_error=message)
                return JobStatus.QUEUED
            await self._guard(tx, job, status=JobStatus.DEAD.value, finished_at=tx.now, last_error=message)
            tx.audit("job.dead", run_id=job.run_id, actor="system",
                     data={"job_id": job.id, "kind": job.kind, "attempts": job.attempts, "error": message})
            if handler and handler.on_dead:
                await handler.on_dead(tx, job, message)
            return JobStatus.DEAD

        status = await self.store.write(op)
        outcome = "deferred" if isinstance(error, Deferred) else "retry" if status is JobStatus.QUEUED else "dead"
        metrics.JOBS.labels(kind=job.kind, outcome=outcome).inc()
        return status

    async def retry_dead(self, job_id: str, actor: str, via: str | None = None) -> Job:
        """Operator action: put a dead job back in the queue with a fresh attempt budget.
        `via`: where the operator acted, when not the API ("console"), recorded in the audit event."""
        async def op(tx: Tx) -> Job:
            row = (await tx.execute(sa.select(t.jobs).where(t.jobs.c.id == job_id))).first()
            if row is None:
                raise NotFound("job", job_id)
            job = Job.from_row(row)
            if job.status is not JobStatus.DEAD:
                raise InvalidTransition(f"job {job_id} is {job.status.value}; only dead jobs can be retried", job_id=job_id)
            await tx.execute(
                t.jobs.update().where(t.jobs.c.id == job_id).values(
                    status=JobStatus.QUEUED.value, attempts=0, due_at=tx.now, finished_at=None, updated_at=tx.now,
                )
            )
            tx.audit("job.retried", run_id=job.run_id, actor=actor,
                     data={"job_id": job.id, "kind": job.kind, **({"via": via} if via else {})})
            handler = self.handlers.get(job.kind)
            if handler and handler.on_retry:
                await handler.on_retry(tx, job)
            tx.after_commit(self.wakeup.set)
            row = (await tx.execute(sa.select(t.jobs).where(t.jobs.c.id == job_id))).one()
            return Job.from_row(row)

        return await self.store.write(op)


class Worker:
    """Leases due jobs and runs their handlers, at most `concurrency` at a time.

    Leases are short (`JOB_LEASE_SECONDS`, 10 s by default) so that another process takes
    over a dead one's jobs within seconds; while jobs run, one renewal every third of a
    lease extends all of them in one statement, so a live slow job (an LLM step, a long
    SMTP send) is never taken over. An idle worker renews nothing."""

    def __init__(self, queue: JobQueue, *, concurrency: int = 8, poll_seconds: float = 1.0, timeout_seconds: float = 60.0,
                 foreground: Foreground | None = None, lanes: dict[str, int] | None = None) -> None:
        self.queue = queue
        self.foreground = foreground or Foreground(max_defer_seconds=0.0)
        self.concurrency = concurrency
        # lane -> slots; a kind whose handler names a lane not listed runs in the default one.
        self.lanes = {DEFAULT_LANE: concurrency, **(lanes or {})}
        self._lane_tasks: dict[str, set[asyncio.Task[None]]] = {lane: set() for lane in self.lanes}
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._recording: set[str] = set()  # handler done, outcome being recorded (which ends the lease)
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        self._jobs_running = asyncio.Event()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="job-worker")
        self._renew_task = asyncio.create_task(self._renew_leases(), name="job-lease-renewal")

    async def stop(self) -> None:
        for background in (self._loop_task, self._renew_task):
            if background:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)
        # Jobs in flight are abandoned, not failed: their lease runs out and they run again.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lane_of(self, kind: str) -> str:
        lane = self.queue.handlers[kind].lane
        return lane if lane in self.lanes else DEFAULT_LANE

    def _leasable(self) -> dict[str, int]:
        """Free slots per lane worth a lease: in a wide lane, wait for a few to free up
        rather than take a write transaction per finished job."""
        out = {}
        for lane, size in self.lanes.items():
            running = len(self._lane_tasks[lane])
            free = size - running
            if free > 0 and (free >= max(1, size // 8) or running == 0):
                out[lane] = free
        return out

    async def _lease(self, leasable: dict[str, int]) -> list[Job]:
        if len(self.lanes) == 1:
            return await self.queue.lease(leasable[DEFAULT_LANE])
        jobs: list[Job] = []
        for lane, free in leasable.items():
            kinds = [k for k in self.queue.handlers if self._lane_of(k) == lane]
            if kinds:
                jobs += await self.queue.lease(free, kinds)
        return jobs

    async def _loop(self) -> None:
        woken = False
        while True:
            try:
                leasable = self._leasable()
                jobs: list[Job] = []
                # Idle, it sleeps until the next job falls due (a timer), at most the poll
                # interval: other processes' new jobs are seen within it, as before timers.
                sleep = self.poll_seconds
                if leasable:
                    await self.foreground.wait_clear()
                    self.queue.wakeup.clear()
                    # A local commit that enqueued work: lease at once. A poll: look first
                    # (a cheap read) so an idle worker takes no write transaction.
                    if woken:
                        jobs = await self._lease(leasable)
                    if not jobs:
                        next_due = await self.queue.next_due()
                        if next_due is not None:
                            wait = (next_due - self.queue.store.clock()).total_seconds()
                            if wait <= 0:
                                jobs = await self._lease(leasable)
                            else:
                                sleep = min(sleep, wait)
                for job in jobs:
                    task = asyncio.create_task(self._run(job), name=f"job-{job.kind}-{job.id}")
                    self._tasks.add(task)
                    self._lane_tasks[self._lane_of(job.kind)].add(task)
                    self._running[job.id] = (job, task)
                    self._jobs_running.set()
                    task.add_done_callback(functools.partial(self._done, job.id))
                woken = False
                if jobs and not self._leasable():
                    await self._wait(self._slot_free)
                elif not jobs and self._tasks and not leasable:
                    # Every lane is full: a freed slot, or new work, wakes it.
                    await self._wait(self._slot_free, sleep)
                elif not jobs:
                    self.queue.sleeping_until = self.queue.store.clock() + timedelta(seconds=sleep)
                    try:
                        woken = await self._wait(self.queue.wakeup, sleep)
                    finally:
                        self.queue.sleeping_until = None
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away: keep polling
                log.exception("job worker loop failed; retrying")
                await asyncio.sleep(self.poll_seconds)

    async def _wait(self, event: asyncio.Event, timeout: float | None = None) -> bool:
        """True when `event` fired, False when `timeout` (the poll interval) ran out."""
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the worker's own
        # cancellation (Worker.stop) when the event fires at the same moment.
        try:
            async with asyncio.timeout(self.poll_seconds if timeout is None else timeout):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            event.clear()
        return True

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        for tasks in self._lane_tasks.values():
            tasks.discard(task)
        self._running.pop(job_id, None)
        self._recording.discard(job_id)
        if not self._running:
            self._jobs_running.clear()
        self._slot_free.set()

    async def _renew_leases(self) -> None:
        interval = self.queue.lease_duration.total_seconds() / 3
        while True:
            await self._jobs_running.wait()
            await asyncio.sleep(interval)
            running = dict(self._running)
            if not running:
                continue
            try:
                lost = await self.queue.renew(job for job, _ in running.values())
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be briefly away: try again next beat
                log.exception("could not renew the leases of %d running jobs", len(running))
                continue
            metrics.LEASES_RENEWED.inc(len(running) - len(lost))
            # A job that finished while the renewal ran is gone from `_running`: not lost.
            for job_id in (lost - self._recording) & self._running.keys():
                job, task = running[job_id]
                if self._running[job_id][1] is not task:
                    continue
                # Another worker runs it now; what this one would still do would be done twice.
                log.warning("job %s (%s) was taken over by another worker; stopping it here", job.id, job.kind)
                metrics.LEASES_LOST.inc()
                task.cancel()

    async def _run(self, job: Job) -> None:
        handler = self.queue.handlers[job.kind]
        timeout = handler.timeout_seconds or self.timeout_seconds
        mark_job()
        try:
            await self.foreground.wait_clear()  # leased before a burst began: still let it go first
            async with asyncio.timeout(timeout):
                outcome = await handler.run(job)
            self._recording.add(job.id)
            await self.queue.finish(job, outcome)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            log.warning("%s", exc)
        except Exception as exc:
            if isinstance(exc, Deferred):
                log.debug("job %s (%s) deferred: %s", job.id, job.kind, exc)
            elif not isinstance(exc, (TransientError, PermanentError)):
                log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            else:
                log.warning("job %s (%s) attempt %d failed: %s", job.id, job.kind, job.attempts,
                            redact_urls_in(str(exc)))
            self._recording.add(job.id)
            try:
                await self.queue.fail(job, exc)
            except LeaseLost as lost:
                log.warning("%s", lost)
            except Exception:
                log.exception("could not record the failure of job %s", job.id)
