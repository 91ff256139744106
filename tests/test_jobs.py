"""The store and the jobs table, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service.jobs import Job, JobHandler, JobQueue, JobStatus, LeaseLost, PermanentError, TransientError, Worker
from service.store import tables as t
from service.store.db import Store, Tx

from .conftest import AUDIT_KEY


async def _second_store(db_url: str) -> Store:
    """Another connection pool and writer on the same database: a second service process."""
    s = Store.from_url(db_url, audit_key=AUDIT_KEY)
    await s.start()
    return s


def _queue(store: Store, **kw: object) -> JobQueue:
    return JobQueue(store, max_attempts=3, lease_seconds=30, backoff_base=0.01, backoff_max=0.05, **kw)  # type: ignore[arg-type]


async def _enqueue(queue: JobQueue, kind: str, n: int, **kw: object) -> list[str]:
    async def op(tx: Tx) -> list[str]:
        return [await queue.enqueue(tx, kind, {"n": i}, **kw) for i in range(n)]  # type: ignore[arg-type]

    return await queue.store.write(op)


async def _jobs(store: Store) -> list[Job]:
    async def q(conn: sa.ext.asyncio.AsyncConnection) -> list[Job]:
        return [Job.from_row(r) for r in await conn.execute(sa.select(t.jobs).order_by(t.jobs.c.created_at))]

    return await store.read(q)


async def _wait_until(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_two_workers_never_run_a_job_twice(store: Store, db_url: str) -> None:
    other = await _second_store(db_url)
    runs: Counter[int] = Counter()

    async def handle(job: Job) -> None:
        runs[job.payload["n"]] += 1
        await asyncio.sleep(0.001)

    queues = [_queue(store), _queue(other)]
    for q in queues:
        q.register("count", JobHandler(run=handle))
    await _enqueue(queues[0], "count", 300)
    workers = [Worker(q, concurrency=8, poll_seconds=0.01) for q in queues]
    for w in workers:
        w.start()
    try:
        async def all_done() -> bool:
            return all(j.status is JobStatus.DONE for j in await _jobs(store))

        await _wait_until(all_done)
    finally:
        for w in workers:
            await w.stop()
        await other.close()
    assert sorted(runs) == list(range(300))
    assert set(runs.values()) == {1}


async def test_transient_failures_retry_with_backoff_then_dead_letter(store: Store) -> None:
    queue = _queue(store)
    seen: list[int] = []
    dead_hook: list[str] = []

    async def flaky(job: Job) -> None:
        seen.append(job.attempts)
        raise TransientError("connection refused")

    async def on_dead(tx: Tx, job: Job, error: str) -> None:
        dead_hook.append(error)

    queue.register("flaky", JobHandler(run=flaky, on_dead=on_dead))
    [job_id] = await _enqueue(queue, "flaky", 1)
    worker = Worker(queue, poll_seconds=0.01)
    worker.start()
    try:
        async def dead() -> bool:
            return (await _jobs(store))[0].status is JobStatus.DEAD

        await _wait_until(dead)
    finally:
        await worker.stop()
    [job] = await _jobs(store)
    assert seen == [1, 2, 3] and job.attempts == 3
    assert job.last_error == "TransientError: connection refused"
    assert dead_hook == ["TransientError: connection refused"]

    retried = await queue.retry_dead(job_id, actor="operator")
    assert retried.status is JobStatus.QUEUED and retried.attempts == 0
    with pytest.raises(Exception, match="only dead jobs"):
        await queue.retry_dead(job_id, actor="operator")


async def test_permanent_failure_goes_straight_to_dead_letters(store: Store) -> None:
    queue = _queue(store)
    calls = 0

    async def broken(job: Job) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("550 mailbox unavailable")

    queue.register("broken", JobHandler(run=broken))
    await _enqueue(queue, "broken", 1)
    [job] = await queue.lease(10)
    worker = Worker(queue)
    await worker._run(job)
    [stored] = await _jobs(store)
    assert calls == 1 and stored.status is JobStatus.DEAD and "550" in (stored.last_error or "")


async def test_retry_after_is_honoured(store: Store) -> None:
    queue = _queue(store)

    async def throttled(job: Job) -> None:
        raise TransientError("429", retry_after=30)

    queue.register("throttled", JobHandler(run=throttled))
    await _enqueue(queue, "throttled", 1)
    [job] = await queue.lease(1)
    await Worker(queue)._run(job)
    [stored] = await _jobs(store)
    assert stored.status is JobStatus.QUEUED
    assert stored.due_at - job.due_at >= timedelta(seconds=29)


async def test_timer_is_not_leased_before_it_is_due(store: Store) -> None:
    queue = _queue(store)
    queue.register("timer", JobHandler(run=lambda job: asyncio.sleep(0)))  # type: ignore[arg-type,return-value]

    async def op(tx: Tx) -> None:
        await queue.enqueue(tx, "timer", {}, due_at=tx.now + timedelta(hours=1))
        await queue.enqueue(tx, "timer", {"now": True})

    await store.write(op)
    leased = await queue.lease(10)
    assert [j.payload for j in leased] == [{"now": True}]
    assert await queue.lease(10) == []


async def test_prefetch_reads_in_the_leasing_transaction(store: Store) -> None:
    """A handler's prefetch sees the database as the lease does (the job already leased)."""
    queue = _queue(store)

    async def prefetch(tx: Tx, job: Job) -> tuple[Any, ...]:
        row = (await tx.execute(sa.select(t.jobs.c.lease_token, t.jobs.c.attempts)
                                .where(t.jobs.c.id == job.id))).one()
        return (job.payload["n"], row.lease_token, row.attempts)

    queue.register("read", JobHandler(run=lambda job: asyncio.sleep(0), prefetch=prefetch))  # type: ignore[arg-type,return-value]
    queue.register("plain", JobHandler(run=lambda job: asyncio.sleep(0)))  # type: ignore[arg-type,return-value]
    await _enqueue(queue, "read", 2)
    await _enqueue(queue, "plain", 1)
    leased = await queue.lease(10)
    assert sorted(j.prefetched for j in leased if j.kind == "read") == [
        (0, leased[0].lease_token, 1), (1, leased[0].lease_token, 1)]
    assert [j.prefetched for j in leased if j.kind == "plain"] == [None]


