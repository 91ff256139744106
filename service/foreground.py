"""Requests someone is waiting for (card clicks, decisions) go before background jobs.

A burst of clicks sets off as many jobs (emails, card updates) as it has clicks; run at
once, they share the event loop with the clicks still waiting for their answers. Workers
therefore hold back new jobs while such requests are in flight and for a short quiet
period after, but never longer than `max_defer_seconds` from the start of a burst: under
steady load the jobs and the requests share the loop rather than the jobs starving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Foreground:
    def __init__(self, *, quiet_seconds: float = 0.05, max_defer_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_seconds = quiet_seconds
        self.max_defer_seconds = max_defer_seconds
        self._clock = clock
        self._active = 0
        self._burst_started = float("-inf")
        self._last_ended = float("-inf")

    @contextmanager
    def request(self) -> Iterator[None]:
        now = self._clock()
        if self._active == 0 and now - self._last_ended >= self.quiet_seconds:
            self._burst_started = now
        self._active += 1
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
