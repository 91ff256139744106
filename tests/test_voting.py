"""Policies with several votes over the real decision path: quorum, all, sequential stages,
edits that make a new text, delegation, and votes racing through the API and Teams.

Every vote goes over real HTTP to the running service; emails are counted at the real SMTP
server."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from service.scopes import Scope

from .conftest import Service, StartService, cas_always_loses, email_action
from .peers.smtp import SmtpServer
from .test_teams import CHANNEL, _actions, _texts, teams_service

RITA, SAM, LEE, DANA = "rita@example.com", "sam@example.com", "lee@example.com", "dana@example.com"
POLICIES: dict[str, Any] = {
    "refunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2, "delegates": [DANA]},
    "everyone": {"reviewers": [RITA, SAM], "mode": "all"},
    "staged": {"mode": "sequential",
               "stages": [{"reviewers": [RITA], "mode": "first"}, {"reviewers": [SAM, LEE], "mode": "all"}]},
}


class Reviewers:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.keys: dict[str, str] = {}

    async def key(self, who: str) -> str:
        if who not in self.keys:
            self.keys[who] = await self.service.make_key(who.split("@")[0], Scope.DECIDE, reviewer=who)
        return self.keys[who]

    async def vote(self, approval_id: str, who: str, decision: str = "approve", **fields: Any) -> tuple[int, Any]:
        if decision == "reject":
            fields.setdefault("reason", "not like this")
        return await self.service.decide(approval_id, {"decision": decision, **fields}, auth=await self.key(who))

    async def delegate(self, approval_id: str, who: str, to: str) -> tuple[int, Any]:
        status, body, _ = await self.service.request("POST", f"/api/approvals/{approval_id}/delegations",
                                                     body={"to": to}, auth=await self.key(who))
        return status, body


async def pending(service: Service, policy: str, **run: Any) -> tuple[str, str]:
    accepted = await service.create_run({"action": email_action(), "policy": policy, **run})
    return accepted["id"], (await service.run(accepted["id"]))["approvals"][0]["id"]


@pytest.fixture
async def voting(start_service: StartService, smtp_server: SmtpServer) -> Reviewers:
    return Reviewers(await start_service(smtp_server, policies=POLICIES))


async def test_quorum_needs_two_distinct_reviewers(voting: Reviewers, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "refunds")
    status, answer = await voting.vote(approval_id, RITA)
    assert status == 200 and answer["status"] == "pending"
    assert answer["progress"]["approvals"][0]["reviewer"] == RITA and answer["progress"]["asked"] == [SAM, LEE]
    # The same person again, through another credential naming the same identity: refused with the first vote.
    other = await voting.service.make_key("rita-2", Scope.DECIDE, reviewer=RITA.upper())
    status, problem = await voting.service.decide(approval_id, {"decision": "approve"}, auth=other)
    assert status == 409 and problem["type"].endswith("already_voted") and problem["first_vote"]["reviewer"] == RITA
    run = await voting.service.run(run_id)
    assert run["status"] == "awaiting_approval" and smtp_server.messages() == []
    assert run["approvals"][0]["progress"]["approvals"][0]["reviewer"] == RITA

    status, answer = await voting.vote(approval_id, SAM)
    assert status == 200 and answer["status"] == "approved"
    run = await voting.service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1
    assert [d["reviewer"]["id"] for d in run["decisions"]] == [RITA, SAM]
    status, problem = await voting.vote(approval_id, LEE)
    assert status == 409 and problem["type"].endswith("already_decided")
    assert len(smtp_server.messages()) == 1


async def test_quorum_rejection_stops_everyone(voting: Reviewers, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "refunds")
    assert (await voting.vote(approval_id, RITA))[0] == 200
    status, answer = await voting.vote(approval_id, LEE, "reject")
    assert status == 200 and answer["status"] == "rejected"
    run = await voting.service.wait_status(run_id, "rejected")
    assert run["approvals"][0]["progress"]["asked"] == [] and smtp_server.messages() == []


async def test_all_mode_waits_for_everyone(voting: Reviewers, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "everyone")
    assert (await voting.vote(approval_id, SAM))[1]["status"] == "pending"
    assert (await voting.vote(approval_id, RITA))[1]["status"] == "approved"
    await voting.service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1


async def test_outsider_and_self_approval_are_refused_in_every_mode(voting: Reviewers) -> None:
    for policy in ("refunds", "everyone", "staged"):
        run_id, approval_id = await pending(voting.service, policy, requested_by=RITA)
        status, problem = await voting.vote(approval_id, "mallory@example.com")
        assert status == 403 and "not among the reviewers" in problem["detail"], (policy, problem)
        status, problem = await voting.vote(approval_id, RITA)
        assert status == 403 and "forbids self-approval" in problem["detail"], (policy, problem)
        run = await voting.service.run(run_id)
        assert run["status"] == "awaiting_approval" and run["decisions"] == []


async def test_sequential_stages_ask_in_order(voting: Reviewers, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "staged")
    status, problem = await voting.vote(approval_id, SAM)
    assert status == 403 and "stage 2 of 2" in problem["detail"]
    status, answer = await voting.vote(approval_id, RITA)
    assert answer["status"] == "pending" and answer["progress"]["stage"] == 2
    assert answer["progress"]["asked"] == [SAM, LEE]
    assert (await voting.vote(approval_id, SAM))[1]["status"] == "pending"
    assert (await voting.vote(approval_id, LEE))[1]["status"] == "approved"
    run = await voting.service.wait_status(run_id, "completed")
    assert [e["event"] for e in run["timeline"]].count("approval.stage_started") == 1
    assert len(smtp_server.messages()) == 1

    run_id, approval_id = await pending(voting.service, "staged")
    assert (await voting.vote(approval_id, RITA, "reject"))[1]["status"] == "rejected"
    await voting.service.wait_status(run_id, "rejected")
    assert len(smtp_server.messages()) == 1


async def test_an_edit_is_the_new_text_the_remaining_votes_are_about(voting: Reviewers,
                                                                    smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "refunds")
    assert (await voting.vote(approval_id, LEE))[1]["status"] == "pending"  # for the first text
    status, answer = await voting.vote(approval_id, RITA, "edit", body="Dear Ann,\n\nRefund issued.\n\nSupport")
    assert status == 200 and answer["status"] == "pending"  # Lee's approval was for the old text
    run = await voting.service.run(run_id)
    approval = run["approvals"][0]
    assert approval["draft_version"] == 2 and approval["action"]["body"].startswith("Dear Ann,\n\nRefund issued")
    assert [(d["reviewer"]["id"], d["counted"]) for d in run["decisions"]] == [(LEE, False), (RITA, True)]
    # A reviewer who read the first text cannot approve the second by mistake.
    status, problem = await voting.vote(approval_id, SAM, draft_version=1)
    assert status == 409 and problem["type"].endswith("draft_changed")
    assert run["approvals"][0]["diff"] is None  # not decided yet
    assert (await voting.vote(approval_id, SAM, draft_version=2))[1]["status"] == "approved"
    run = await voting.service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert "Refund issued." in message.get_body(("plain",)).get_content()
    # The diff is against the draft the edit replaced (the approval's action is now the edit).
    diff = run["approvals"][0]["diff"]
    assert (diff["draft_version"], diff["approved_draft_version"], diff["subject"]) == (1, 2, None)
    assert [(x["kind"], x["text"]) for x in diff["body"]["hunks"][0]["lines"]] == [
        ("equal", "Dear Ann,"), ("equal", ""), ("removed", "Your refund was issued today."),
        ("added", "Refund issued."), ("equal", ""), ("removed", "Kind regards,"), ("equal", "Support")]
    assert "-Your refund was issued today.\n+Refund issued." in diff["unified"]


async def test_delegation_hands_a_vote_over_within_the_rules(voting: Reviewers, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(voting.service, "refunds", requested_by="ops@example.com")
    for to, code in ((SAM, "invalid_delegate"), ("ops@example.com", "invalid_delegate"),
                     ("eve@example.com", "invalid_delegate"), (RITA, "invalid_delegate")):
        status, problem = await voting.delegate(approval_id, RITA, to)
        assert status == 422 and problem["type"].endswith(code) and problem["errors"][0]["field"] == "to", problem
    status, answer = await voting.delegate(approval_id, RITA, DANA)
    assert status == 201 and answer["slot"] == RITA
    status, problem = await voting.vote(approval_id, RITA)
    assert status == 403 and "handed their vote" in problem["detail"]
    assert (await voting.vote(approval_id, DANA))[1]["status"] == "pending"
    assert (await voting.vote(approval_id, SAM))[1]["status"] == "approved"
    run = await voting.service.wait_status(run_id, "completed")
    assert [d["kind"] for d in run["decisions"]] == ["delegate", "approve", "approve"]
    assert run["decisions"][0]["delegate_to"] == DANA
    assert "approval.delegated" in [e["event"] for e in run["timeline"]]
    # A reviewer who already voted cannot hand the vote over afterwards.
    run_id, approval_id = await pending(voting.service, "refunds")
    assert (await voting.vote(approval_id, SAM))[0] == 200
    status, problem = await voting.delegate(approval_id, SAM, DANA)
    assert status == 409 and problem["type"].endswith("already_voted")
    assert len(smtp_server.messages()) == 1


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_votes_racing_through_the_api_and_teams_settle_once(start_service: StartService,
                                                                   smtp_server: SmtpServer) -> None:
    policies = {"teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                "teams_channel": CHANNEL}}
    rng = random.Random(20261202)
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        expected_emails = 0
        channels: set[str] = set()
        for _ in range(12):
            run_id, approval_id = await pending(teams.service, "teamrefunds")
            choices = {who: rng.choice(["approve", "approve", "reject"]) for who in ("rita", "sam", "lee")}

            async def api(who: str, approval_id: str = approval_id, choices: dict[str, str] = choices) -> None:
                await voters.vote(approval_id, f"{who}@example.com", choices[who])

            async def click(who: str, approval_id: str = approval_id, choices: dict[str, str] = choices) -> None:
                verb = f"countersign.{choices[who]}"
                status, _ = await teams.post(teams.click(approval_id, verb, sender=who, reason="not like this"))
                assert status == 200

            # Each reviewer votes twice at once, once per channel: counted once.
            await asyncio.gather(*(f(who) for who in choices for f in (api, click)))
            run = await teams.service.wait_for(run_id, lambda r: r["status"] in ("completed", "rejected"))
            voted = [d["reviewer"]["email"] for d in run["decisions"]]
            assert len(set(voted)) == len(voted), run["decisions"]  # one vote a person, whichever channel
            approvals = sum(1 for c in choices.values() if c == "approve")
            if approvals < 2:
                assert run["status"] == "rejected"
            if approvals == 3:
                assert run["status"] == "completed"
            # Votes after the outcome was certain were refused, not counted.
            assert len(voted) <= 3 and run["approvals"][0]["status"] in ("approved", "rejected")
            expected_emails += run["status"] == "completed"
            channels |= {d["channel"] for d in run["decisions"]}
        assert channels == {"api", "teams"}  # both channels won races
        await asyncio.sleep(0.2)
        assert len(smtp_server.messages()) == expected_emails


async def test_the_card_shows_the_votes_and_hands_a_vote_over(start_service: StartService,
                                                              smtp_server: SmtpServer) -> None:
    policies = {"teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                "teams_channel": CHANNEL, "delegates": [DANA]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        run_id, approval_id = await pending(teams.service, "teamrefunds")
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert status == 200
        texts = " ".join(_texts(answer["value"]))
        assert "1 of 2 approvals: Rita at" in texts and f"Still asked: {SAM}, {LEE}" in texts
        verbs = {a.get("verb") for a in _actions(answer["value"])}
        assert "countersign.delegate" in verbs  # the policy allows handing a vote over
        # Sam hands his vote to Dana from the card; Dana approves from hers.
        status, answer = await teams.post(teams.click(approval_id, "countersign.delegate", sender="sam",
                                                      delegate_to=DANA))
        assert status == 200 and f"Still asked: {DANA}, {LEE}" in " ".join(_texts(answer["value"]))
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="dana"))
        assert status == 200
        run = await teams.service.wait_status(run_id, "completed")
        # Dana was not yet known to the bot when she got the vote: the log says she was not notified.
        [skipped] = [e for e in run["timeline"] if e["event"] == "teams.not_notified"]
        assert skipped["data"]["identity"] == DANA and skipped["data"]["via"] == "delegation"
        assert len(smtp_server.messages()) == 1


async def test_a_delegate_the_bot_knows_gets_the_card_in_a_personal_chat(start_service: StartService,
                                                                         smtp_server: SmtpServer) -> None:
    policies = {"teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                "teams_channel": CHANNEL, "delegates": [DANA]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        run_id, approval_id = await pending(teams.service, "teamrefunds")
        # Dana is met in the channel first: her click is refused (she holds no vote yet).
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="dana"))
        assert status == 200 and "not among the reviewers" in " ".join(_texts(answer["value"]))
        status, _ = await teams.post(teams.click(approval_id, "countersign.delegate", sender="sam", delegate_to=DANA))
        assert status == 200
        creates = await teams.wait_calls("POST", 2, "/v3/conversations")
        [chat] = [c for c in creates if c.path == "/v3/conversations"
                  and not c.body.get("channelData", {}).get("channel")]
        assert chat.body["members"] == [{"id": "29:dana"}]
        [card] = await teams.wait_calls("POST", 1, f"/v3/conversations/{chat.conversation_id}/activities")
        assert card.body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
        run = await teams.service.run(run_id)
        assert "teams.not_notified" not in [e["event"] for e in run["timeline"]]


async def test_a_second_click_and_a_stale_card_are_told_why(start_service: StartService,
                                                            smtp_server: SmtpServer) -> None:
    policies = {"teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                "teams_channel": CHANNEL}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        run_id, approval_id = await pending(teams.service, "teamrefunds")
        assert (await teams.post(teams.click(approval_id, "countersign.approve", sender="rita")))[0] == 200
        _, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="rita"))
        assert "already voted" in " ".join(_texts(answer["value"]))
        # Lee edits: Sam's card still shows the first text (no draft_version in its data).
        _, answer = await teams.post(teams.click(approval_id, "countersign.edit", sender="lee", body="New text"))
        assert "2 of 2" not in " ".join(_texts(answer["value"]))
        _, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="sam"))
        assert "was edited since" in " ".join(_texts(answer["value"]))
        run = await teams.service.run(run_id)
        assert run["status"] == "awaiting_approval" and smtp_server.messages() == []
        # With the current card's data, Sam approves the new text.
        _, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="sam", draft_version=2))
        await teams.service.wait_status(run_id, "completed")
        [message] = smtp_server.messages()
        assert "New text" in message.get_body(("plain",)).get_content()


async def test_an_inline_policy_cannot_change_who_votes_under_a_multi_vote_policy(voting: Reviewers) -> None:
    for base in ("refunds", "everyone", "staged"):
        status, problem, _ = await voting.service.request("POST", "/api/runs", body={
            "action": email_action(), "policy": {"base": base, "reviewers": [RITA]}})
        assert status == 422 and problem["type"].endswith("policy_not_narrowed"), problem
        assert problem["errors"][0]["field"] == "policy.reviewers"
    status, page, _ = await voting.service.request("GET", "/api/runs")
    assert page["items"] == []



async def test_a_vote_that_keeps_losing_the_compare_and_set_is_a_retryable_503(
    start_service: StartService, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    policies = {**POLICIES, "teamrefunds": {"reviewers": [RITA, SAM, LEE], "mode": "quorum", "required": 2,
                                            "teams_channel": CHANNEL, "delegates": [DANA]}}
    async with teams_service(start_service, smtp_server, policies) as teams:
        await teams.install()
        voters = Reviewers(teams.service)
        run_id, approval_id = await pending(teams.service, "teamrefunds")
        await voters.key(RITA)
        await voters.key(SAM)
        cas_always_loses(monkeypatch)
        for path, body, who in ((f"/api/approvals/{approval_id}/decisions", {"decision": "approve"}, RITA),
                                (f"/api/approvals/{approval_id}/delegations", {"to": DANA}, SAM)):
            status, problem, headers = await teams.service.request("POST", path, body=body,
                                                                   auth=await voters.key(who))
            assert status == 503, problem
            assert headers["Content-Type"].startswith("application/problem+json")
            assert problem["type"].endswith("/approval_contended") and problem["status"] == 503
            assert "try again" in problem["detail"] and problem["request_id"]
            assert int(headers["Retry-After"]) >= 1
        # A click is told to try again (the card stays as it is, its buttons with it).
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="lee"))
        assert status == 200 and answer["statusCode"] == 503, answer
        assert answer["value"]["code"] == "ServiceUnavailable" and "try again" in answer["value"]["message"]
        status, answer = await teams.post(teams.click(approval_id, "countersign.delegate", sender="lee",
                                                      delegate_to=DANA))
        assert status == 200 and answer["statusCode"] == 503, answer
        run = await teams.service.run(run_id)
        assert run["decisions"] == [] and run["approvals"][0]["status"] == "pending"  # nothing changed

        monkeypatch.undo()  # the contention ends: the same vote goes through
        status, answer = await voters.vote(approval_id, RITA)
        assert status == 200 and answer["status"] == "pending", answer

