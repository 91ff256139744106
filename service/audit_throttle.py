"""At most one audit event per key and window, for events anyone holding a credential can
repeat at will (a refused decision, a refused delegation, a refused API key). Pure: no I/O.

A reviewer, or an attacker with a valid key, can send the same refused attempt as fast as
the service answers; each one audited would grow the hash chain (one row and one HMAC each,
serialised on the audit head) without telling an auditor anything new. So the first attempt
of a key is audited, the same key's attempts in the following `window` are left out and
counted, and the next attempt audited after the window carries that count (the event's data
says how many were left out since the previous one).

A burst that stops still reaches the log: `due` hands out a `Summary` for every key whose
window is over with attempts left out since its audited event (the caller writes it as an
`audit.suppressed` event, see service/audit_summaries.py). The caller looks after each
attempt of any key, and at shutdown with `everything=True` (every count, window over or
not). A count summarised is not carried again by the key's next audited event.

In-process memory, bounded: the `max_keys` most recently seen keys are remembered (least
recently seen dropped first; a key dropped with attempts left out becomes a summary at
once, and `Due.evicted` counts the drops). Keys an attacker can vary without end (an
on-behalf key naming another reviewer each time) therefore cost at most `max_keys` entries,
and at most `max_keys` summaries wait to be written (beyond that the oldest are dropped,
counted in `Due.lost`). Several processes each audit their first attempt.

An op can run twice when its batch fails (service.store.db: each op is re-run alone), so an
attempt is identified by an object of its own: the same attempt asked again gets the same
answer. Attempts left out are counted once their transaction commits (`left_out`), so a
rolled-back one counts nothing.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

WINDOW = timedelta(minutes=1)
MAX_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Subject:
    """What an audited event of a key was about: a summary of the key is recorded so."""

    kind: str  # the event kind, e.g. "decision.refused"
    run_id: str | None
    actor: str
    data: Mapping[str, Any]  # the audited event's data


@dataclass(frozen=True, slots=True)
class Summary:
    subject: Subject
    suppressed: int  # attempts left out since `since`, the key's last audited event
    since: datetime
    why: str  # "window" (over), "evicted" (the key was dropped), "shutdown"


@dataclass(frozen=True, slots=True)
class Due:
    summaries: tuple[Summary, ...]
    evicted: int  # keys dropped since the previous `due` (for a metric)
    lost: int = 0  # summaries dropped unwritten since then (more than `max_keys` waiting)


@dataclass(slots=True)
class _Seen:
    at: datetime  # when the key's last audited event was
    attempt: object  # the attempt that event was
    carried: int  # how many left out before it, which that event said
    subject: Subject | None = None
    left_out: int = 0  # since it
    queued: bool = field(default=False)  # in `_windows`, waiting for its window to end


class AuditThrottle:
    def __init__(self, window: timedelta = WINDOW, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.window = window
        self.max_keys = max_keys
        self._seen: OrderedDict[Hashable, _Seen] = OrderedDict()
        # Keys with attempts left out, by when their window ends (entries of keys since
        # dropped or audited again are skipped when popped, and compacted away).
        self._windows: list[tuple[datetime, int, Hashable, _Seen]] = []
        self._order = itertools.count()
        self._ready: deque[Summary] = deque()  # evicted or requeued: due at once
        self._evicted = 0
        self._lost = 0
        # Ops run on the store's writer thread (SQLite), commits are counted on the loop.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def pending_size(self) -> int:
        """Entries kept for summaries (for tests of the bound)."""
        return len(self._windows) + len(self._ready)

    def admit(self, key: Hashable, now: datetime, attempt: object, subject: Subject | None = None) -> int | None:
        """None: leave this attempt out of the audit log (`key` was audited less than a
        window ago). Otherwise audit it; the number is how many attempts of `key` were left
        out since its previous audited event (0 for the first). `subject`: what the audited
        event says, for a summary of the attempts left out after it."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
                if seen.attempt is attempt:  # the same op run again: the same answer
                    return seen.carried
                if now - seen.at < self.window:
                    return None
            carried = seen.left_out if seen is not None else 0
            self._seen[key] = _Seen(at=now, attempt=attempt, carried=carried, subject=subject)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                _, dropped = self._seen.popitem(last=False)
                self._evicted += 1
                self._summarise(dropped, "evicted")
            return carried

    def left_out(self, key: Hashable) -> None:
        """An attempt `admit` left out was committed: the next audited event of `key`, or
        its summary, says so."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                return
            seen.left_out += 1
            if seen.subject is not None and not seen.queued:
                seen.queued = True
                heapq.heappush(self._windows, (seen.at + self.window, next(self._order), key, seen))
                if len(self._windows) > 2 * self.max_keys:
                    self._compact()

    def due(self, now: datetime, *, everything: bool = False) -> Due:
        """The summaries to write now: keys whose window is over (all of them with
        `everything`, at shutdown) with attempts left out, and keys dropped with some."""
        with self._lock:
            while self._windows and (everything or self._windows[0][0] <= now):
                _, _, key, seen = heapq.heappop(self._windows)
                seen.queued = False
                if self._seen.get(key) is seen:
                    self._summarise(seen, "shutdown" if everything and seen.at + self.window > now else "window")
            due = Due(tuple(self._ready), self._evicted, self._lost)
            self._ready.clear()
            self._evicted = self._lost = 0
            return due

    def requeue(self, summaries: Iterable[Summary]) -> None:
        """Summaries whose write failed: handed out again by the next `due`."""
        with self._lock:
            for summary in summaries:
                self._ready_append(summary)

    def _summarise(self, seen: _Seen, why: str) -> None:
        if seen.left_out and seen.subject is not None:
            self._ready_append(Summary(seen.subject, seen.left_out, seen.at, why))
            seen.left_out = 0  # said now: the key's next audited event does not carry it again

    def _ready_append(self, summary: Summary) -> None:
        self._ready.append(summary)
        while len(self._ready) > self.max_keys:
            self._ready.popleft()
            self._lost += 1

    def _compact(self) -> None:
        self._windows = [w for w in self._windows if self._seen.get(w[2]) is w[3]]
        heapq.heapify(self._windows)
