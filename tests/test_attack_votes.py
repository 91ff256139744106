"""Attacks on vote counting, tried over real HTTP: one person counted twice, a requester
choosing a proxy for their own vote, an approval of a text the caller never read, odd
inputs on the delegations route, and a delegation racing a vote across two processes.

Each test asserts the status, the problem body, and that nothing was decided or sent."""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.scopes import Scope
from service.store import tables as t
from service.teams.cards import POST_CARD_JOB

from .conftest import StartService
from .peers.smtp import SmtpServer
from .test_teams import CHANNEL, FOREIGN, TENANT, Teams, _texts, teams_service
from .test_timers import Clock, advance, wait_events
from .test_voting import DANA, LEE, RITA, SAM, Reviewers, pending

# Rita is named twice, by her AAD object id (as the test Bot Connector gives it) and by email:
# an integrator mixing how people are named. One person must still count once.
TWICE: dict[str, Any] = {"twice": {"reviewers": ["aad-rita", RITA, SAM], "mode": "quorum", "required": 2,
                                   "teams_channel": CHANNEL}}


async def _only_voters(voters: Reviewers, run_id: str, smtp_server: SmtpServer, expected: list[str]) -> None:
    run = await voters.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["approvals"][0]["status"] == "pending", run["status"]
    assert [d["reviewer"]["id"] for d in run["decisions"] if d["kind"] != "delegate"] == expected
    await asyncio.sleep(0.2)
    assert smtp_server.messages() == []


async def test_one_person_named_twice_counts_once_teams_then_api(start_service: StartService,
                                                                 smtp_server: SmtpServer) -> None:
    async with teams_service(start_service, smtp_server, TWICE) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "twice")
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200 and "1 of 2 approvals" in " ".join(_texts(answer["value"]))
        # The same Rita through the API, with a key bound to her email: her second vote.
        status, problem = await voters.vote(approval_id, RITA)
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        assert problem["first_vote"]["reviewer"] == "aad-rita"
        await _only_voters(voters, run_id, smtp_server, ["aad-rita"])


async def test_one_person_named_twice_counts_once_api_then_teams(start_service: StartService,
                                                                 smtp_server: SmtpServer) -> None:
    async with teams_service(start_service, smtp_server, TWICE) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "twice")
        assert (await voters.vote(approval_id, RITA))[1]["status"] == "pending"
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200 and "already voted" in " ".join(_texts(answer["value"]))
        await _only_voters(voters, run_id, smtp_server, [RITA])


async def test_a_delegate_holding_a_second_identity_counts_once(start_service: StartService,
                                                               smtp_server: SmtpServer) -> None:
    # Sam holds his own vote by email; the policy allows handing votes to his object id.
    policies = {"handover": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                             "teams_channel": CHANNEL, "delegates": ["aad-sam"]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "handover")
        status, _ = await voters.delegate(approval_id, RITA, "aad-sam")
        assert status == 201
        # Sam votes on the card (his identities hold Rita's slot and his own)...
        status, _ = await teams.post(teams.click(approval_id, "countersign.approve", sender="sam"))
        assert status == 200
        # ...and again through the API as sam@example.com: the same person, counted once.
        status, problem = await voters.vote(approval_id, SAM)
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        await _only_voters(voters, run_id, smtp_server, ["aad-sam"])