async def test_expired_lease_is_taken_over_and_the_old_worker_cannot_finish(store: Store) -> None:
    queue = JobQueue(store, lease_seconds=0.05, max_attempts=5)
    queue.register("slow", JobHandler(run=lambda job: asyncio.sleep(0)))  # type: ignore[arg-type,return-value]
    await _enqueue(queue, "slow", 1)
    [first] = await queue.lease(1)
    await asyncio.sleep(0.1)  # the first worker "hangs" past its lease
    [second] = await queue.lease(1)
    assert second.id == first.id and second.lease_token != first.lease_token and second.attempts == 2
    with pytest.raises(LeaseLost):
        await queue.finish(first, None)
    await queue.finish(second, None)
    [stored] = await _jobs(store)
    assert stored.status is JobStatus.DONE


async def test_outcome_is_rolled_back_when_the_lease_is_lost(store: Store) -> None:
    queue = JobQueue(store, lease_seconds=0.05)
    queue.register("k", JobHandler(run=lambda job: asyncio.sleep(0)))  # type: ignore[arg-type,return-value]
    await _enqueue(queue, "k", 1)
    [first] = await queue.lease(1)
    await asyncio.sleep(0.1)
    await queue.lease(1)

    async def outcome(tx: Tx) -> None:
        tx.audit("should.not.exist", run_id=None, actor="test")

    with pytest.raises(LeaseLost):
        await queue.finish(first, outcome)

    async def kinds(conn: sa.ext.asyncio.AsyncConnection) -> list[str]:
        return list((await conn.execute(sa.select(t.audit_events.c.kind))).scalars())

    assert "should.not.exist" not in await store.read(kinds)


async def test_one_failing_op_does_not_fail_its_batch_neighbours(store: Store) -> None:
    async def good(tx: Tx) -> str:
        tx.audit("good", run_id=None, actor="test")
        return "ok"

    async def bad(tx: Tx) -> str:
        tx.audit("bad", run_id=None, actor="test")
        raise ValueError("boom")

    results = await asyncio.gather(*(store.write(good if i % 5 else bad) for i in range(50)), return_exceptions=True)
    assert sum(r == "ok" for r in results) == 40
    assert all(isinstance(r, ValueError) for i, r in enumerate(results) if i % 5 == 0)

    async def kinds(conn: sa.ext.asyncio.AsyncConnection) -> Counter[str]:
        return Counter((await conn.execute(sa.select(t.audit_events.c.kind))).scalars())

    # audit.keyed: the marker opening a keyed chain, written with the first events
    assert await store.read(kinds) == Counter({"good": 40, "audit.keyed": 1})


