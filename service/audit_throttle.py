"""At most one audit event per key and window, for events anyone holding a credential can
repeat at will (a refused decision, a refused delegation). Pure: no I/O.

A reviewer, or an attacker with a valid key, can send the same refused attempt as fast as
the service answers; each one audited would grow the hash chain (one row and one HMAC each,
serialised on the audit head) without telling an auditor anything new. So the first attempt
of a key is audited, the same key's attempts in the following `window` are left out and
counted, and the next attempt audited after the window carries that count (the event's data
says how many were left out since the previous one).

In-process memory, bounded: the `max_keys` most recently seen keys are remembered (least
recently seen dropped first, with the count of any attempts left out under it; a metric has
counted those already). Several processes each audit their first attempt.

An op can run twice when its batch fails (service.store.db: each op is re-run alone), so an
attempt is identified by an object of its own: the same attempt asked again gets the same
answer. Attempts left out are counted once their transaction commits (`left_out`), so a
rolled-back one counts nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW = timedelta(minutes=1)
MAX_KEYS = 10_000


@dataclass(slots=True)
class _Seen:
    at: datetime  # when the key's last audited event was
    attempt: object  # the attempt that event was
    carried: int  # how many left out before it, which that event said
    left_out: int = 0  # since it


class AuditThrottle:
    def __init__(self, window: timedelta = WINDOW, max_keys: int = MAX_KEYS) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.window = window
        self.max_keys = max_keys
        self._seen: OrderedDict[Hashable, _Seen] = OrderedDict()
        # Ops run on the store's writer thread (SQLite), commits are counted on the loop.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, key: Hashable, now: datetime, attempt: object) -> int | None:
        """None: leave this attempt out of the audit log (`key` was audited less than a
        window ago). Otherwise audit it; the number is how many attempts of `key` were left
        out since its previous audited event (0 for the first)."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
                if seen.attempt is attempt:  # the same op run again: the same answer
                    return seen.carried
                if now - seen.at < self.window:
                    return None
            carried = seen.left_out if seen is not None else 0
            self._seen[key] = _Seen(at=now, attempt=attempt, carried=carried)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return carried

    def left_out(self, key: Hashable) -> None:
        """An attempt `admit` left out was committed: the next audited event of `key` says so."""
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                seen.left_out += 1