async def test_the_requester_cannot_hand_their_own_vote_to_a_proxy(start_service: StartService,
                                                                   smtp_server: SmtpServer) -> None:
    # Rita asks for the refund and is a reviewer: self-approval is forbidden, so it needs Sam and
    # Lee. Handing her vote to Dana would let the requester pick who approves in her place.
    voters = Reviewers(await start_service(smtp_server, policies={
        "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]}}))
    run_id, approval_id = await pending(voters.service, "refunds", requested_by=RITA)
    status, problem = await voters.delegate(approval_id, RITA, DANA)
    assert status == 403 and problem["type"].endswith("not_allowed"), problem
    assert "requested this action" in problem["detail"]
    status, problem = await voters.vote(approval_id, DANA)
    assert status == 403 and "not among the reviewers" in problem["detail"]
    assert (await voters.vote(approval_id, SAM))[1]["status"] == "pending"
    run = await voters.service.run(run_id)
    assert [d["kind"] for d in run["decisions"]] == ["approve"]
    assert "approval.delegated" not in [e["event"] for e in run["timeline"]]
    assert "delegation.refused" in [e["event"] for e in run["timeline"]]
    await _only_voters(voters, run_id, smtp_server, [SAM])


async def test_an_api_approval_without_draft_version_after_an_edit_is_refused(start_service: StartService,
                                                                              smtp_server: SmtpServer) -> None:
    # Sam's integration read the first text; Rita's edit replaced it. An approve that does not
    # say which text it read must not approve the new one unseen.
    voters = Reviewers(await start_service(smtp_server, policies={
        "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2}}))
    run_id, approval_id = await pending(voters.service, "refunds")
    status, answer = await voters.vote(approval_id, RITA, "edit", body="Dear Ann,\n\nNo refund after all.\n\nSupport")
    assert status == 200 and answer["status"] == "pending"
    for body in ({}, {"draft_version": 1}):
        status, problem = await voters.vote(approval_id, SAM, **body)
        assert status == 409 and problem["type"].endswith("draft_changed"), problem
        assert "version 2" in problem["detail"]
    await _only_voters(voters, run_id, smtp_server, [RITA])
    # Rejecting needs no version (it fails closed); approving the text read does.
    assert (await voters.vote(approval_id, SAM, draft_version=2))[1]["status"] == "approved"
    await voters.service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert "No refund after all." in message.get_body(("plain",)).get_content()


async def test_odd_delegation_inputs_get_a_problem_and_change_nothing(start_service: StartService,
                                                                      smtp_server: SmtpServer) -> None:
    voters = Reviewers(await start_service(smtp_server, policies={
        "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]}}))
    run_id, approval_id = await pending(voters.service, "refunds")
    key = await voters.key(RITA)
    path = f"/api/approvals/{approval_id}/delegations"
    for body, status_expected, field in (
            ({}, 422, "to"), ({"to": 7}, 422, "to"), ({"to": None}, 422, "to"), ({"to": ["x"]}, 422, "to"),
            ({"to": "   "}, 422, "to"), ({"to": "x" * 100_000}, None, None), ({"to": DANA, "extra": 1}, 422, None),
            ({"to": DANA, "reviewer": {"id": SAM}}, 403, None), ({"to": "dana@example.com\u0000"}, 422, None),
            ({"to": "\u212a@example.com"}, 422, "to")):
        status, problem, _ = await voters.service.request("POST", path, body=body, auth=key)
        assert 400 <= status < 500, (body, status, problem)
        if status_expected is not None:
            assert status == status_expected, (body, problem)
        assert problem["type"] and problem["detail"], problem
        if field is not None:
            assert any(e["field"].startswith(field) for e in problem.get("errors", [])), (body, problem)
    for raw in (b"", b"not json", b"[]", b"\"to\""):
        status, problem, _ = await voters.service.request("POST", path, raw=raw, auth=key)
        assert 400 <= status < 500 and problem["detail"], (raw, status, problem)
    status, problem, _ = await voters.service.request("POST", "/api/approvals/nope/delegations", body={"to": DANA},
                                                      auth=key)
    assert status == 404, problem
    await _only_voters(voters, run_id, smtp_server, [])


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL
async def test_a_delegation_racing_the_delegators_vote_counts_one_of_them(start_service: StartService,
                                                                          smtp_server: SmtpServer) -> None:
    policies = {"refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]}}
    first = await start_service(smtp_server, policies=policies)
    second = await start_service(smtp_server, policies=policies)
    one, two = Reviewers(first), Reviewers(second)
    for who in (RITA, DANA):  # one key each, known to both processes (one database)
        two.keys[who] = await one.key(who)
    for _ in range(15):
        run_id, approval_id = await pending(first, "refunds")
        # Rita votes on one process while handing her vote to Dana on the other, and Dana votes.
        results = await asyncio.gather(one.vote(approval_id, RITA), two.delegate(approval_id, RITA, DANA),
                                       one.vote(approval_id, DANA), two.vote(approval_id, DANA))
        assert all(status in (200, 201, 403, 409) for status, _ in results), results
        run = await first.run(run_id)
        votes = [d for d in run["decisions"] if d["kind"] != "delegate"]
        # Rita's slot is filled at most once, by Rita or (after the hand-over) by Dana, never
        # both; nothing settles on one slot. Dana's votes may all have come before she held it.
        assert len(votes) <= 1, run["decisions"]
        assert run["status"] == "awaiting_approval"
        delegated = [d for d in run["decisions"] if d["kind"] == "delegate"]
        assert {v["reviewer"]["id"] for v in votes} <= ({DANA} if delegated else {RITA}), run["decisions"]
        if not delegated:  # the hand-over lost to Rita's vote, and was refused for it
            assert any(status == 409 and body["type"].endswith("already_voted") for status, body in results[1:2])
    await asyncio.sleep(0.2)
    assert smtp_server.messages() == []


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL
async def test_two_votes_handed_to_one_person_at_once_one_is_refused(start_service: StartService,
                                                                    smtp_server: SmtpServer) -> None:
    policies = {"refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]}}
    first = await start_service(smtp_server, policies=policies)
    second = await start_service(smtp_server, policies=policies)
    one, two = Reviewers(first), Reviewers(second)
    for who in (RITA, SAM, DANA):
        two.keys[who] = await one.key(who)
    for _ in range(10):
        run_id, approval_id = await pending(first, "refunds")
        # Rita and Sam both hand their votes to Dana, on two processes: Dana would hold two.
        results = await asyncio.gather(one.delegate(approval_id, RITA, DANA), two.delegate(approval_id, SAM, DANA))
        assert sorted(status for status, _ in results) == [201, 422], results
        [(_, refused)] = [r for r in results if r[0] == 422]
        assert refused["type"].endswith("invalid_delegate") and "already holds a vote" in refused["detail"]
        assert (await two.vote(approval_id, DANA))[1]["status"] == "pending"  # one slot: not a quorum
        status, problem = await one.vote(approval_id, DANA)
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        run = await first.run(run_id)
        assert run["status"] == "awaiting_approval"
        assert [d["kind"] for d in run["decisions"]] == ["delegate", "approve"]
    await asyncio.sleep(0.2)
    assert smtp_server.messages() == []


async def test_the_key_making_helper_binds_keys_to_distinct_reviewers(start_service: StartService,
                                                                      smtp_server: SmtpServer) -> None:
    # A guard for the attack tests above: a key bound to Rita cannot vote as Sam.
    voters = Reviewers(await start_service(smtp_server, policies={
        "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2}}))
    run_id, approval_id = await pending(voters.service, "refunds")
    status, problem = await voters.service.decide(approval_id, {"decision": "approve", "reviewer": {"id": SAM}},
                                                  auth=await voters.key(RITA))
    assert status == 403 and problem["type"].endswith("reviewer_mismatch")
    other = await voters.service.make_key("rita-spaced", Scope.DECIDE, reviewer=f" {RITA} ")
    assert (await voters.vote(approval_id, RITA))[0] == 200
    status, problem = await voters.service.decide(approval_id, {"decision": "approve"}, auth=other)
    assert status in (403, 409), problem  # a padded spelling is either Rita (409) or nobody (403), never a 2nd vote
    await _only_voters(voters, run_id, smtp_server, [RITA])


async def test_one_person_named_by_email_and_upn_counts_once_teams_then_api(start_service: StartService,
                                                                           smtp_server: SmtpServer) -> None:
    upn = "rita.s@corp.example.com"
    policies = {"twice": {"reviewers": [RITA, upn, SAM], "mode": "quorum", "required": 2, "teams_channel": CHANNEL}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        teams.connector.members["29:rita"] = {"id": "29:rita", "name": "Rita", "aadObjectId": "aad-rita",
                                              "email": RITA, "userPrincipalName": upn, "tenantId": TENANT}
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "twice")
        status, _ = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200
        status, problem = await voters.vote(approval_id, upn)
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        await _only_voters(voters, run_id, smtp_server, ["aad-rita"])


# ---- a person the bot met in a tenant that is no longer allowed ------------------------------


async def _met_in_tenant(teams: Teams, who: str, tenant: str) -> None:
    """`who`'s member record and personal chat, stored in `tenant` (as a database from before
    the allow-list dropped that tenant holds them)."""
    now = datetime.now(timezone.utc)

    async def op(tx: Any) -> None:
        await tx.execute(t.teams_members.insert().values(
            aad_object_id=f"aad-{who}", user_id=f"29:{who}", tenant_id=tenant, service_url=teams.connector_url,
            email=f"{who}@example.com", user_principal_name=f"{who}@example.com", name=who.title(),
            fetched_at=now))
        await tx.execute(t.teams_conversations.insert().values(
            id=f"a:chat-{who}", kind="personal", service_url=teams.connector_url, tenant_id=tenant, team_id=None,
            channel_id=None, user_aad_object_id=f"aad-{who}",
            reference={"conversation": {"id": f"a:chat-{who}", "tenantId": tenant}, "serviceUrl": teams.connector_url,
                       "user": {"id": f"29:{who}", "aadObjectId": f"aad-{who}"}, "channelId": "msteams"},
            installed_at=now, updated_at=now))

    await teams.service.app[SERVICES].store.write(op)


async def _routed(teams: Teams, approval_id: str) -> tuple[list[str], int]:
    """(the targets of the approval's cards, its post jobs)."""
    async def q(conn: Any) -> tuple[list[str], int]:
        targets = (await conn.execute(sa.select(t.teams_cards.c.target)
                                      .where(t.teams_cards.c.approval_id == approval_id))).scalars().all()
        posts = (await conn.execute(sa.select(sa.func.count()).select_from(t.jobs)
                                    .where(t.jobs.c.kind == POST_CARD_JOB))).scalar_one()
        return list(targets), posts

    return await teams.service.app[SERVICES].store.read(q)


async def _no_card_reached(teams: Teams, who: str) -> None:
    await asyncio.sleep(0.2)  # the channel card's jobs are done; nothing else is queued
    assert not teams.connector.of("POST", f"/v3/conversations/a:chat-{who}")
    assert not [c for c in teams.connector.of("POST", "/v3/conversations") if c.path == "/v3/conversations"
                and (c.body or {}).get("members")]  # no new personal chat either


async def test_a_delegate_known_only_in_a_tenant_no_longer_allowed_gets_no_card(start_service: StartService,
                                                                                smtp_server: SmtpServer) -> None:
    policies = {"teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                "teams_channel": CHANNEL, "delegates": [DANA]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        await _met_in_tenant(teams, "dana", FOREIGN)
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "teamrefunds")
        await teams.wait_calls("POST", 1, "/v3/conversations")  # the channel's card
        status, answer = await voters.delegate(approval_id, SAM, DANA)
        assert status == 201, answer  # the hand-over stands: only the Teams notice is refused
        # Routed in the delegation's own transaction: no card row, no post job for Dana.
        assert await _routed(teams, approval_id) == ([CHANNEL], 1)
        run = await teams.service.run(run_id)
        [skipped] = [e for e in run["timeline"] if e["event"] == "teams.not_notified"]
        assert skipped["data"]["identity"] == DANA and skipped["data"]["via"] == "delegation"
        assert FOREIGN in skipped["data"]["reason"] and "COUNTERSIGN_TEAMS_ALLOWED_TENANTS" in skipped["data"]["reason"]
        await _no_card_reached(teams, "dana")


async def test_an_escalation_to_someone_known_only_in_a_tenant_no_longer_allowed_posts_nothing(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    policies = {"timed": {"reviewers": [RITA, SAM], "teams_channel": CHANNEL, "escalate_after": "1h",
                          "escalate_to": [DANA]}}
    async with teams_service(functools.partial(start_service, clock=clock), smtp_server, policies) as teams:
        await teams.install()
        await _met_in_tenant(teams, "dana", FOREIGN)
        run_id, approval_id = await pending(teams.service, "timed")
        await wait_events(teams.service, run_id, "teams.card_posted", 1)
        await advance(clock, timedelta(hours=1), teams.service)
        await wait_events(teams.service, run_id, "approval.escalated", 1)
        assert await _routed(teams, approval_id) == ([CHANNEL], 1)
        [skipped] = await wait_events(teams.service, run_id, "teams.not_notified", 1)
        assert skipped["identity"] == DANA and skipped["via"] == "escalation" and FOREIGN in skipped["reason"]
        await _no_card_reached(teams, "dana")


async def _escalated_in_stage_1(start_service: StartService, smtp_server: SmtpServer,
                                escalate_to: str) -> tuple[Clock, Reviewers, str, str]:
    """Rita decides stage 1, Sam stage 2; each stage escalates to `escalate_to` after 2 h,
    who may hand the vote to Dana. Stage 1 has escalated."""
    clock = Clock()
    policies = {"staged": {"mode": "sequential", "delegates": [DANA], "escalate_after": "2h",
                           "escalate_to": [escalate_to], "stages": [{"reviewers": [RITA]}, {"reviewers": [SAM]}]}}
    voters = Reviewers(await start_service(smtp_server, clock=clock, policies=policies))
    run_id, approval_id = await pending(voters.service, "staged")
    await advance(clock, timedelta(hours=2), voters.service)
    await wait_events(voters.service, run_id, "approval.escalated", 1)
    return clock, voters, run_id, approval_id


async def test_a_delegation_made_in_stage_1_gives_no_vote_in_stage_2(start_service: StartService,
                                                                     smtp_server: SmtpServer) -> None:
    # Sam is stage 2's reviewer and also whom stage 1 escalates to: escalated in stage 1, he
    # hands that vote to Dana. His own stage 2 vote stays his.
    clock, voters, run_id, approval_id = await _escalated_in_stage_1(start_service, smtp_server, SAM)
    status, answer = await voters.delegate(approval_id, SAM, DANA)
    assert status == 201, answer
    [handed] = [e for e in (await voters.service.run(run_id))["timeline"] if e["event"] == "approval.delegated"]
    assert handed["data"]["stage"] == 1
    status, answer = await voters.vote(approval_id, RITA)
    assert status == 200 and answer["progress"]["stage"] == 2, answer
    assert answer["progress"]["asked"] == [SAM], answer  # not Dana: her vote was stage 1's
    status, problem = await voters.vote(approval_id, DANA)
    assert status == 403 and "is over" in problem["detail"], problem
    status, answer = await voters.vote(approval_id, SAM)
    assert status == 200 and answer["status"] == "approved", answer
    await voters.service.wait_status(run_id, "completed")


async def test_a_delegation_made_in_stage_2_is_stage_2s_when_the_delegator_was_asked_in_both(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    # Lee is escalated to in both stages (he did not vote in stage 1); in stage 2 he hands
    # over the vote stage 2 asks of him, not the one of the stage that is over.
    clock, voters, run_id, approval_id = await _escalated_in_stage_1(start_service, smtp_server, LEE)
    assert (await voters.vote(approval_id, RITA))[0] == 200
    await advance(clock, timedelta(hours=2), voters.service)
    await wait_events(voters.service, run_id, "approval.escalated", 2)
    status, answer = await voters.delegate(approval_id, LEE, DANA)
    assert status == 201, answer
    run = await voters.service.run(run_id)
    [handed] = [e for e in run["timeline"] if e["event"] == "approval.delegated"]
    assert handed["data"]["stage"] == 2
    assert run["approvals"][0]["progress"]["asked"] == [SAM, DANA]
    status, answer = await voters.vote(approval_id, DANA)
    assert status == 200 and answer["status"] == "approved", answer
    await voters.service.wait_status(run_id, "completed")


# ---- flooding the audit log with refused attempts ----------------------------------------------


async def _suppressed(voters: Reviewers, kind: str) -> float:
    """countersign_audit_suppressed_total{kind} as GET /metrics shows it."""
    status, text, _ = await voters.service.request("GET", "/metrics", auth="none")
    assert status == 200
    line = next((line for line in text.splitlines()
                 if line.startswith(f'countersign_audit_suppressed_total{{kind="{kind}"}}')), None)
    return float(line.split()[-1]) if line else 0.0


async def test_a_flood_of_refused_attempts_is_audited_once_a_minute_and_counted(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    # Mallory holds a valid decide key but is no reviewer; Rita is one and cannot hand her vote to Eve.
    clock = Clock()
    policies = {"refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]}}
    voters = Reviewers(await start_service(smtp_server, clock=clock, policies=policies))
    run_id, approval_id = await pending(voters.service, "refunds")
    mallory = "mallory@example.com"
    for who in (mallory, RITA):
        await voters.key(who)
    decisions_before = await _suppressed(voters, "decision.refused")
    delegations_before = await _suppressed(voters, "delegation.refused")

    answers = await asyncio.gather(*(voters.vote(approval_id, mallory) for _ in range(100)),
                                   *(voters.delegate(approval_id, RITA, "eve@example.com") for _ in range(100)))
    assert all(status in (403, 422) for status, _ in answers), {status for status, _ in answers}
    run = await voters.service.run(run_id)
    refused = [e for e in run["timeline"] if e["event"] == "decision.refused"]
    delegations = [e for e in run["timeline"] if e["event"] == "delegation.refused"]
    assert len(refused) == 1 and len(delegations) == 1
    assert refused[0]["actor"] == mallory and "suppressed" not in refused[0]["data"]
    assert await _suppressed(voters, "decision.refused") - decisions_before == 99
    assert await _suppressed(voters, "delegation.refused") - delegations_before == 99

    # Another reason, or another attempt, is another fact: audited at once.
    assert (await voters.vote(approval_id, mallory, "reject"))[0] == 403
    assert (await voters.vote(approval_id, RITA))[0] == 200
    assert (await voters.vote(approval_id, RITA))[0] == 409  # already voted
    run = await voters.service.run(run_id)
    assert [e["data"]["attempted"] for e in run["timeline"] if e["event"] == "decision.refused"] == [
        "approve", "reject", "approve"]

    # A minute on, the same refusal is audited again and says how many were left out since.
    await advance(clock, timedelta(minutes=1), voters.service)
    assert (await voters.vote(approval_id, mallory))[0] == 403
    run = await voters.service.run(run_id)
    last = [e for e in run["timeline"] if e["event"] == "decision.refused"][-1]
    assert last["actor"] == mallory and last["data"]["suppressed"] == 99
    assert run["status"] == "awaiting_approval"


async def test_a_flood_that_stops_is_summarised_at_the_next_refusal_of_anyone_and_at_shutdown(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    clock = Clock()
    policies = {"refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2}}
    voters = Reviewers(await start_service(smtp_server, clock=clock, policies=policies))
    run_id, approval_id = await pending(voters.service, "refunds")
    mallory, oscar = "mallory@example.com", "oscar@example.com"
    for who in (mallory, oscar):
        await voters.key(who)

    async def summaries(service: Any) -> list[dict[str, Any]]:
        run = await service.run(run_id)
        return [e for e in run["timeline"] if e["event"] == "audit.suppressed"]

    for _ in range(20):
        assert (await voters.vote(approval_id, mallory))[0] == 403
    assert await summaries(voters.service) == []  # within its window: nothing to say yet
    # Mallory stops. A minute on, anyone's refused attempt is the occasion to say what was left out.
    await advance(clock, timedelta(minutes=1), voters.service)
    assert (await voters.vote(approval_id, oscar))[0] == 403
    [summary] = await summaries(voters.service)
    assert summary["actor"] == mallory and summary["data"]["summarises"] == "decision.refused"
    assert summary["data"]["suppressed"] == 19 and summary["data"]["why"] == "window"
    assert summary["data"]["of"]["attempted"] == "approve" and summary["data"]["of"]["reason"] == "not_allowed"

    # Summarised once: Mallory's next refusal carries nothing; a new burst is said at shutdown.
    for _ in range(5):
        assert (await voters.vote(approval_id, mallory))[0] == 403
    run = await voters.service.run(run_id)
    last = [e for e in run["timeline"] if e["event"] == "decision.refused" and e["actor"] == mallory][-1]
    assert "suppressed" not in last["data"]
    assert voters.service.stop is not None
    await voters.service.stop()
    again = await start_service(smtp_server, clock=clock, policies=policies)
    _, at_shutdown = await summaries(again)
    assert at_shutdown["actor"] == mallory and at_shutdown["data"]["suppressed"] == 4
    assert at_shutdown["data"]["why"] == "shutdown"


async def test_a_key_bound_to_an_object_id_cannot_approve_or_hand_over_a_run_its_owner_requested_by_email(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    # Lee is a reviewer by AAD object id and asked for this refund by email. A key bound to his
    # object id carries no email: self-approval could not be ruled out, so nothing is counted.
    voters = Reviewers(await start_service(smtp_server, policies={
        "refunds": {"reviewers": ["aad-lee", SAM], "mode": "quorum", "required": 1, "delegates": [DANA]}}))
    run_id, approval_id = await pending(voters.service, "refunds", requested_by=LEE)
    status, problem = await voters.vote(approval_id, "aad-lee")
    assert status == 403 and problem["type"].endswith("not_allowed"), problem
    assert "cannot check that the reviewer did not request it" in problem["detail"]
    status, problem = await voters.delegate(approval_id, "aad-lee", DANA)
    assert status == 403 and problem["type"].endswith("not_allowed"), problem
    await _only_voters(voters, run_id, smtp_server, [])
    run = await voters.service.run(run_id)
    assert "approval.delegated" not in [e["event"] for e in run["timeline"]]
    # A reviewer whose key carries an email is compared and counted as before.
    assert (await voters.vote(approval_id, SAM))[1]["status"] == "approved"


async def test_an_automatic_approval_at_expiry_never_sends_a_text_one_reviewer_edited(
    start_service: StartService, smtp_server: SmtpServer,
) -> None:
    # Quorum of two, approve on expiry. Rita's edit puts her text in place (her vote counted,
    # one of two); the expiry must not send it with her single approval: it fails closed.
    clock = Clock()
    service = await start_service(smtp_server, clock=clock, policies={
        "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                    "expire_after": "1h", "on_expiry": "approve"}})
    voters = Reviewers(service)
    run_id, approval_id = await pending(service, "refunds")
    status, answer = await voters.vote(approval_id, RITA, "edit", body="Dear Ann,\n\nA full refund, and more.\n\nRita")
    assert status == 200 and answer["status"] == "pending"
    await advance(clock, timedelta(hours=1), service)
    run = await service.wait_status(run_id, "expired")
    assert run["approvals"][0]["status"] == "expired"
    [expired] = await wait_events(service, run_id, "approval.expired", 1)
    assert expired["on_expiry"] == "approve" and "edited" in expired["failed_closed"]
    assert [d["kind"] for d in run["decisions"]] == ["edit"]
    await asyncio.sleep(0.2)
    assert smtp_server.messages() == []


# ---- one person under two ids, through delegations --------------------------------------------

BY_OBJECT_ID: dict[str, Any] = {"objids": {"reviewers": ["aad-rita", "aad-sam", "aad-lee"], "mode": "quorum",
                                           "required": 2, "teams_channel": CHANNEL, "delegates": [RITA, DANA]}}


async def test_a_vote_handed_to_the_email_of_someone_holding_one_by_object_id_is_refused(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    """The policy names people by object id and allows handing a vote to rita@example.com.
    Rita (aad-rita, known to the bot) must not get Sam's vote under her email as well."""
    async with teams_service(start_service, smtp_server, BY_OBJECT_ID) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        _, warmup = await pending(teams.service, "objids")
        await teams.post(teams.click(warmup, "countersign.reject", sender="rita", reason="warm-up"))  # the bot meets her
        run_id, approval_id = await pending(teams.service, "objids")
        status, problem = await voters.delegate(approval_id, "aad-sam", RITA)
        assert status == 422 and problem["type"].endswith("invalid_delegate"), problem
        assert "already holds a vote" in problem["errors"][0]["message"]
        await _only_voters(voters, run_id, smtp_server, [])


async def test_a_vote_handed_to_the_email_of_someone_the_bot_has_not_met_still_counts_them_once(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    """The same, before the bot has met Rita: the delegation cannot be told apart and goes
    through; her Teams vote then learns her email (an email now holds a vote), so her
    second vote, under the email, is refused and nothing is sent on one person's word."""
    async with teams_service(start_service, smtp_server, BY_OBJECT_ID) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "objids")
        status, _ = await voters.delegate(approval_id, "aad-sam", RITA)
        assert status == 201
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200 and "1 of 2 approvals" in " ".join(_texts(answer["value"]))
        status, problem = await voters.vote(approval_id, RITA)
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        await _only_voters(voters, run_id, smtp_server, ["aad-rita"])


async def test_one_named_twice_who_handed_a_vote_over_votes_with_neither(start_service: StartService,
                                                                        smtp_server: SmtpServer) -> None:
    """Rita is named by object id and by email (two slots). Handing one to Dana hands her
    vote: she may not then vote with the other slot, nor hand that one over as well."""
    policies = {"twice": {**TWICE["twice"], "delegates": [DANA, LEE]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "twice")
        status, _ = await voters.delegate(approval_id, RITA, DANA)
        assert status == 201
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200 and f"handed their vote to {DANA}" in " ".join(_texts(answer["value"]))
        status, problem = await voters.delegate(approval_id, "aad-rita", LEE)  # the bot knows her now
        assert status == 409 and problem["type"].endswith("already_voted"), problem
        assert f"already handed their vote to {DANA}" in problem["detail"]
        assert (await voters.vote(approval_id, DANA))[1]["status"] == "pending"  # one vote of two
        await _only_voters(voters, run_id, smtp_server, [DANA])