async def test_a_deferred_job_waits_without_using_an_attempt(store: Store) -> None:
    from service.jobs import Deferred

    queue = _queue(store)  # max_attempts=3
    calls = 0

    async def rate_limited(job: Job) -> None:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise Deferred("rate limit: next send in 0.01 s", retry_after=0.01)

    queue.register("paced", JobHandler(run=rate_limited))
    await _enqueue(queue, "paced", 1)
    worker = Worker(queue, poll_seconds=0.01)
    worker.start()
    try:
        async def done() -> bool:
            return (await _jobs(store))[0].status is JobStatus.DONE

        await _wait_until(done)
    finally:
        await worker.stop()
    [job] = await _jobs(store)
    assert calls == 6 and job.attempts == 1  # five waits, one real attempt


async def test_a_slow_job_renews_its_lease_and_is_never_run_twice(store: Store, db_url: str) -> None:
    queue = JobQueue(store, max_attempts=3, lease_seconds=0.3, backoff_base=0.01, backoff_max=0.05)
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append(job.id)
        await asyncio.sleep(1.2)  # four leases long

    queue.register("slow", JobHandler(run=slow, timeout_seconds=10))
    [job_id] = await _enqueue(queue, "slow", 1)
    worker = Worker(queue, concurrency=1, poll_seconds=0.05)
    other = await _second_store(db_url)
    rival = JobQueue(other, lease_seconds=0.3)
    rival.register("slow", JobHandler(run=slow, timeout_seconds=10))
    worker.start()
    try:
        await _wait_until(lambda: asyncio.sleep(0, bool(runs)))
        for _ in range(10):  # another process keeps trying to take it while it runs
            assert await rival.lease(8) == []
            await asyncio.sleep(0.1)
        await _wait_until(lambda: _status(store, job_id, JobStatus.DONE))
    finally:
        await worker.stop()
        await other.close()
    assert runs == [job_id]
    [job] = await _jobs(store)
    assert job.attempts == 1


async def test_a_job_whose_worker_died_is_taken_over_after_one_lease(store: Store) -> None:
    queue = JobQueue(store, max_attempts=3, lease_seconds=0.3, backoff_base=0.01, backoff_max=0.05)
    queue.register("slow", JobHandler(run=lambda job: asyncio.sleep(0), timeout_seconds=10))
    await _enqueue(queue, "slow", 1)
    [leased] = await queue.lease(1)  # leased by a worker that then dies: nobody renews it
    assert await queue.lease(1) == []
    await asyncio.sleep(0.35)
    [taken] = await queue.lease(1)
    assert taken.id == leased.id and taken.attempts == 2


async def _status(store: Store, job_id: str, status: JobStatus) -> bool:
    return any(j.id == job_id and j.status is status for j in await _jobs(store))


