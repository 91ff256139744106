"""Background jobs hold back while card clicks and decisions are answered, within bounds."""

from __future__ import annotations

import asyncio

from service.foreground import Foreground
from service.jobs import Job, JobHandler, Worker
from service.store.db import Store

from .test_jobs import _enqueue, _queue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_clear_after_a_quiet_period_once_requests_end() -> None:
    clock = Clock()
    fg = Foreground(quiet_seconds=0.05, max_defer_seconds=1.0, clock=clock)
    assert fg.clear()  # nothing ever happened
    with fg.request():
        assert not fg.clear()
        clock.now += 0.5
        assert not fg.clear()
    assert not fg.clear()  # quiet period not over: more clicks of the burst may follow
    clock.now += 0.06
    assert fg.clear()


def test_a_burst_defers_jobs_for_at_most_max_defer() -> None:
    clock = Clock()
    fg = Foreground(quiet_seconds=0.05, max_defer_seconds=1.0, clock=clock)
    # Steady load: a new request starts within every quiet period, so there is never a gap.
    for _ in range(9):
        with fg.request():
            clock.now += 0.1
        assert not fg.clear()
    with fg.request():
        clock.now += 0.2
        assert fg.clear()  # over 1 s since the burst began: jobs share the loop from now on
    clock.now += 0.06
    with fg.request():  # after a quiet period, a new burst defers jobs again
        assert not fg.clear()


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
    fg = Foreground(quiet_seconds=0.05, max_defer_seconds=5.0)
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
        assert len(ran) == 3 and min(ran) >= released + 0.05
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
    fg = Foreground(quiet_seconds=0.05, max_defer_seconds=5.0)
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
