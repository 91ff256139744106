"""TeamsRateLimiter: sliding windows per conversation and per tenant, penalties, eviction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from service.teams.ratelimit import (
    DEFAULT_CONVERSATION_WINDOWS,
    DEFAULT_TENANT_WINDOWS,
    RateLimited,
    TeamsRateLimiter,
)


class FakeClock:
    """Monotonic fake time; `sleep` advances it (and yields once to the loop)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **kwargs) -> TeamsRateLimiter:
    return TeamsRateLimiter(clock=clock, sleep=clock.sleep, **kwargs)


def assert_windows(times: Sequence[float], windows: Sequence[tuple[int, float]], eps: float = 0.0) -> None:
    """No window of `length` seconds (half-open, sliding) holds more than `limit` sends."""
    times = sorted(times)
    for limit, length in windows:
        lo = 0
        for hi, t in enumerate(times):
            while times[lo] <= t - length + eps:
                lo += 1
            assert hi - lo + 1 <= limit, f"{hi - lo + 1} sends within {length}s (limit {limit}) ending at {t}"


def test_defaults_are_teams_limits() -> None:
    assert DEFAULT_CONVERSATION_WINDOWS == ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
    assert DEFAULT_TENANT_WINDOWS == ((30, 1.0),)


@pytest.mark.parametrize("window", DEFAULT_CONVERSATION_WINDOWS)
async def test_each_window_alone_is_exact(window: tuple[int, float]) -> None:
    limit, length = window
    clock = FakeClock()
    lim = limiter(clock, conversation_windows=[window], tenant_windows=[(10_000, 1.0)])
    start = clock.now
    times = []
    for _ in range(3 * limit):
        await lim.acquire("c", "t")
        times.append(clock.now)
    assert_windows(times, [window])
    # Bursts of `limit` at 0, length, 2*length: never more, and not needlessly slower.
    assert times[limit - 1] == start
    assert times[limit] == pytest.approx(start + length)
    assert times[2 * limit] == pytest.approx(start + 2 * length)


async def test_all_default_windows_together() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    times = []
    for _ in range(1850):
        await lim.acquire("conv", "tenant")
        times.append(clock.now)
    assert_windows(times, DEFAULT_CONVERSATION_WINDOWS)
    assert_windows(times, DEFAULT_TENANT_WINDOWS)
    assert times[6] == times[0]  # 7 at once
    assert times[7] == pytest.approx(times[0] + 1.0)  # 8th after 1 s (8 per 2 s)
    assert times[8] == pytest.approx(times[0] + 2.0)  # then the 2 s window holds it back
    assert times[60] >= times[0] + 30.0
    assert times[1800] >= times[0] + 3600.0


async def test_concurrent_waiters_fifo_and_windows() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    order: list[int] = []
    times: list[float] = []

    async def send(i: int) -> None:
        await lim.acquire("conv", "tenant")
        order.append(i)
        times.append(clock.now)

    await asyncio.gather(*(send(i) for i in range(80)))
    assert order == list(range(80))  # one conversation's sends keep their arrival order
    assert_windows(times, DEFAULT_CONVERSATION_WINDOWS)


async def test_conversations_independent_but_share_the_tenant_limit() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    start = clock.now
    # Two conversations of one tenant: each gets its own 7 at once.
    for conv in ("a", "b"):
        for _ in range(7):
            await lim.acquire(conv, "t1")
    assert clock.now == start

    # Ten conversations of one tenant want 5 each at once: the tenant allows 30 per second.
    clock2 = FakeClock()
    lim2 = limiter(clock2)
    per_tenant: dict[str, list[float]] = {"t1": [], "t2": []}
    per_conv: dict[str, list[float]] = {}

    async def send(conv: str, tenant: str) -> None:
        await lim2.acquire(conv, tenant)
        per_tenant[tenant].append(clock2.now)
        per_conv.setdefault(conv, []).append(clock2.now)

    jobs = [send(f"c{i}", "t1") for i in range(10) for _ in range(5)]
    await asyncio.gather(*jobs)
    assert_windows(per_tenant["t1"], DEFAULT_TENANT_WINDOWS)
    assert sum(1 for t in per_tenant["t1"] if t == 1000.0) == 30
    for times in per_conv.values():
        assert_windows(times, DEFAULT_CONVERSATION_WINDOWS)

    # Another tenant is not held back by t1's full second.
    t = clock2.now
    lim3_times = []
    for i in range(7):
        await lim2.acquire(f"other{i}", "t2")
        lim3_times.append(clock2.now)
    assert lim3_times == [t] * 7


async def test_unknown_tenant_is_one_shared_key() -> None:
    clock = FakeClock()
    lim = limiter(clock, tenant_windows=[(3, 1.0)])
    for i in range(3):
        await lim.acquire(f"c{i}", None)
    assert clock.now == 1000.0
    await lim.acquire("c9", None)
    assert clock.now == pytest.approx(1001.0)


