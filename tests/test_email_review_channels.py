"""The email channel beside the others: a decision in Teams shows on the review page, one
by email updates the posted Teams card; reminders, escalations and delegations reach email
reviewers by email; a Teams post that fails for good falls back to email."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import aiohttp

from service.policy import EmailReview, Policy, Timers

from .conftest import StartService
from .peers.smtp import SmtpServer
from .test_email_review import RITA, SAM, _customer_emails, _form, _link, _pending, _requests, _text
from .test_teams import CHANNEL, _texts, teams_service
from .test_timers import Clock, advance, create, wait_events

DANA = "dana@example.com"
BOTH: dict[str, Any] = {"both": {"reviewers": [RITA, SAM], "teams_channel": CHANNEL, "email_reviewers": [RITA]}}


async def test_a_decision_in_teams_shows_on_the_review_page(start_service: StartService,
                                                             smtp_server: SmtpServer) -> None:
    async with teams_service(start_service, smtp_server, BOTH) as teams:
        await teams.install()
        run_id, approval_id = await _pending(teams.service, "both")
        [request] = await _requests(smtp_server, 1)
        link = _link(teams.service, request)
        await teams.wait_calls("POST", 1, "/v3/conversations")
        status, _ = await teams.post(teams.click(approval_id, "countersign.approve", sender="sam"))
        assert status == 200
        await teams.service.wait_status(run_id, "completed")
        async with aiohttp.ClientSession() as http:
            async with http.get(link) as r:
                page = await r.text()
            assert r.status == 200 and "This approval is <strong>approved</strong>" in page
            assert "in teams at" in page and 'id="approve"' not in page
            status, page = await _form(http, link, action="approve", draft_version="1")
            assert status == 409  # and the link decides nothing more
        assert len(_customer_emails(smtp_server)) == 1


async def test_a_decision_by_email_updates_the_posted_card(start_service: StartService,
                                                           smtp_server: SmtpServer) -> None:
    async with teams_service(start_service, smtp_server, BOTH) as teams:
        await teams.install()
        run_id, _ = await _pending(teams.service, "both")
        await teams.wait_calls("POST", 1, "/v3/conversations")
        [request] = await _requests(smtp_server, 1)
        async with aiohttp.ClientSession() as http:
            status, page = await _form(http, _link(teams.service, request), action="reject", reason="Wrong order",
                                       draft_version="1")
        assert status == 200 and "Rejected" in page
        await teams.service.wait_status(run_id, "rejected")
        [update] = await teams.wait_calls("PUT", 1)
        texts = " ".join(_texts(update.body["attachments"][0]["content"]))
        assert "Rejected" in texts and "Wrong order" in texts


async def test_reminders_and_escalation_reach_email_reviewers_by_email(start_service: StartService,
                                                                      smtp_server: SmtpServer) -> None:
    clock = Clock()
    service = await start_service(smtp_server, clock=clock)
    policy = Policy(name="timed", reviewers=(RITA, SAM), email=EmailReview(reviewers=(RITA, SAM)),
                    timers=Timers(remind_after=timedelta(hours=4), max_reminders=2,
                                  escalate_after=timedelta(hours=10), escalate_to=(DANA,)))
    run_id, approval_id = await create(service, policy)
    assert len(await _requests(smtp_server, 2)) == 2
    await advance(clock, timedelta(hours=4, seconds=1), service)
    await wait_events(service, run_id, "approval.reminded", 1)
    reminders = [m for m in await _requests(smtp_server, 4) if str(m["Subject"]).startswith("Reminder")]
    assert sorted(str(m["To"]) for m in reminders) == [RITA, SAM]
    assert all(str(m["Subject"]) == "Reminder: approval waiting (1): Your refund" for m in reminders)
    # A reminder's link is a new one, and works.
    async with aiohttp.ClientSession() as http:
        async with http.get(_link(service, reminders[0])) as r:
            assert r.status == 200 and 'id="approve"' in await r.text()
    await advance(clock, timedelta(hours=6), service)  # 10 h: the escalation
    await wait_events(service, run_id, "approval.escalated", 1)
    # Dana's email, not the first five: the second reminders (due at 8 h) may arrive before it.
    for _ in range(300):
        to_dana = [m for m in await _requests(smtp_server, 5) if m["To"] == DANA
                   and str(m["Subject"]).startswith("Escalated")]
        if to_dana:
            break
        await asyncio.sleep(0.05)
    [escalated] = to_dana
    assert str(escalated["Subject"]).startswith("Escalated: approval waiting")
    assert "Nobody decided in time" in _text(escalated)
    async with aiohttp.ClientSession() as http:
        status, page = await _form(http, _link(service, escalated), action="approve", draft_version="1")
    assert status == 200, page
    await service.wait_status(run_id, "completed")
    assert (await service.run(run_id))["decisions"][0]["reviewer"]["id"] == DANA
    assert len(_customer_emails(smtp_server)) == 1


async def test_a_vote_handed_over_on_the_page_reaches_the_delegate_by_email(start_service: StartService,
                                                                           smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, policies={
        "handover": {"reviewers": [RITA, SAM], "mode": "all", "email_reviewers": [RITA, SAM], "delegates": [DANA]}})
    run_id, approval_id = await _pending(service, "handover")
    [rita] = [m for m in await _requests(smtp_server, 2) if m["To"] == RITA]
    async with aiohttp.ClientSession() as http:
        status, page = await _form(http, _link(service, rita), action="delegate", to=DANA)
        assert status == 200 and "handed over" in page
        [dana] = [m for m in await _requests(smtp_server, 3) if m["To"] == DANA]
        assert str(dana["Subject"]).startswith("Vote handed to you")
        status, page = await _form(http, _link(service, dana), action="approve", draft_version="1")
        assert status == 200 and "1 of 2" in page  # Dana holds Rita's vote; Sam's is still asked
        # Rita's link is spent, and she holds no vote any more.
        status, page = await _form(http, _link(service, rita), action="approve", draft_version="1")
        assert status == 409
        [sam] = [m for m in smtp_server.messages() if m["To"] == SAM and "/review/" in _text(m)]
        status, _ = await _form(http, _link(service, sam), action="approve", draft_version="1")
        assert status == 200
    run = await service.wait_status(run_id, "completed")
    assert [d["kind"] for d in run["decisions"]] == ["delegate", "approve", "approve"]
    assert len(_customer_emails(smtp_server)) == 1


async def test_a_teams_post_that_fails_for_good_falls_back_to_email(start_service: StartService,
                                                                   smtp_server: SmtpServer) -> None:
    policies = {"fallback": {"reviewers": [RITA, "aad-sam"], "teams_channel": CHANNEL, "email_fallback": True}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        # The bot is not installed in the team: the post is a dead letter at once.
        run_id, approval_id = await _pending(teams.service, "fallback")
        [fallback] = await _requests(smtp_server, 1)
        assert fallback["To"] == RITA  # the reviewers named by email; aad-sam has no address
        assert "could not be posted in Teams" in _text(fallback)
        run = await teams.service.run(run_id)
        assert any(j["kind"] == "teams.post_card" and j["status"] == "dead" for j in run["jobs"])
        async with aiohttp.ClientSession() as http:
            status, _ = await _form(http, _link(teams.service, fallback), action="approve", draft_version="1")
        assert status == 200
        await teams.service.wait_status(run_id, "completed")

