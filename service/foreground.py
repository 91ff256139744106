"""Requests someone is waiting for (card clicks, decisions) go before background jobs.

A burst of clicks sets off as many jobs (emails, card updates) as it has clicks; run at
once, they share the event loop with the clicks still waiting for their answers. Workers
therefore lease nothing new while such requests are in flight, and start the moment the
last one has been answered: no fixed delay, so the email of a lone decision leaves at
once. The hold is bounded by `max_defer_seconds` from the start of a burst: under steady
load (requests always in flight) jobs and requests share the loop rather than the jobs
starving.

Jobs already running when a burst begins hold back too, at their next store access
(`Store` asks `in_job()`; the worker marks each job's task): their remaining steps wait
until the burst is answered. Writes that record a side effect already done, and lease
renewals, never wait (`Store.write(urgent=True)`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_IN_JOB: ContextVar[bool] = ContextVar("countersign_in_job", default=False)


def mark_job() -> None:
    """Called in a job's own task: what it does from here on is background work."""
    _IN_JOB.set(True)


def in_job() -> bool:
    return _IN_JOB.get()


class Foreground:
    def __init__(self, *, max_defer_seconds: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_defer_seconds = max_defer_seconds
        self._clock = clock
        self._active = 0
        self.started = 0  # requests counted as foreground so far (what tests and metrics can see)
        self._burst_started = float("-inf")
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def request(self) -> Iterator[None]:
        if self._active == 0:
            self._burst_started = self._clock()
            self._idle.clear()
        self._active += 1
        self.started += 1
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    def clear(self) -> bool:
        """True when background work may start now."""
        return self._active == 0 or self._clock() - self._burst_started >= self.max_defer_seconds

    async def wait_clear(self) -> None:
        while not self.clear():
            remaining = self.max_defer_seconds - (self._clock() - self._burst_started)
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=max(remaining, 0.001))
            except TimeoutError:
                pass
