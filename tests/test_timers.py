"""Approval timers (service/timers.py): reminders, escalation, expiry, with a controlled clock.

The service runs in-process with its real wiring (service/app.py) and a clock the test
moves; runs with timer policies are created through its `Runs` (the settings file's timer
keys are another part of issue 12), decisions arrive over HTTP or through `Decisions`.
One restart test uses real, short durations with a real `countersign serve` process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from datetime import time as dt_time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.business_hours import Calendar
from service.decisions import Decisions
from service.domain import Channel, DecisionKind, DecisionRequest, EmailAction, Reviewer
from service.jobs import Job, JobHandler, JobQueue, JobStatus, Worker
from service.policy import ExpiryOutcome, Policy, PolicyMode, Stage, Timers
from service.runs import NewRun, Runs
from service.store import tables as t
from service.store.db import Store, Tx, utcnow
from service.store.migrate import upgrade
from service.teams.conversations import Member
from service.teams.notices import mention_activity
from service.timers import ESCALATE_JOB, EXPIRE_JOB, REMIND_JOB, TIMER_JOBS, ApprovalTimers

from .conftest import API_TOKEN, AUDIT_KEY, Service, StartService, cas_always_loses, email_action, free_port
from .peers.smtp import SmtpServer
from .processes import ServiceProcess

RITA, SAM, LEE = "rita@example.com", "sam@example.com", "lee@example.com"
HOUR = timedelta(hours=1)


class Clock:
    """What the service takes for now; only the test moves it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def timed(mode: PolicyMode = PolicyMode.FIRST, reviewers: tuple[str, ...] = (RITA, SAM), **timers: Any) -> Policy:
    return Policy(name="timed", reviewers=reviewers, mode=mode, timers=Timers(**timers))


async def create(service: Service, policy: Policy, **action: Any) -> tuple[str, str]:
    created = await service.app[SERVICES].runs.create(
        NewRun(policy=policy, action=EmailAction.from_dict(email_action(**action))))
    run = await service.run(created.run_id)
    return created.run_id, run["approvals"][0]["id"]


async def advance(clock: Clock, delta: timedelta, *services: Service) -> None:
    clock.now += delta
    for service in services:  # a worker asleep until its poll would see it anyway; sooner is quicker
        service.app[SERVICES].jobs.wakeup.set()


async def events(service: Service, run_id: str, kind: str) -> list[dict[str, Any]]:
    run = await service.run(run_id)
    return [e["data"] for e in run["timeline"] if e["event"] == kind]


async def wait_events(service: Service, run_id: str, kind: str, count: int, timeout: float = 15) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = await events(service, run_id, kind)
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{kind}: {len(found)} of {count} in run {run_id}"
        await asyncio.sleep(0.05)


async def approval_row(service: Service, approval_id: str) -> Any:
    async def q(conn: Any) -> Any:
        return (await conn.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id))).one()

    return await service.app[SERVICES].store.read(q)


async def timer_jobs(service: Service, run_id: str) -> Counter[tuple[str, str]]:
    async def q(conn: Any) -> list[Any]:
        return (await conn.execute(sa.select(t.jobs.c.kind, t.jobs.c.status)
                                   .where(t.jobs.c.run_id == run_id, t.jobs.c.kind.in_(TIMER_JOBS)))).all()

    return Counter((r.kind, r.status) for r in await service.app[SERVICES].store.read(q))


async def settle() -> None:
    await asyncio.sleep(0.4)  # several poll intervals (0.05 s): anything left to fire would have


async def test_reminders_repeat_every_interval_to_those_still_asked_and_stop_at_the_cap(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(PolicyMode.ALL, remind_after=HOUR, max_reminders=2))
    row = await approval_row(service, approval_id)
    assert row.remind_at == clock.now + HOUR and row.expire_at is None and row.escalate_at is None

    await advance(clock, 59 * timedelta(minutes=1), service)
    await settle()
    assert await events(service, run_id, "approval.reminded") == []  # not due yet

    await advance(clock, timedelta(minutes=1), service)
    [first] = await wait_events(service, run_id, "approval.reminded", 1)
    assert first["number"] == 1 and sorted(first["asked"]) == [RITA, SAM]

    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": RITA}})
    assert status == 200
    await advance(clock, HOUR, service)
    _, second = await wait_events(service, run_id, "approval.reminded", 2)
    assert second["number"] == 2 and second["asked"] == [SAM]  # Rita voted: no longer asked

    await advance(clock, 10 * HOUR, service)
    await settle()
    assert len(await events(service, run_id, "approval.reminded")) == 2  # capped at max_reminders
    row = await approval_row(service, approval_id)
    assert row.reminders_sent == 2 and row.remind_at is None and row.status == "pending"
    assert await timer_jobs(service, run_id) == {(REMIND_JOB, "done"): 2}


