"""Background jobs hold back while card clicks and decisions are answered, within bounds."""

from __future__ import annotations

import asyncio
from typing import Any

from service.foreground import Foreground, mark_job
from service.jobs import Job, JobHandler, JobStatus, Worker
from service.store.db import Store, Tx

from .test_jobs import _enqueue, _jobs, _queue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_clear_the_moment_the_last_request_ends() -> None:
    clock = Clock()
    fg = Foreground(max_defer_seconds=1.0, clock=clock)
    assert fg.clear()  # nothing ever happened
    with fg.request():
        assert not fg.clear()
        clock.now += 0.5
        with fg.request():
            assert not fg.clear()
        assert not fg.clear()  # one still in flight
    assert fg.clear()  # no quiet period: the follow-up of a lone decision starts at once


def test_a_burst_defers_jobs_for_at_most_max_defer() -> None:
    clock = Clock()
    fg = Foreground(max_defer_seconds=1.0, clock=clock)
    # Steady load: requests overlap, so there is never a moment with none in flight.
    outer = fg.request()
    outer.__enter__()
    for _ in range(9):
        with fg.request():
            clock.now += 0.1
        assert not fg.clear()
    clock.now += 0.2
    assert fg.clear()  # over 1 s since the burst began: jobs share the loop from now on
    outer.__exit__(None, None, None)
    with fg.request():  # the next burst defers jobs again
        assert not fg.clear()


async def test_waiting_ends_when_the_last_request_ends() -> None:
    fg = Foreground(max_defer_seconds=30.0)
    with fg.request():
        waiter = asyncio.create_task(fg.wait_clear())
        await asyncio.sleep(0.05)
        assert not waiter.done()
    await asyncio.wait_for(waiter, 1)  # woken by the request's end, not by a poll or the bound


async def test_waiting_ends_at_the_bound_under_steady_load() -> None:
    fg = Foreground(max_defer_seconds=0.2)
    with fg.request():
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(fg.wait_clear(), 5)
        assert asyncio.get_running_loop().time() - started >= 0.19


def test_max_defer_zero_never_defers() -> None:
    fg = Foreground(max_defer_seconds=0.0)
    with fg.request():
        assert fg.clear()


async def test_worker_starts_no_job_while_a_request_is_answered(store: Store) -> None:
    ran: list[float] = []
    queue = _queue(store)

    async def run(job: Job) -> None:
        ran.append(asyncio.get_running_loop().time())

    queue.register("k", JobHandler(run=run))
    fg = Foreground(max_defer_seconds=5.0)
    worker = Worker(queue, concurrency=2, poll_seconds=0.05, foreground=fg)
    worker.start()
    try:
        with fg.request():
            await _enqueue(queue, "k", 3)
            await asyncio.sleep(0.5)
            assert ran == []
            released = asyncio.get_running_loop().time()
        for _ in range(200):
            if len(ran) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(ran) == 3 and min(ran) >= released
    finally:
        await worker.stop()


async def test_a_running_job_waits_at_its_next_store_access(store: Store) -> None:
    queue = _queue(store)
    started, go = asyncio.Event(), asyncio.Event()
    steps: list[str] = []

    async def run(job: Job) -> None:
        started.set()
        await go.wait()
        await store.read(_nothing)
        steps.append("read")

    queue.register("k", JobHandler(run=run))
    fg = Foreground(max_defer_seconds=5.0)
    store.foreground = fg
    worker = Worker(queue, concurrency=1, poll_seconds=0.05, foreground=fg)
    worker.start()
    try:
        await _enqueue(queue, "k", 1)
        await asyncio.wait_for(started.wait(), 10)
        with fg.request():
            go.set()
            await asyncio.sleep(0.3)
            assert steps == []
            assert await store.read(_nothing) is None  # the request's own reads do not wait
        for _ in range(100):
            if steps:
                break
            await asyncio.sleep(0.02)
        assert steps == ["read"]
    finally:
        store.foreground = None
        await worker.stop()


async def _nothing(conn: object) -> None:
    return None


async def test_post_side_effect_writes_and_renewals_go_through_while_a_burst_holds_jobs(store: Store) -> None:
    """A job that has sent its email records it, and running jobs keep their leases, while
    decisions hold the foreground: neither waits for the burst to be answered."""
    queue = _queue(store)
    fg = Foreground(max_defer_seconds=60.0)
    store.foreground = fg
    sent, recorded, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    other_write_done = asyncio.Event()

    async def send(job: Job) -> Any:
        await go.wait()  # the SMTP server's 250 arrives while the burst is being answered
        sent.set()

        async def record(tx: Tx) -> None:
            tx.audit("delivery.sent", run_id=None, actor="test")
            tx.after_commit(recorded.set)

        return record

    queue.register("send", JobHandler(run=send))
    worker = Worker(queue, concurrency=2, poll_seconds=0.05, foreground=fg)
    worker.start()
    try:
        [job_id] = await _enqueue(queue, "send", 1)
        await asyncio.wait_for(_leased(store, job_id), 10)
        with fg.request():  # a burst of decisions begins and lasts
            go.set()
            await asyncio.wait_for(recorded.wait(), 10)  # the post-send write was not held back
            [running] = [j for j in await _jobs(store) if j.id == job_id]
            assert running.status is JobStatus.DONE

            async def background_write() -> None:  # any other job write still waits
                await store.write(_noop)
                other_write_done.set()

            held = asyncio.create_task(_as_job(background_write))
            await asyncio.sleep(0.2)
            assert not other_write_done.is_set()

            # A lease renewal goes through too: one statement for every running job.
            await _enqueue(queue, "send", 1)
            [other] = await queue.lease(1)  # held by "another worker" (this test)
            assert await asyncio.wait_for(_as_job(lambda: queue.renew([other])), 5) == set()
        await asyncio.wait_for(held, 5)
        assert other_write_done.is_set()
    finally:
        store.foreground = None
        await worker.stop()


async def test_an_urgent_write_commits_ahead_of_the_writes_queued_before_it(store: Store) -> None:
    order: list[str] = []

    def op(name: str) -> Any:
        async def run(tx: Tx) -> None:
            tx.after_commit(lambda: order.append(name))
        return run

    writes = [asyncio.create_task(store.write(op(f"queued-{i}"))) for i in range(20)]
    writes.append(asyncio.create_task(store.write(op("urgent"), urgent=True)))
    await asyncio.gather(*writes)
    assert order[0] == "urgent"  # its own batch, first, though it was queued last


async def _leased(store: Store, job_id: str) -> None:
    while not any(j.id == job_id and j.lease_token for j in await _jobs(store)):
        await asyncio.sleep(0.02)


async def _as_job(fn: Any) -> Any:
    """Run `fn()` as a job's task does (marked as background work)."""
    async def marked() -> Any:
        mark_job()
        return await fn()
    return await asyncio.create_task(marked())


async def _noop(tx: Tx) -> None:
    return None