async def test_no_credential_reaches_a_dead_letter_the_audit_log_or_the_logs(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from service.logs import JsonFormatter

    queue = _queue(store)
    url = "https://hook-user:hook-password@ops.example.com/hooks/run?token=sig-secret-123"

    async def leaky(job: Job) -> None:
        raise PermanentError(f"callback to {url} answered HTTP 410")

    queue.register("leaky", JobHandler(run=leaky))
    await _enqueue(queue, "leaky", 1)
    [job] = await queue.lease(10)
    with caplog.at_level(logging.WARNING):
        await Worker(queue)._run(job)
        logging.getLogger("service.test").warning("retrying %s", url)

    async def audit(conn: sa.ext.asyncio.AsyncConnection) -> list[Any]:
        return [r.data for r in await conn.execute(sa.select(t.audit_events).where(t.audit_events.c.kind == "job.dead"))]

    [stored] = await _jobs(store)
    [dead] = await store.read(audit)
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for text in (stored.last_error or "", json.dumps(dead), logged):
        assert "ops.example.com/hooks/run" in text or text == logged
        assert "hook-password" not in text and "hook-user" not in text and "sig-secret-123" not in text, text
    assert stored.last_error == "PermanentError: callback to https://ops.example.com/hooks/run answered HTTP 410"


async def test_a_job_taken_over_by_another_worker_is_stopped_here(store: Store) -> None:
    queue = JobQueue(store, max_attempts=3, lease_seconds=0.3)
    started, stopped = asyncio.Event(), asyncio.Event()

    async def slow(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise

    queue.register("slow", JobHandler(run=slow, timeout_seconds=60))
    [job_id] = await _enqueue(queue, "slow", 1)
    worker = Worker(queue, concurrency=1, poll_seconds=0.05)
    worker.start()
    try:
        await asyncio.wait_for(started.wait(), 10)

        async def take_over(tx: Tx) -> None:  # what another worker's lease after an expiry does
            await tx.execute(t.jobs.update().where(t.jobs.c.id == job_id).values(lease_token="another-worker"))

        await store.write(take_over)
        await asyncio.wait_for(stopped.wait(), 10)  # at the next renewal, not after its 30 s
    finally:
        await worker.stop()
    [job] = await _jobs(store)
    assert job.status is JobStatus.QUEUED and job.lease_token == "another-worker"  # its outcome is the new holder's


async def test_a_wide_lane_runs_many_jobs_beside_the_default_slots(store: Store) -> None:
    """Timers have a lane of their own: ten of them run at once while the default lane's one
    slot is busy with a slow job."""
    queue = _queue(store)
    running, release = set(), asyncio.Event()
    slow_started = asyncio.Event()

    async def wide(job: Job) -> None:
        running.add(job.payload["n"])
        await release.wait()

    async def slow(job: Job) -> None:
        slow_started.set()
        await release.wait()

    queue.register("wide", JobHandler(run=wide, lane="timers"))  # type: ignore[arg-type]
    queue.register("slow", JobHandler(run=slow))  # type: ignore[arg-type]
    await _enqueue(queue, "slow", 2)
    await _enqueue(queue, "wide", 10)
    worker = Worker(queue, concurrency=1, poll_seconds=0.02, lanes={"timers": 10})
    worker.start()
    try:
        await asyncio.wait_for(slow_started.wait(), 10)

        async def all_wide_running() -> bool:
            return len(running) == 10

        await _wait_until(all_wide_running)
        assert len(worker._lane_tasks["default"]) == 1  # the second slow job waits for the one slot
        release.set()

        async def all_done() -> bool:
            return all(j.status is JobStatus.DONE for j in await _jobs(store))

        await _wait_until(all_done)
    finally:
        await worker.stop()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_write_stuck_on_a_row_lock_does_not_cost_running_jobs_their_leases(store: Store, db_url: str) -> None:
    """The writer's batch waits on a row another connection holds locked (another replica,
    an operator's SELECT ... FOR UPDATE) for several leases; the job running meanwhile keeps
    its lease, no other process takes it over, and it runs once."""
    queue = JobQueue(store, max_attempts=3, lease_seconds=0.3, backoff_base=0.01, backoff_max=0.05)
    release = asyncio.Event()
    runs: list[str] = []

    async def slow(job: Job) -> None:
        runs.append(job.id)
        await release.wait()

    queue.register("slow", JobHandler(run=slow, timeout_seconds=30))
    [locked_id] = await _enqueue(queue, "parked", 1, due_at=store.clock() + timedelta(days=1))
    [job_id] = await _enqueue(queue, "slow", 1)
    worker = Worker(queue, concurrency=1, poll_seconds=0.05)
    other = await _second_store(db_url)
    rival = JobQueue(other, lease_seconds=0.3)
    rival.register("slow", JobHandler(run=slow, timeout_seconds=30))
    locker = sa.ext.asyncio.create_async_engine(db_url)
    worker.start()
    try:
        await _wait_until(lambda: asyncio.sleep(0, bool(runs)))
        async with locker.connect() as conn:
            await conn.begin()
            await conn.execute(sa.select(t.jobs.c.id).where(t.jobs.c.id == locked_id).with_for_update())

            async def touch(tx: Tx) -> None:
                await tx.execute(t.jobs.update().where(t.jobs.c.id == locked_id).values(last_error="touched"))

            stuck = asyncio.create_task(store.write(touch))
            for _ in range(12):  # four leases: the rival keeps trying to take the running job
                assert await rival.lease(8) == []
                await asyncio.sleep(0.1)
            assert not stuck.done()  # the writer really was waiting on the lock all along
            await conn.rollback()
        await stuck
        release.set()
        await _wait_until(lambda: _status(store, job_id, JobStatus.DONE))
    finally:
        release.set()
        await worker.stop()
        await other.close()
        await locker.dispose()
    assert runs == [job_id]