async def test_penalize_pauses_only_that_conversation() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_penalty_seconds=60)
    await lim.acquire("a", "t")
    lim.penalize("a", 5)
    lim.penalize("a", 1)  # never shortens the pause
    lim.penalize("a", 0)
    lim.penalize("a", -3)
    assert lim.delay("a", "t") == pytest.approx(5)
    await lim.acquire("b", "t")  # another conversation is not paused
    assert clock.now == 1000.0
    await lim.acquire("a", "t")
    assert clock.now == pytest.approx(1005.0)

    lim.penalize("new", 10_000)  # an unknown conversation; absurd Retry-After is capped
    assert lim.delay("new", "t") == pytest.approx(60)


async def test_max_wait_raises_without_recording() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(7):
        await lim.acquire("c", "t")
    with pytest.raises(RateLimited) as exc:
        await lim.acquire("c", "t", max_wait=0.5)
    assert exc.value.retry_after == pytest.approx(1.0)
    assert clock.now == 1000.0
    await lim.acquire("c", "t", max_wait=1.0)  # fits: waits 1 s
    assert clock.now == pytest.approx(1001.0)


async def test_cancelled_waiter_records_nothing() -> None:
    clock = FakeClock()
    # Real asyncio.sleep, so the waiter really waits (and the fake clock stands still).
    lim = TeamsRateLimiter(clock=clock, conversation_windows=[(7, 1.0)])
    for _ in range(7):
        await lim.acquire("c", "t")
    task = asyncio.create_task(lim.acquire("c", "t"))
    await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.now += 1.0
    assert lim.delay("c", "t") == 0
    for _ in range(7):  # the cancelled call took no slot
        await lim.acquire("c", "t")
    assert clock.now == 1001.0


async def test_idle_conversations_are_evicted() -> None:
    clock = FakeClock()
    lim = limiter(clock, tenant_windows=[(10_000, 1.0)])
    for i in range(1000):
        await lim.acquire(f"conv{i}", f"tenant{i % 7}")
    assert clock.now == 1000.0
    assert lim.tracked_conversations == 1000
    assert lim.tracked_tenants == 7

    clock.now += 3599.0  # still inside the hour window: nothing forgotten
    await lim.acquire("late", "tenant0")
    assert lim.tracked_conversations == 1001

    clock.now += 2.0
    await lim.acquire("late2", "tenantX")
    assert lim.tracked_conversations == 2  # "late" (1 s ago) and "late2"
    assert lim.tracked_tenants == 1

    # A pending pause keeps a conversation even after its windows emptied.
    clock2 = FakeClock()
    short = limiter(clock2, conversation_windows=[(7, 1.0)])
    await short.acquire("p", "t")
    short.penalize("p", 30)
    clock2.now += 2.0
    await short.acquire("q", "t")
    assert short.tracked_conversations == 2  # p is paused, so kept
    clock2.now += 30.0
    await short.acquire("r", "t")
    assert short.tracked_conversations == 1  # p's pause is over, q idle

    # A long pause at the front of the LRU order does not shield idle conversations behind it.
    short.penalize("long", 500)
    for i in range(50):
        await short.acquire(f"c{i}", "t")
    clock2.now += 2.0
    await short.acquire("z", "t")
    assert short.tracked_conversations == 2  # "long" (paused) and "z"


async def test_hard_cap_on_tracked_conversations() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_conversations=100)
    for i in range(1000):
        await lim.acquire(f"conv{i}", "t")
        clock.now += 1.0  # keep under the tenant limit
    assert lim.tracked_conversations <= 101


def test_bad_windows_rejected() -> None:
    with pytest.raises(ValueError):
        TeamsRateLimiter(conversation_windows=[(0, 1.0)])
    with pytest.raises(ValueError):
        TeamsRateLimiter(tenant_windows=[(5, 0.0)])


async def test_real_time_concurrent_sends_are_spread_and_loop_stays_free() -> None:
    lim = TeamsRateLimiter(conversation_windows=[(7, 1.0)])  # real clock, real asyncio.sleep
    times: list[float] = []
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.05)

    async def send() -> None:
        await lim.acquire("conv", "tenant")
        times.append(time.monotonic())

    tick_task = asyncio.create_task(ticker())
    start = time.monotonic()
    await asyncio.gather(*(send() for _ in range(20)))
    elapsed = time.monotonic() - start
    done.set()
    await tick_task

    assert elapsed >= 1.95  # 7 at 0 s, 7 at 1 s, 6 at 2 s: the limiter made them wait
    assert_windows(times, [(7, 1.0)], eps=0.005)  # times are read just after the limiter's own
    assert ticks >= 5  # the waits sleep, they never block the loop
