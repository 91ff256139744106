"""Service levels from decided and waiting approvals: time to decision (p50, p90) per policy
and per reviewer, approvals waiting by age, expiries and rejections per week. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

AGE_BUCKETS: tuple[tuple[str, timedelta | None], ...] = (
    ("< 1 h", timedelta(hours=1)), ("1-4 h", timedelta(hours=4)), ("4-24 h", timedelta(days=1)),
    ("1-3 d", timedelta(days=3)), ("> 3 d", None))


@dataclass(frozen=True, slots=True)
class Decided:
    policy: str
    status: str  # approved | rejected | expired | cancelled
    created_at: datetime
    decided_at: datetime
    votes: tuple[tuple[str, datetime], ...] = ()  # (reviewer, when)


@dataclass(frozen=True, slots=True)
class Waiting:
    policy: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Percentiles:
    name: str
    count: int
    p50: float  # seconds
    p90: float


@dataclass(frozen=True, slots=True)
class Week:
    start: date  # the Monday
    expired: int
    rejected: int


@dataclass(frozen=True, slots=True)
class Levels:
    per_policy: list[Percentiles]
    per_reviewer: list[Percentiles]
    waiting: list[tuple[str, int]]
    weeks: list[Week]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _percentiles(groups: dict[str, list[float]]) -> list[Percentiles]:
    out = []
    for name in sorted(groups):
        values = sorted(groups[name])
        out.append(Percentiles(name, len(values), percentile(values, 50), percentile(values, 90)))
    return out


def compute(decided: Iterable[Decided], waiting: Iterable[Waiting], now: datetime, weeks: int = 8) -> Levels:
    per_policy: dict[str, list[float]] = {}
    per_reviewer: dict[str, list[float]] = {}
    this_monday = now.date() - timedelta(days=now.weekday())
    starts = [this_monday - timedelta(weeks=i) for i in reversed(range(weeks))]
    counts = {s: [0, 0] for s in starts}
    for d in decided:
        # Time to decision: a person's decision (approved or rejected), not an expiry or a cancel.
        if d.status in ("approved", "rejected"):
            per_policy.setdefault(d.policy, []).append((d.decided_at - d.created_at).total_seconds())
        for reviewer, at in d.votes:
            per_reviewer.setdefault(reviewer, []).append((at - d.created_at).total_seconds())
        monday = d.decided_at.date() - timedelta(days=d.decided_at.weekday())
        if monday in counts and d.status in ("expired", "rejected"):
            counts[monday][0 if d.status == "expired" else 1] += 1
    buckets = dict.fromkeys((label for label, _ in AGE_BUCKETS), 0)
    for w in waiting:
        age = now - w.created_at
        for label, limit in AGE_BUCKETS:
            if limit is None or age < limit:
                buckets[label] += 1
                break
    return Levels(_percentiles(per_policy), _percentiles(per_reviewer), list(buckets.items()),
                  [Week(s, *counts[s]) for s in starts])


def duration(seconds: float) -> str:
    """`45 s`, `12 min`, `3.5 h`, `2.1 d`."""
    if math.isnan(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
