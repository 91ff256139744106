"""Keep outgoing Bot Connector calls inside Microsoft Teams' published rate limits.

Teams throttles a bot per conversation (7 sends per 1 s, 8 per 2 s, 60 per 30 s, 1800 per
hour) and per app per tenant (30 requests per second); over the limit it answers HTTP 429
with `Retry-After`. `TeamsRateLimiter.acquire()` waits (with `asyncio.sleep`, never blocking
the event loop) until one more send fits in every window, then records it; `penalize()`
pauses one conversation after a 429.

**Per process.** The windows live in this process's memory. Several replicas (or several
worker processes) each keep their own count, so N replicas together may send up to N times
the limits into one conversation. Either give each replica a proportional share (construct
the limiter with smaller limits), or route a conversation's sends to one process; the 429
handling (`penalize` + the job retry with `Retry-After`) is the backstop either way.

Memory: each key keeps one deque per window holding at most `limit` timestamps, so the
total is bounded by the sends of the last hour (which the tenant limit itself bounds), plus
one small record per conversation active in the last hour. Idle conversations (every window
empty, no pause pending) are dropped in least-recently-used order on each call, in O(1)
amortised time; `max_conversations` is a hard safety cap on top.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence

Window = tuple[int, float]  # (max sends, window length in seconds)

# Microsoft Teams, "Rate limiting for bots" (msteams-docs): per bot per conversation.
DEFAULT_CONVERSATION_WINDOWS: tuple[Window, ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
# Per app per tenant (the stored docs say 30 per second; a later answer says 50).
DEFAULT_TENANT_WINDOWS: tuple[Window, ...] = ((30, 1.0),)

_MIN_SLEEP = 0.001  # avoids a busy loop when a deadline is a rounding error away


class RateLimited(Exception):
    """`acquire(..., max_wait=...)` would have to wait longer than allowed: nothing was recorded.

    A job handler can turn this into a retry at `retry_after` seconds instead of holding a
    worker (and its lease) for up to an hour.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Teams rate limit: next send allowed in {retry_after:.3f} s")
        self.retry_after = retry_after


class _Slot:
    """The sliding windows of one key (a conversation or a tenant)."""

    __slots__ = ("last_used", "lock", "paused_until", "stamps", "waiters", "windows")

    def __init__(self, windows: Sequence[Window], now: float, with_lock: bool) -> None:
        self.windows = windows
        self.stamps: list[deque[float]] = [deque() for _ in windows]
        self.paused_until = 0.0
        self.last_used = now
        self.waiters = 0
        self.lock = asyncio.Lock() if with_lock else None

    def wait(self, now: float) -> float:
        """Seconds until one more send fits in every window (0: now). Trims old stamps."""
        wait = self.paused_until - now
        for (limit, length), stamps in zip(self.windows, self.stamps, strict=True):
            horizon = now - length
            while stamps and stamps[0] <= horizon:
                stamps.popleft()
            if len(stamps) >= limit:
                # The send `limit` places back must leave the window first.
                wait = max(wait, stamps[-limit] + length - now)
        return wait

    def record(self, now: float) -> None:
        for (limit, _), stamps in zip(self.windows, self.stamps, strict=True):
            stamps.append(now)
            while len(stamps) > limit:  # only older than the window can be dropped; keep `limit`
                stamps.popleft()
        self.last_used = now

    def idle(self, now: float, longest: float) -> bool:
        return self.waiters == 0 and self.paused_until <= now and self.last_used + longest <= now