async def test_escalation_adds_the_escalate_to_reviewers_once_and_they_can_decide(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(escalate_after=2 * HOUR, escalate_to=(LEE,)))
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": LEE}})
    assert status == 403, problem  # not a reviewer before the escalation
    before = await approval_row(service, approval_id)

    await advance(clock, 2 * HOUR, service)
    [escalated] = await wait_events(service, run_id, "approval.escalated", 1)
    assert escalated == {"approval_id": approval_id, "added": [LEE], "stage": 0}
    row = await approval_row(service, approval_id)
    assert row.version == before.version + 1 and row.escalated_at == clock.now and row.escalate_at is None
    assert row.added_reviewers == [{"identity": LEE, "slot": LEE, "via": "escalation", "stage": 0,
                                    "at": clock.now.isoformat()}]
    await advance(clock, 48 * HOUR, service)
    await settle()
    assert len(await events(service, run_id, "approval.escalated")) == 1

    status, payload = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": LEE}})
    assert status == 200, payload
    await service.wait_status(run_id, "completed")


def staged(**timers: Any) -> Policy:
    """Rita decides stage 1, then Sam stage 2."""
    return Policy(name="staged", reviewers=(RITA, SAM), mode=PolicyMode.SEQUENTIAL,
                  stages=(Stage(reviewers=(RITA,)), Stage(reviewers=(SAM,))), timers=Timers(**timers))


async def test_reminders_start_again_for_the_next_stage_of_a_sequential_approval(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    created = clock.now
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, staged(remind_after=HOUR, max_reminders=2, expire_after=10 * HOUR))
    await advance(clock, HOUR, service)
    [first] = await wait_events(service, run_id, "approval.reminded", 1)
    assert first["number"] == 1 and first["asked"] == [RITA]

    await advance(clock, 30 * timedelta(minutes=1), service)
    advanced = clock.now  # stage 1 approves half an hour before its second reminder
    status, answer = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": RITA}})
    assert status == 200 and answer["progress"]["stage"] == 2, answer
    row = await approval_row(service, approval_id)
    assert row.stage == 1 and row.reminders_sent == 0 and row.remind_at == advanced + HOUR
    assert row.expire_at == created + 10 * HOUR  # the expiry stays the approval's
    # Stage 1's next reminder (due at creation + 2 h) is cancelled, not left to find itself stale.
    assert await timer_jobs(service, run_id) == {(REMIND_JOB, "done"): 1, (REMIND_JOB, "cancelled"): 1,
                                                 (REMIND_JOB, "queued"): 1, (EXPIRE_JOB, "queued"): 1}

    await advance(clock, 30 * timedelta(minutes=1), service)  # creation + 2 h: nothing for stage 2 yet
    await settle()
    assert len(await events(service, run_id, "approval.reminded")) == 1
    await advance(clock, 30 * timedelta(minutes=1), service)  # the stage began an hour ago
    _, second = await wait_events(service, run_id, "approval.reminded", 2)
    assert second["number"] == 1 and second["asked"] == [SAM]
    await advance(clock, HOUR, service)
    _, _, third = await wait_events(service, run_id, "approval.reminded", 3)
    assert third["number"] == 2 and third["asked"] == [SAM]
    await advance(clock, 5 * HOUR, service)  # capped again, per stage
    await settle()
    assert [e["number"] for e in await events(service, run_id, "approval.reminded")] == [1, 1, 2]
    row = await approval_row(service, approval_id)
    assert row.reminders_sent == 2 and row.remind_at is None and row.status == "pending"
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": SAM}})
    assert status == 200
    await service.wait_status(run_id, "completed")


