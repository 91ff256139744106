"""`audit verify` for the console: the chain is read a page at a time and checked in a
thread, so a long log neither blocks the event loop nor sits whole in memory. One check runs
at a time per process; its result is kept for a minute (each page view does not re-read the log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..audit import AuditEvent, ChainKey, ChainReport, verify_chain
from ..store.db import Store
from . import queries

PAGE = 2000
KEEP_SECONDS = 60.0
FRESH_AT_MOST_EVERY = 10.0  # "check again" re-reads the whole log: not more often than this


@dataclass(frozen=True, slots=True)
class Checked:
    report: ChainReport
    head_seq: int
    at: float  # time.monotonic() when checked


class AuditCheck:
    def __init__(self, store: Store, key: ChainKey) -> None:
        self.store = store
        self.key = key
        self._last: Checked | None = None
        self._lock = asyncio.Lock()

    async def result(self, *, fresh: bool = False) -> Checked:
        async with self._lock:
            last = self._last
            age = time.monotonic() - last.at if last is not None else None
            if last is not None and age is not None and age < (FRESH_AT_MOST_EVERY if fresh else KEEP_SECONDS):
                return last
            self._last = await self._check()
            return self._last

    async def _check(self) -> Checked:
        loop = asyncio.get_running_loop()
        seq, digest = await queries.audit_head(self.store)

        def events() -> Iterator[AuditEvent]:  # runs in the thread; each page is read on the loop
            after = 0
            while True:
                page = asyncio.run_coroutine_threadsafe(
                    queries.audit_events_after(self.store, after, PAGE), loop).result()
                yield from (e for e in page if e.seq <= seq)  # events appended meanwhile: next time
                if len(page) < PAGE or page[-1].seq >= seq:
                    return
                after = page[-1].seq

        report = await asyncio.to_thread(lambda: verify_chain(events(), self.key, seq, digest))
        return Checked(report, seq, time.monotonic())