class _Table:
    """Slots by key, least recently used first, with incremental eviction of idle slots."""

    def __init__(self, windows: Sequence[Window], max_keys: int, with_lock: bool) -> None:
        self.windows = tuple(windows)
        self.longest = max((length for _, length in self.windows), default=0.0)
        self.max_keys = max_keys
        self.with_lock = with_lock
        self.slots: OrderedDict[Hashable, _Slot] = OrderedDict()

    def get(self, key: Hashable, now: float) -> _Slot:
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot(self.windows, now, self.with_lock)
        else:
            self.slots.move_to_end(key)
        return slot

    def evict(self, now: float) -> None:
        slots = self.slots
        skips = 8  # a waiting or paused slot at the front must not shield idle ones behind it
        while slots:
            key, slot = next(iter(slots.items()))
            if slot.idle(now, self.longest):
                del slots[key]
            elif (slot.waiters or slot.paused_until > now) and skips > 0:
                slots.move_to_end(key)
                skips -= 1
            else:
                break  # used recently: so are (nearly all) the slots behind it
        # Hard cap: drop the least recently used slots without waiters even if not idle yet
        # (their history is forgotten: only ever reached with more active keys than the cap).
        excess = len(slots) - self.max_keys
        if excess > 0:
            victims = [k for k, s in itertools.islice(slots.items(), excess + 64) if s.waiters == 0]
            for key in victims[:excess]:
                del slots[key]


class TeamsRateLimiter:
    """Sliding-window rate limiter for outgoing Teams sends; per process (see the module doc).

    Windows are `(limit, seconds)` pairs. `clock` must be monotonic (seconds); `sleep` is
    awaited to wait (tests inject a fake clock and a matching sleep).
    """

    def __init__(
        self,
        *,
        conversation_windows: Sequence[Window] = DEFAULT_CONVERSATION_WINDOWS,
        tenant_windows: Sequence[Window] = DEFAULT_TENANT_WINDOWS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        max_conversations: int = 100_000,
        max_penalty_seconds: float = 600.0,
    ) -> None:
        for limit, length in (*conversation_windows, *tenant_windows):
            if limit < 1 or length <= 0:
                raise ValueError(f"bad rate-limit window ({limit}, {length})")
        self._clock = clock
        self._sleep = sleep
        self._max_penalty = max_penalty_seconds
        self._conversations = _Table(conversation_windows, max_conversations, with_lock=True)
        self._tenants = _Table(tenant_windows, max_conversations, with_lock=False)

    @property
    def tracked_conversations(self) -> int:
        return len(self._conversations.slots)

    @property
    def tracked_tenants(self) -> int:
        return len(self._tenants.slots)

    def delay(self, conversation_id: str, tenant_id: str | None) -> float:
        """Seconds until a send to this conversation would be allowed (0: now). Records nothing.

        Does not count callers already queued in `acquire` for the same conversation.
        """
        now = self._clock()
        conv = self._conversations.slots.get(conversation_id)
        tenant = self._tenants.slots.get(tenant_id)
        return max(0.0, conv.wait(now) if conv else 0.0, tenant.wait(now) if tenant else 0.0)

    async def acquire(self, conversation_id: str, tenant_id: str | None, *, max_wait: float | None = None) -> None:
        """Wait until a send is allowed in every window, then record it.

        Sends to one conversation are admitted in arrival order (a FIFO lock per
        conversation). `tenant_id=None` counts against a shared "unknown tenant" key.
        With `max_wait`, raise `RateLimited` (recording nothing) instead of waiting longer.
        Cancellation while waiting records nothing.
        """
        now = self._clock()
        self._conversations.evict(now)
        self._tenants.evict(now)
        conv = self._conversations.get(conversation_id, now)
        conv.waiters += 1
        try:
            assert conv.lock is not None
            async with conv.lock:
                deadline = None if max_wait is None else now + max_wait
                while True:
                    now = self._clock()
                    tenant = self._tenants.get(tenant_id, now)
                    wait = max(conv.wait(now), tenant.wait(now))
                    if wait <= 0:
                        conv.record(now)
                        tenant.record(now)
                        return
                    if deadline is not None and now + wait > deadline:
                        raise RateLimited(wait)
                    await self._sleep(max(wait, _MIN_SLEEP))
        finally:
            conv.waiters -= 1

    def penalize(self, conversation_id: str, seconds: float) -> None:
        """Pause sends to a conversation for `seconds` (e.g. Teams' Retry-After on a 429).

        Never shortens a pause already in force; capped at `max_penalty_seconds`.
        """
        if not seconds or seconds <= 0:
            return
        now = self._clock()
        slot = self._conversations.get(conversation_id, now)
        slot.paused_until = max(slot.paused_until, now + min(float(seconds), self._max_penalty))
