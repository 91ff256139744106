"""Requests someone is waiting for (card clicks, decisions) go before background jobs.

A burst of clicks sets off as many jobs (emails, card updates) as it has clicks; run at
once, they share the event loop with the clicks still waiting for their answers. Workers
therefore hold back new jobs while such requests are in flight and for a short quiet
period after, but never longer than `max_defer_seconds` from the start of a burst: under
steady load the jobs and the requests share the loop rather than the jobs starving.

Jobs already running when a burst begins hold back too, at their next store access
(`Store` asks `in_job()`; the worker marks each job's task): their remaining steps wait
until the burst is answered.
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
    def __init__(self, *, quiet_seconds: float = 0.05, max_defer_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_seconds = quiet_seconds
        self.max_defer_seconds = max_defer_seconds
        self._clock = clock
        self._active = 0
        self.started = 0  # requests counted as foreground so far (what tests and metrics can see)
        self._burst_started = float("-inf")
        self._last_ended = float("-inf")

    @contextmanager
    def request(self) -> Iterator[None]:
        now = self._clock()
        if self._active == 0 and now - self._last_ended >= self.quiet_seconds:
            self._burst_started = now
        self._active += 1
        self.started += 1
        try:
            yield
        finally:
            self._active -= 1
            self._last_ended = self._clock()

    def clear(self) -> bool:
        """True when background work may start now."""
        now = self._clock()
        if now - self._burst_started >= self.max_defer_seconds:
            return True
        return self._active == 0 and now - self._last_ended >= self.quiet_seconds

    async def wait_clear(self) -> None:
        while not self.clear():
            await asyncio.sleep(self.quiet_seconds / 2)