async def test_each_stage_of_a_sequential_approval_gets_its_own_escalation(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    policy = staged(escalate_after=2 * HOUR, escalate_to=(LEE,))
    # Stage 1 escalated before it approved: stage 2 gets its own escalation, from its start.
    run_id, approval_id = await create(service, policy)
    await advance(clock, 2 * HOUR, service)
    [escalated] = await wait_events(service, run_id, "approval.escalated", 1)
    assert escalated["stage"] == 0 and escalated["added"] == [LEE]
    await advance(clock, HOUR, service)
    advanced = clock.now
    assert (await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": RITA}}))[0] == 200
    row = await approval_row(service, approval_id)
    assert row.escalated_at is None and row.escalate_at == advanced + 2 * HOUR
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": LEE}})
    assert status == 403 and "is over" in problem["detail"], problem  # added to stage 1, which is done
    await advance(clock, 2 * HOUR, service)
    _, again = await wait_events(service, run_id, "approval.escalated", 2)
    assert again["stage"] == 1 and again["added"] == [LEE]
    status, answer = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": LEE}})
    assert status == 200 and answer["status"] == "approved", answer
    await service.wait_status(run_id, "completed")

    # Someone escalation added who settled stage 1 is not asked again in stage 2 (one vote a person).
    run_id, approval_id = await create(service, policy, subject="Lee decides")
    await advance(clock, 2 * HOUR, service)
    await wait_events(service, run_id, "approval.escalated", 1)
    assert (await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": LEE}}))[0] == 200
    await advance(clock, 2 * HOUR, service)
    _, again = await wait_events(service, run_id, "approval.escalated", 2)
    assert again["stage"] == 1 and again["added"] == []
    run = await service.run(run_id)
    assert run["approvals"][0]["progress"]["asked"] == [SAM]

    # Stage 1 approved before its escalation: the escalation moves to the new stage's clock.
    run_id, approval_id = await create(service, policy, subject="Another")
    await advance(clock, HOUR, service)
    advanced = clock.now
    assert (await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": RITA}}))[0] == 200
    row = await approval_row(service, approval_id)
    assert row.escalate_at == advanced + 2 * HOUR and row.escalated_at is None
    assert await timer_jobs(service, run_id) == {(ESCALATE_JOB, "cancelled"): 1, (ESCALATE_JOB, "queued"): 1}
    await advance(clock, HOUR, service)  # when stage 1's escalation was due: nothing
    await settle()
    assert await events(service, run_id, "approval.escalated") == []
    await advance(clock, HOUR, service)
    [escalated] = await wait_events(service, run_id, "approval.escalated", 1)
    assert escalated["stage"] == 1 and escalated["added"] == [LEE]
    await settle()
    assert len(await events(service, run_id, "approval.escalated")) == 1


async def test_expiry_rejects_the_run_once_and_cancels_the_other_timers(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(remind_after=HOUR, max_reminders=5, escalate_after=5 * HOUR,
                                                      escalate_to=(LEE,), expire_after=3 * HOUR))
    await advance(clock, 3 * HOUR, service)
    run = await service.wait_status(run_id, "expired")
    assert run["approvals"][0]["status"] == "expired"
    await advance(clock, 10 * HOUR, service)
    await settle()
    assert len(await events(service, run_id, "approval.expired")) == 1
    assert await events(service, run_id, "approval.escalated") == []  # it was due after the expiry
    # Each reminder that fell due before the expiry fired (the worker may run them in the
    # same pass as the expiry, in due order); none after it.
    assert len(await events(service, run_id, "approval.reminded")) <= 3
    jobs = await timer_jobs(service, run_id)
    assert jobs[(EXPIRE_JOB, "done")] == 1 and not any(status == "queued" for _, status in jobs)
    row = await approval_row(service, approval_id)
    assert row.remind_at is None and row.escalate_at is None
    assert smtp_server.messages() == []
    status, payload = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": RITA}})
    assert status == 409, payload


async def test_a_cancelled_run_cancels_its_timers(start_service: StartService, smtp_server: SmtpServer) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(remind_after=HOUR, escalate_after=2 * HOUR,
                                                      escalate_to=(LEE,), expire_after=3 * HOUR))
    status, payload, _ = await service.request("POST", f"/api/runs/{run_id}/cancel", body={"reason": "not needed"})
    assert status == 200, payload
    assert await timer_jobs(service, run_id) == {(kind, "cancelled"): 1 for kind in TIMER_JOBS}
    row = await approval_row(service, approval_id)
    assert (row.remind_at, row.escalate_at, row.expire_at) == (None, None, None)
    await advance(clock, 10 * HOUR, service)
    await settle()
    run = await service.run(run_id)
    assert run["status"] == "cancelled"
    assert not [e for e in run["timeline"] if e["event"].startswith("approval.") and e["event"] != "approval.requested"]


async def test_expiry_with_on_expiry_approve_sends_the_email_as_an_automatic_decision(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, _ = await create(service, timed(expire_after=HOUR, on_expiry=ExpiryOutcome.APPROVE))
    await advance(clock, HOUR, service)
    run = await service.wait_status(run_id, "completed")
    [decision] = run["decisions"]
    assert decision["channel"] == "system" and decision["kind"] == "approve"
    [approve] = await events(service, run_id, "decision.approve")
    assert approve["automatic"] is True
    assert len(smtp_server.messages()) == 1


async def test_a_timer_overdue_while_the_service_was_down_fires_at_start(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    first = await start_service(smtp_server, clock=clock)
    run_id, _ = await create(first, timed(remind_after=HOUR, max_reminders=1, expire_after=2 * HOUR))
    reminded_id, _ = await create(first, timed(remind_after=HOUR, max_reminders=1), subject="Another")
    assert first.stop is not None
    await first.stop()
    clock.now += 5 * HOUR  # while nothing runs
    second = await start_service(smtp_server, clock=clock)
    await second.wait_status(run_id, "expired", timeout=10)
    await wait_events(second, reminded_id, "approval.reminded", 1)
    await settle()
    assert len(await events(second, run_id, "approval.expired")) == 1
    # Leased in the same pass as the expiry, the overdue reminder fires only if it commits
    # first: a reminder about an approval already expired is not sent.
    assert len(await events(second, run_id, "approval.reminded")) <= 1
    assert len(await events(second, reminded_id, "approval.reminded")) == 1


async def test_reminders_overdue_after_downtime_do_not_fire_in_a_burst(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    """Down for several remind_after periods: the overdue reminder fires once at start, and
    the next is one period after that (not after when the missed one was due), still capped."""
    clock = Clock()
    first = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(first, timed(remind_after=HOUR, max_reminders=3))
    assert first.stop is not None
    await first.stop()
    clock.now += 5 * HOUR + 30 * timedelta(minutes=1)  # four reminders' worth fell due while nothing ran
    restarted = clock.now
    second = await start_service(smtp_server, clock=clock)
    [reminded] = await wait_events(second, run_id, "approval.reminded", 1)
    await settle()
    assert len(await events(second, run_id, "approval.reminded")) == 1  # no burst of the missed ones
    assert reminded["number"] == 1 and reminded["next_at"] == (restarted + HOUR).isoformat()
    row = await approval_row(second, approval_id)
    assert row.remind_at == restarted + HOUR and row.reminders_sent == 1
    for number in (2, 3):
        await advance(clock, HOUR, second)
        found = await wait_events(second, run_id, "approval.reminded", number)
        assert found[-1]["number"] == number
    await advance(clock, 5 * HOUR, second)
    await settle()
    assert len(await events(second, run_id, "approval.reminded")) == 3  # the cap still holds
    assert (await approval_row(second, approval_id)).remind_at is None


async def test_timers_count_working_hours_of_the_policy_calendar(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    clock.now = datetime(2026, 3, 6, 15, 0, tzinfo=timezone.utc)  # Friday 16:00 in Berlin
    service = await start_service(smtp_server, clock=clock)
    support = Calendar(name="support", timezone="Europe/Berlin", days=(0, 1, 2, 3, 4),
                       start=dt_time(9), end=dt_time(17))
    run_id, approval_id = await create(service, Policy(
        name="timed", reviewers=(RITA,), timers=Timers(remind_after=2 * HOUR, max_reminders=1, calendar=support)))
    row = await approval_row(service, approval_id)
    monday_10_berlin = datetime(2026, 3, 9, 9, 0, tzinfo=timezone.utc)
    assert row.remind_at == monday_10_berlin  # one hour on Friday, one on Monday
    await advance(clock, timedelta(days=2), service)  # Sunday: nothing
    await settle()
    assert await events(service, run_id, "approval.reminded") == []
    clock.now = monday_10_berlin
    await advance(clock, timedelta(0), service)
    await wait_events(service, run_id, "approval.reminded", 1)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL: one serve per SQLite file
async def test_timers_fire_once_with_several_services_on_one_database(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    services = [await start_service(smtp_server, clock=clock) for _ in range(3)]
    policy = timed(remind_after=HOUR, max_reminders=2, escalate_after=2 * HOUR, escalate_to=(LEE,),
                   expire_after=3 * HOUR)
    runs = [await create(services[i % 3], policy, subject=f"Reply {i}") for i in range(12)]
    # Each hour's timers fire before the clock moves on (a jump also ends the leases of jobs
    # in flight, so other services take them over: the compare-and-sets keep them once).
    for kind, count in (("approval.reminded", 1), ("approval.reminded", 2), ("approval.expired", 1)):
        await advance(clock, HOUR, *services)
        for run_id, _ in runs:
            await wait_events(services[0], run_id, kind, count)
    await advance(clock, 10 * HOUR, *services)
    await settle()
    for run_id, _ in runs:
        assert [e["number"] for e in await events(services[0], run_id, "approval.reminded")] == [1, 2]
        assert len(await events(services[0], run_id, "approval.escalated")) == 1
        assert len(await events(services[0], run_id, "approval.expired")) == 1


@pytest.mark.parametrize("on_expiry", [ExpiryOutcome.REJECT, ExpiryOutcome.APPROVE])
async def test_a_decision_racing_the_expiry_200_times_has_exactly_one_outcome(
    start_service: StartService, smtp_server: SmtpServer, on_expiry: ExpiryOutcome, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    services = service.app[SERVICES]
    decisions: Decisions = services.decisions
    policy = timed(reviewers=(RITA,), expire_after=HOUR, on_expiry=on_expiry)
    # Made side by side (the order they are made in is not what races).
    runs = list(await asyncio.gather(*(create(service, policy, subject=f"Reply {i}", to=[f"c{i}@example.com"])
                                       for i in range(200))))
    # The votes are timed by the worker, not by the clock on the wall: votes spread over a
    # fixed time could all land before the worker began, or all after it was done, and race
    # nothing. Half vote the moment the worker starts on the expiries (ahead of those whose
    # turn comes later: its timer lane runs 64 at a time), half the moment it starts on their
    # own approval's expiry; each side then waits a few random milliseconds.
    expiring = services.jobs.handlers[EXPIRE_JOB]
    begun = asyncio.Event()
    started = {approval_id: asyncio.Event() for _, approval_id in runs}

    async def expire_run(job: Job) -> Any:
        begun.set()
        started[job.payload["approval_id"]].set()
        await asyncio.sleep(random.uniform(0, 0.005))
        return await expiring.run(job)

    monkeypatch.setitem(services.jobs.handlers, EXPIRE_JOB, dataclasses.replace(expiring, run=expire_run))
    early = {approval_id for _, approval_id in runs if random.random() < 0.5}
    clock.now += HOUR  # every expiry is due: the worker starts on them at its next look
    services.jobs.wakeup.set()

    async def vote(approval_id: str) -> bool:
        await asyncio.wait_for((begun if approval_id in early else started[approval_id]).wait(), timeout=60)
        await asyncio.sleep(random.uniform(0, 0.005))
        outcome = await decisions.decide(DecisionRequest(
            approval_id=approval_id, kind=DecisionKind.APPROVE, reviewer=Reviewer(RITA, email=RITA), channel=Channel.API))
        return outcome.decided

    decided = dict(zip([a for _, a in runs], await asyncio.gather(*(vote(a) for _, a in runs)), strict=True))
    # Both orders happened: some votes won, some expiries did (else nothing raced).
    assert 0 < sum(decided.values()) < 200, f"{sum(decided.values())} of 200 votes won"

    async def q(conn: Any) -> tuple[list[Any], list[Any], list[Any]]:
        audit = (await conn.execute(sa.select(t.audit_events.c.run_id, t.audit_events.c.kind, t.audit_events.c.actor)
                                    .where(t.audit_events.c.kind.in_(["approval.expired", "decision.approve"])))).all()
        deliveries = (await conn.execute(sa.select(t.deliveries.c.approval_id))).all()
        approvals = (await conn.execute(sa.select(t.approvals.c.id, t.approvals.c.status))).all()
        return audit, deliveries, approvals

    deadline = time.monotonic() + 60
    while True:  # every expiry job has run (fired, or found the approval decided)
        jobs: Counter[tuple[str, str]] = Counter()
        for run_id, _ in runs[:: 20]:
            jobs.update(await timer_jobs(service, run_id))
        if not any(s == "queued" for _, s in jobs):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    # Every run settled, read over the API as before: a few reads at a time, not one by one.
    reading = asyncio.Semaphore(8)

    async def settled(run_id: str) -> None:
        async with reading:
            await service.wait_for(run_id, lambda r: r["status"] in ("expired", "completed") and not any(
                j["kind"] == EXPIRE_JOB and j["status"] == "queued" for j in r["jobs"]), timeout=60)

    await asyncio.gather(*(settled(run_id) for run_id, _ in runs))
    audit, deliveries, approvals = await services.store.read(q)
    by_run = Counter((e.run_id, e.kind, e.actor) for e in audit)
    status = {a.id: a.status for a in approvals}
    delivered = Counter(d.approval_id for d in deliveries)
    for run_id, approval_id in runs:
        expired = by_run[(run_id, "approval.expired", "system")]
        voted = by_run[(run_id, "decision.approve", RITA)]
        assert expired + voted == 1, (run_id, expired, voted)  # exactly one outcome
        assert voted == int(decided[approval_id])
        if on_expiry is ExpiryOutcome.REJECT:
            assert status[approval_id] == ("approved" if voted else "expired")
            assert delivered[approval_id] == voted  # one email or none
        else:
            assert status[approval_id] == "approved" and delivered[approval_id] == 1
    emails = Counter(m["To"] for m in smtp_server.messages())
    assert all(n == 1 for n in emails.values())
    assert sum(emails.values()) == sum(delivered.values())
    print(f"on_expiry={on_expiry.value}: {sum(decided.values())} decided first, "
          f"{200 - sum(decided.values())} expired first")


async def _until_waiting_on_a_lock(engine: Any, task: asyncio.Task[Any]) -> None:
    """Until a statement of this database waits on a lock (PostgreSQL), while `task` runs."""
    deadline = time.monotonic() + 15
    async with engine.connect() as watch:
        while True:
            waiting = (await watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))).scalar_one()
            await watch.rollback()  # pg_stat_activity is a snapshot per transaction
            if waiting:
                return
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # another process starts stage 2 meanwhile
async def test_a_reminder_racing_the_start_of_the_next_stage_leaves_the_new_stage_clock(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    """Stage 1's first reminder read the approval (no reminder sent yet); another process's
    vote then started stage 2, which counts reminders from zero again. The reminder's
    compare-and-set must not take the new stage's zero for its own."""
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    services = service.app[SERVICES]
    run_id, approval_id = await create(service, staged(remind_after=HOUR, max_reminders=2))
    before = await approval_row(service, approval_id)
    due = before.remind_at
    stage_two_reminder = due + 30 * timedelta(minutes=1)
    job = Job(id="stage-1-reminder", kind=REMIND_JOB, run_id=run_id, status=JobStatus.QUEUED, attempts=1,
              max_attempts=4, due_at=due, payload={"approval_id": approval_id, "due_at": due.isoformat()})
    reminder = await services.jobs.handlers[REMIND_JOB].run(job)  # what the worker commits when it finishes
    engine = services.store.writer_engine
    async with engine.connect() as other:
        start = await other.begin()  # as ApprovalTimers.on_stage_started writes it, in the vote's transaction
        await other.execute(t.approvals.update().where(t.approvals.c.id == approval_id).values(
            stage=1, version=t.approvals.c.version + 1, reminders_sent=0, remind_at=stage_two_reminder))
        finishing = asyncio.create_task(services.store.write(reminder))
        await _until_waiting_on_a_lock(engine, finishing)
        await start.commit()
    await finishing
    row = await approval_row(service, approval_id)
    assert (row.remind_at, row.reminders_sent) == (stage_two_reminder, 0)
    assert await events(service, run_id, "approval.reminded") == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # a second writer committing in between
async def test_an_expiry_that_loses_its_compare_and_set_to_a_pending_change_reads_again_and_settles(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    """Whoever calls `Decisions.expire` gets the retry: here an escalation-like change from
    another connection commits between the expiry's read and its write."""
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    services = service.app[SERVICES]
    run_id, approval_id = await create(service, timed(expire_after=HOUR))
    before = await approval_row(service, approval_id)
    engine = services.store.writer_engine
    async with engine.connect() as other:
        change = await other.begin()  # holds the approval's row lock until it commits
        await other.execute(t.approvals.update().where(t.approvals.c.id == approval_id)
                            .values(version=t.approvals.c.version + 1))
        expiring = asyncio.create_task(services.store.write(
            lambda tx: services.decisions.expire(tx, approval_id, due_at=before.expire_at)))
        await _until_waiting_on_a_lock(engine, expiring)  # it read version 0 and now waits to write
        await change.commit()
    assert await expiring is True
    row = await approval_row(service, approval_id)
    assert row.status == "expired" and row.version == before.version + 2
    assert len(await events(service, run_id, "approval.expired")) == 1
    assert (await service.wait_status(run_id, "expired"))["approvals"][0]["status"] == "expired"


async def _deferred_while_contended(service: Service, clock: Clock, run_id: str, kind: str, rounds: int,
                                    error: str) -> None:
    """Each time the timer job of `kind` falls due it runs, loses, and is put back a second
    later without using up an attempt (`rounds` times; the clock moves on each time)."""
    async def job_row(conn: Any) -> Any:
        return (await conn.execute(sa.select(t.jobs).where(t.jobs.c.run_id == run_id, t.jobs.c.kind == kind))).one()

    for _ in range(rounds):
        deadline = time.monotonic() + 15
        while (job := await service.app[SERVICES].store.read(job_row)).due_at <= clock.now and job.status == "queued":
            assert time.monotonic() < deadline, job  # until it ran and was put back
            await asyncio.sleep(0.02)
        assert job.status == "queued" and job.attempts == 0 and error in job.last_error, job
        assert job.due_at == clock.now + timedelta(seconds=1)
        await advance(clock, timedelta(seconds=1), service)


async def test_an_expiry_that_keeps_losing_its_compare_and_set_waits_its_turn_and_never_dies(
    start_service: StartService, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contention is not a failure: the expiry job tries again a second later without using
    up an attempt (more rounds than the job's 4 attempts here), and expires the approval once
    the contention ends. A dead expiry job would leave the approval waiting for ever."""
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(expire_after=HOUR))
    cas_always_loses(monkeypatch)
    await advance(clock, HOUR, service)
    await _deferred_while_contended(service, clock, run_id, EXPIRE_JOB, 6, "changed 20 times")
    assert (await approval_row(service, approval_id)).status == "pending"
    monkeypatch.undo()
    await advance(clock, timedelta(seconds=1), service)
    run = await service.wait_status(run_id, "expired")
    assert run["approvals"][0]["status"] == "expired"
    assert len(await events(service, run_id, "approval.expired")) == 1


async def test_the_idle_worker_sleeps_until_the_next_due_job(store: Store) -> None:
    """Polls every 30 s; a job enqueued here due in 0.3 s runs at 0.3 s, not at the poll."""
    offset = [timedelta(0)]
    store.clock = lambda: utcnow() + offset[0]
    queue = JobQueue(store)
    ran: list[float] = []

    async def handler(job: Job) -> None:
        ran.append(time.monotonic())

    queue.register("tick", JobHandler(run=handler))
    looks = [0]
    next_due = queue.next_due

    async def counted() -> datetime | None:
        looks[0] += 1
        return await next_due()

    queue.next_due = counted  # type: ignore[method-assign]
    worker = Worker(queue, poll_seconds=30)
    worker.start()
    try:
        await asyncio.sleep(0.2)
        assert looks[0] == 1  # asleep for the poll interval

        async def enqueue(tx: Tx) -> None:
            await queue.enqueue(tx, "tick", {}, due_at=tx.now + timedelta(seconds=0.3))

        started = time.monotonic()
        await store.write(enqueue)  # earlier than the worker's wake-up: it wakes and sleeps 0.3 s
        while not ran:
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.01)
        assert 0.25 <= ran[0] - started < 2
        assert looks[0] <= 4  # woken, slept until due: no busy polling

        # A job due in an hour of the clock: asleep (capped by the poll), never busy.
        async def later(tx: Tx) -> None:
            await queue.enqueue(tx, "tick", {}, due_at=tx.now + HOUR)

        await store.write(later)
        seen = looks[0]
        await asyncio.sleep(0.5)
        assert looks[0] - seen <= 2 and len(ran) == 1
        offset[0] = HOUR  # the clock moves on; the next look finds it due
        queue.wakeup.set()
        deadline = time.monotonic() + 5
        while len(ran) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        await worker.stop()


def test_a_reminder_mentions_the_people_the_bot_knows() -> None:
    rita = Member("aad-rita", "29:rita", "tenant", "https://smba.example", RITA, RITA, "Rita Reviewer")
    activity = mention_activity("Waiting for {people}.", [(RITA, rita), (SAM, None)])
    assert activity.text == f"Waiting for <at>Rita Reviewer</at>, {SAM}."
    [entity] = activity.entities
    assert entity.type == "mention" and entity.text == "<at>Rita Reviewer</at>"
    assert entity.mentioned.id == "29:rita" and entity.mentioned.name == "Rita Reviewer"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # one serve per SQLite file; PostgreSQL: above
async def test_real_service_restart_fires_timers_that_fell_due_while_it_was_down(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer,
) -> None:
    """Real, short durations: the approval is created (with its timers) while no service
    runs, both timers fall due, then `countersign serve` starts and fires them."""
    store = Store.from_url(db_url, audit_key=AUDIT_KEY)
    await upgrade(store.writer_engine)
    await store.start()
    await store.key_audit_chain()
    jobs = JobQueue(store)
    runs = Runs(store, jobs, mail_from="Support Team <support@example.com>")
    ApprovalTimers(jobs, runs, Decisions(store, jobs, runs, "countersign.example.com",
                                          mail_from="support@example.com", mail_reply_to=None)).register()
    policy = timed(remind_after=timedelta(seconds=1), max_reminders=1, expire_after=timedelta(seconds=2))
    created = await runs.create(NewRun(policy=policy, action=EmailAction.from_dict(email_action())))
    await store.close()
    await asyncio.sleep(2.5)  # both timers fall due with nothing running

    port = free_port()
    env = {"COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
           "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_PORT": str(port), "COUNTERSIGN_LOG_LEVEL": "WARNING",
           **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp_server.settings().items()}}
    service = ServiceProcess(env, port, tmp_path / "service.log")
    await service.start()
    try:
        ready = time.monotonic()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_TOKEN}"}) as http:
            while True:
                async with http.get(f"{service.url}/api/runs/{created.run_id}") as r:
                    run = await r.json()
                if run["status"] == "expired":
                    break
                assert time.monotonic() - ready < 10, run
                await asyncio.sleep(0.1)
        kinds = Counter(e["event"] for e in run["timeline"])
        assert kinds["approval.reminded"] == 1 and kinds["approval.expired"] == 1 and kinds["run.expired"] == 1
    finally:
        service.kill()
        await service.wait_dead()
    assert os.path.exists(tmp_path / "service.log")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the Teams peers are the point here
async def test_teams_reminder_and_escalation_are_replies_in_the_card_thread(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    from .test_teams import CHANNEL, teams_service

    clock = Clock()
    policy = {"reviewers": [RITA, SAM], "teams_channel": CHANNEL, "remind_after": "1h", "max_reminders": 1,
              "escalate_after": "2h", "escalate_to": [LEE]}
    async with teams_service(functools.partial(start_service, clock=clock), smtp_server,
                             policies={"timed": policy}) as teams:
        await teams.install()
        accepted = await teams.service.create_run({"action": email_action(), "policy": "timed"})
        await teams.wait_calls("POST", 1, "/v3/conversations")
        [posted] = [c for c in teams.connector.of("POST") if c.path == "/v3/conversations"]
        thread = posted.conversation_id
        assert thread and thread.startswith(CHANNEL)
        await wait_events(teams.service, accepted["id"], "teams.card_posted", 1)  # the notice needs the posted card

        await advance(clock, HOUR, teams.service)
        reminder = (await teams.wait_calls("POST", 1, f"/v3/conversations/{thread}/activities"))[0]
        assert "Reminder 1" in reminder.body["text"] and RITA in reminder.body["text"] and SAM in reminder.body["text"]

        await advance(clock, HOUR, teams.service)
        replies = await teams.wait_calls("POST", 2, f"/v3/conversations/{thread}/activities")
        assert "Escalated" in replies[1].body["text"] and LEE in replies[1].body["text"]
        await wait_events(teams.service, accepted["id"], "approval.escalated", 1)
        await advance(clock, 10 * HOUR, teams.service)
        await settle()
        assert len(teams.connector.of("POST", f"/v3/conversations/{thread}/activities")) == 2  # once each


async def test_an_escalation_that_keeps_losing_to_votes_waits_its_turn_and_never_goes_dead(
    start_service: StartService, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    run_id, approval_id = await create(service, timed(escalate_after=HOUR, escalate_to=(LEE,)))
    cas_always_loses(monkeypatch)
    await advance(clock, HOUR, service)
    await _deferred_while_contended(service, clock, run_id, ESCALATE_JOB, 3, "lost its compare-and-set")
    monkeypatch.undo()
    await advance(clock, timedelta(seconds=1), service)
    [escalated] = await wait_events(service, run_id, "approval.escalated", 1)
    assert escalated["added"] == [LEE]
