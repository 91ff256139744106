"""Teams over real HTTP: a local key server signs the Bot Connector's tokens, a local fake
Bot Connector plays Teams' side, the service runs with real authentication, and approved
emails reach the real SMTP server. No test skips authentication."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from .conftest import Service, StartService, email_action, free_port
from .peers.bot_connector import Failure, FakeConnector
from .peers.bot_keys import METADATA_PATH, BotKeyServer, TokenFactory
from .peers.smtp import SmtpServer

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

APP_ID = "test-app-id"
TENANT = "tenant-1"
OTHER_ALLOWED = "tenant-2"  # a second allowed tenant (guests with the same email in both)
FOREIGN = "tenant-evil"
TEAM = "19:team-1@thread.tacv2"
CHANNEL = "19:approvals@thread.tacv2"


@dataclass
class Teams:
    service: Service
    connector: FakeConnector
    keys: BotKeyServer
    tokens: TokenFactory
    connector_url: str

    def activity(self, kind: str, *, sender: str = "rita", conversation: str = CHANNEL,
                 conversation_type: str = "channel", tenant: str = TENANT, known: bool = True,
                 **fields: Any) -> dict[str, Any]:
        if known:  # the member API answers with the sender's email and UPN
            self.connector.members.setdefault(f"29:{sender}", {
                "id": f"29:{sender}", "name": sender.title(), "aadObjectId": f"aad-{sender}",
                "email": f"{sender}@example.com", "userPrincipalName": f"{sender}@example.com", "tenantId": tenant})
        activity: dict[str, Any] = {
            "type": kind, "id": f"act-{time.monotonic_ns()}", "channelId": "msteams",
            "serviceUrl": self.connector_url, "timestamp": "2026-11-21T10:00:00Z",
            "from": {"id": f"29:{sender}", "aadObjectId": f"aad-{sender}", "name": sender.title()},
            "recipient": {"id": f"28:{APP_ID}", "name": "Countersign"},
            "conversation": {"id": conversation, "conversationType": conversation_type, "tenantId": tenant,
                             "isGroup": conversation_type != "personal"},
            "channelData": {"tenant": {"id": tenant}},
        }
        if conversation_type == "channel":
            activity["channelData"].update({"team": {"id": TEAM}, "channel": {"id": CHANNEL}})
        activity.update(fields)
        return activity

    def click(self, approval_id: str, verb: str, *, sender: str = "rita", tenant: str = TENANT, known: bool = True,
              **inputs: Any) -> dict[str, Any]:
        return self.activity("invoke", sender=sender, conversation=f"{CHANNEL};messageid=1", name="adaptiveCard/action",
                             tenant=tenant, known=known,
                             replyToId="activity-1", value={"action": {
                                 "type": "Action.Execute", "verb": verb,
                                 "data": {"approval_id": approval_id, "revision": 1, **inputs}}, "trigger": "manual"})

    async def post(self, activity: dict[str, Any], *, token: str | None = None,
                   auth: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": auth if auth is not None else f"Bearer {token or self.tokens.token()}"}
        status, body, _ = await self.service.request("POST", "/api/messages", body=activity, auth="none",
                                                     headers=headers)
        return status, body

    async def install(self) -> None:
        status, _ = await self.post(self.activity("conversationUpdate", membersAdded=[{"id": f"28:{APP_ID}"}]))
        assert status == 200

    async def pending_run(self, **policy: Any) -> tuple[str, str]:
        # No narrowing: the "team" policy (anyone in CHANNEL). With one: the channel is added,
        # which an inline policy may do only together with the reviewers who may decide.
        accepted = await self.service.create_run({"action": email_action(), "requested_by": "ops@example.com",
                                                  "policy": {"teams_channel": CHANNEL, **policy} if policy else "team"})
        run = await self.service.run(accepted["id"])
        return accepted["id"], run["approvals"][0]["id"]

    async def wait_calls(self, method: str, count: int, prefix: str = "/v3/", timeout: float = 10) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.connector.of(method, prefix)) < count:
            assert time.monotonic() < deadline, [(c.method, c.path, c.status) for c in self.connector.calls]
            await asyncio.sleep(0.02)
        return self.connector.of(method, prefix)


@pytest.fixture
async def teams(start_service: StartService, smtp_server: SmtpServer) -> AsyncIterator[Teams]:
    async with teams_service(start_service, smtp_server) as started:
        yield started


@contextlib.asynccontextmanager
async def teams_service(start_service: StartService, smtp_server: SmtpServer,
                        policies: dict[str, Any] | None = None) -> AsyncIterator[Teams]:
    """The service with Teams, its key server and a Bot Connector; `policies` besides "team"."""
    keys = BotKeyServer()
    keys.add_key("key-1", endorsements=["msteams"])
    key_server = TestServer(keys.app(), host="127.0.0.1", port=free_port())
    connector = FakeConnector()
    connector_server = TestServer(connector.app(), host="127.0.0.1", port=free_port())
    await key_server.start_server(shutdown_timeout=2)
    await connector_server.start_server(shutdown_timeout=2)
    connector_url = str(connector_server.make_url("")).rstrip("/")
    try:
        service = await start_service(
            smtp_server, microsoft_app_id=APP_ID, microsoft_app_password="test-app-password",
            bot_openid_metadata_url=str(key_server.make_url(METADATA_PATH)),
            bot_token_url=f"{connector_url}/oauth2/v2.0/token", bot_key_refresh_min_seconds=0.5,
            policies={"team": {"reviewers": "anyone", "teams_channel": CHANNEL}, **(policies or {})},
            teams_allowed_tenants=[TENANT, OTHER_ALLOWED])
        yield Teams(service, connector, keys, TokenFactory(keys, app_id=APP_ID, service_url=connector_url),
                    connector_url)
    finally:
        keys.release()
        await connector_server.close()
        await key_server.close()


async def test_install_is_remembered_and_removal_forgets(teams: Teams) -> None:
    await teams.install()
    status, page, _ = await teams.service.request("GET", "/api/runs")  # the app is healthy
    assert status == 200
    accepted = await teams.service.create_run({"action": email_action(), "policy": "team"})
    await teams.wait_calls("POST", 1, "/v3/conversations")
    status, _ = await teams.post(teams.activity("conversationUpdate", membersRemoved=[{"id": f"28:{APP_ID}"}]))
    assert status == 200
    await teams.service.create_run({"action": email_action(subject="after removal"),
                                    "policy": "team"})
    run = await teams.service.wait_for(
        (await teams.service.request("GET", "/api/runs"))[1]["items"][0]["id"],
        lambda r: any(j["kind"] == "teams.post_card" and j["status"] == "dead" for j in r["jobs"]))
    [job] = [j for j in run["jobs"] if j["kind"] == "teams.post_card"]
    assert "not installed" in job["last_error"]
    assert accepted["id"] != run["id"]


async def test_card_posted_approved_updated_and_emailed(teams: Teams, smtp_server: SmtpServer) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    [create] = await teams.wait_calls("POST", 1, "/v3/conversations")
    assert create.path == "/v3/conversations" and create.body["channelData"]["channel"]["id"] == CHANNEL
    card = create.body["activity"]["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    verbs = {a.get("verb") for a in _actions(card["content"])}
    assert {"countersign.approve", "countersign.reject"} <= verbs

    # The SMTP server holds the message until the click is answered: an answer that waited
    # for the email would come only after the gate's timeout, with the message stored.
    gate = threading.Event()
    smtp_server.handler.on_data = lambda content: None if gate.wait(30) else "451 4.3.0 the test gave up"
    try:
        status, answer = await teams.post(teams.click(approval_id, "countersign.approve"))
        assert smtp_server.messages() == []
    finally:
        gate.set()
    assert status == 200 and answer["statusCode"] == 200
    assert answer["type"] == "application/vnd.microsoft.card.adaptive"
    assert _actions(answer["value"]) == []  # the decided card has no buttons

    run = await teams.service.wait_status(run_id, "completed")
    assert run["decisions"][0]["channel"] == "teams" and run["decisions"][0]["reviewer"]["id"] == "aad-rita"
    assert len(smtp_server.messages()) == 1
    updates = await teams.wait_calls("PUT", 1)
    assert updates[0].path.endswith("/activities/activity-1")
    assert all(c.authorization == "Bearer connector-test-access-token" for c in teams.connector.calls
               if c.path.startswith("/v3/"))
    assert teams.connector.token_requests == 1  # one token, cached


async def test_edit_and_reject_from_teams(teams: Teams, smtp_server: SmtpServer) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    # Posted first: a card posted after the decision shows it already and is never updated.
    await teams.wait_calls("POST", 1, "/v3/conversations")
    status, answer = await teams.post(teams.click(approval_id, "countersign.edit", subject="Edited in Teams",
                                                  body="New body from Rita"))
    assert status == 200 and answer["statusCode"] == 200
    # The card answered and the posted card show what the edit changed against the draft.
    changes = ["Changes from the draft", r"\- Your refund", r"\+ Edited in Teams", r"\- Dear Ann,",
               r"\- Kind regards,", r"\+ New body from Rita"]
    assert set(changes) <= set(_texts(answer["value"]))
    await teams.service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert message["Subject"] == "Edited in Teams"
    assert message.get_body(("plain",)).get_content().strip() == "New body from Rita"
    update = (await teams.wait_calls("PUT", 1))[-1]
    assert set(changes) <= set(_texts(update.body["attachments"][0]["content"]))

    run_id, approval_id = await teams.pending_run()
    status, answer = await teams.post(teams.click(approval_id, "countersign.reject", reason="   "))
    assert status == 200 and answer["statusCode"] == 400  # a reason is required
    status, answer = await teams.post(teams.click(approval_id, "countersign.reject", reason="Wrong customer"))
    assert answer["statusCode"] == 200
    run = await teams.service.wait_status(run_id, "rejected")
    assert run["failure_reason"] == "Wrong customer" and len(smtp_server.messages()) == 1


async def test_unauthorized_reviewer_gets_told_and_is_audited(teams: Teams) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run(reviewers=["aad-sam"])
    status, answer = await teams.post(teams.click(approval_id, "countersign.approve", sender="mallory"))
    assert status == 200 and answer["statusCode"] == 200
    texts = " ".join(_texts(answer["value"]))
    assert "not among the reviewers" in texts and _actions(answer["value"]) == []
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval"
    [refused] = [e for e in run["timeline"] if e["event"] == "decision.refused"]
    assert refused["actor"] == "aad-mallory" and refused["data"]["channel"] == "teams"
    # The card's data cannot speak for someone else: identity comes from the signed activity.
    click = teams.click(approval_id, "countersign.approve", sender="mallory")
    click["value"]["action"]["data"]["reviewer"] = {"id": "aad-sam"}
    await teams.post(click)
    assert (await teams.service.run(run_id))["status"] == "awaiting_approval"


async def test_duplicate_and_concurrent_clicks_decide_once(teams: Teams, smtp_server: SmtpServer) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    clicks = [teams.click(approval_id, "countersign.approve" if i % 2 else "countersign.reject", sender=f"r{i}",
                          reason="no") for i in range(12)]
    results = await asyncio.gather(*(teams.post(c) for c in clicks))
    assert all(status == 200 and answer["statusCode"] == 200 for status, answer in results)
    assert all(_actions(answer["value"]) == [] for _, answer in results)  # everyone sees the decided card
    run = await teams.service.wait_for(run_id, lambda r: r["status"] in ("completed", "rejected"))
    assert len(run["decisions"]) == 1
    assert len(smtp_server.messages()) == (1 if run["status"] == "completed" else 0)


@pytest.mark.parametrize("case", [
    "missing", "not bearer", "garbage", "expired", "wrong audience", "wrong issuer", "alg none",
    "hs256 with public key", "wrong key", "unknown kid", "tampered", "wrong serviceurl", "not yet valid",
])
async def test_every_bad_token_is_401_and_changes_nothing(teams: Teams, case: str) -> None:
    run_id, approval_id = await teams.pending_run()
    tokens = teams.tokens
    auth = {
        "missing": "", "not bearer": f"Basic {tokens.token()}", "garbage": "Bearer not.a.jwt",
        "expired": f"Bearer {tokens.expired()}", "wrong audience": f"Bearer {tokens.token(aud='another-app')}",
        "wrong issuer": f"Bearer {tokens.token(iss='https://evil.example')}", "alg none": f"Bearer {tokens.alg_none()}",
        "hs256 with public key": f"Bearer {tokens.hs256_with_public_key()}", "wrong key": f"Bearer {tokens.wrong_key()}",
        "unknown kid": f"Bearer {tokens.unknown_kid()}", "tampered": f"Bearer {tokens.tampered(aud=APP_ID + 'x')}",
        "wrong serviceurl": f"Bearer {tokens.token(serviceurl='https://evil.example/')}",
        "not yet valid": f"Bearer {tokens.not_yet_valid()}",
    }[case]
    status, problem = await teams.post(teams.click(approval_id, "countersign.approve"), auth=auth)
    assert status == 401 and problem["status"] == 401 and problem["type"].endswith("unauthorized")
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []


async def test_rotated_signing_key_is_accepted_at_once(teams: Teams) -> None:
    await teams.install()
    new_kid = teams.keys.rotate(endorsements=["msteams"])
    await asyncio.sleep(0.6)  # past the minimum refresh interval of this test configuration
    status, _ = await teams.post(teams.activity("conversationUpdate", membersAdded=[]), token=teams.tokens.token(new_kid))
    assert status == 200


async def test_throttling_is_retried_within_limits(teams: Teams) -> None:
    await teams.install()
    teams.connector.fail_next(Failure(429, retry_after=0.3, code="TooManyRequests"), Failure(502), Failure(503))
    run_id, _ = await teams.pending_run()
    await teams.wait_calls("POST", 1, "/v3/conversations", timeout=15)
    attempts = [c for c in teams.connector.calls if c.path == "/v3/conversations"]
    assert [c.status for c in attempts] == [429, 502, 503, 200]
    assert attempts[1].at - attempts[0].at >= 0.3  # Retry-After honoured
    run = await teams.service.wait_for(run_id, lambda r: any(
        j["kind"] == "teams.post_card" and j["status"] == "done" for j in r["jobs"]))
    [job] = [j for j in run["jobs"] if j["kind"] == "teams.post_card"]
    assert job["attempts"] == 4


async def test_oversized_or_forbidden_is_a_dead_letter_on_the_run(teams: Teams) -> None:
    await teams.install()
    teams.connector.fail_next(Failure(413, code="MessageSizeTooBig"))
    run_id, _ = await teams.pending_run()
    run = await teams.service.wait_for(run_id, lambda r: any(
        j["kind"] == "teams.post_card" and j["status"] == "dead" for j in r["jobs"]))
    [job] = [j for j in run["jobs"] if j["kind"] == "teams.post_card"]
    assert "413" in job["last_error"] and "MessageSizeTooBig" in job["last_error"] and job["attempts"] == 1
    assert "job.dead" in [e["event"] for e in run["timeline"]]


async def test_personal_chat_reviewer_and_status_command(teams: Teams) -> None:
    # Sam installs the app personally: the bot learns the chat and Sam's email.
    teams.connector.members["29:sam"] = {"id": "29:sam", "name": "Sam", "aadObjectId": "aad-sam",
                                         "email": "sam@example.com", "userPrincipalName": "sam@example.com"}
    status, _ = await teams.post(teams.activity("installationUpdate", sender="sam", conversation="a:chat-sam",
                                                conversation_type="personal", action="add"))
    assert status == 200
    run_id, approval_id = await teams.pending_run(teams_channel=None, teams_chat=["sam@example.com"],
                                                  reviewers=["sam@example.com"])
    # Posted into Sam's existing chat (a reply to the continuation), not a new conversation.
    sends = await teams.wait_calls("POST", 1, "/v3/conversations/a:chat-sam/activities")
    assert sends[0].body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    await teams.service.wait_for(run_id, lambda r: "teams.card_posted" in [e["event"] for e in r["timeline"]])

    status, _ = await teams.post(teams.activity("message", sender="sam", conversation="a:chat-sam",
                                                conversation_type="personal", text="status"))
    assert status == 200
    replies = await teams.wait_calls("POST", 2, "/v3/conversations/a:chat-sam/activities")
    assert "1 approval(s) waiting here" in replies[-1].body["text"]

    status, answer = await teams.post({**teams.click(approval_id, "countersign.approve", sender="sam"),
                                       "conversation": {"id": "a:chat-sam", "conversationType": "personal",
                                                        "tenantId": TENANT}})
    assert answer["statusCode"] == 200 and _actions(answer["value"]) == []
    run = await teams.service.wait_status(run_id, "completed")
    assert run["decisions"][0]["reviewer"]["email"] == "sam@example.com"


async def test_action_submit_fallback_decides_too(teams: Teams) -> None:
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    status, _ = await teams.post(teams.activity("message", conversation=f"{CHANNEL};messageid=1", replyToId="activity-1",
                                                value={"verb": "countersign.approve", "approval_id": approval_id,
                                                       "revision": 1}))
    assert status == 200
    run = await teams.service.wait_status(run_id, "completed")
    assert run["decisions"][0]["channel"] == "teams"


async def test_bad_activity_bodies_are_4xx(teams: Teams) -> None:
    for raw, expected in ((b"{not json", 400), (b"[]", 400), (b'{"type": "message"}', 400)):
        status, problem, _ = await teams.service.request(
            "POST", "/api/messages", raw=raw, auth="none", headers={"Authorization": f"Bearer {teams.tokens.token()}"})
        assert status == expected and problem["status"] == expected


@pytest.mark.parametrize("value, code, says", [
    (None, "BadRequest", "Missing value property"),
    ("approve", "BadRequest", "not properly formed"),
    ({"trigger": "manual"}, "BadRequest", "Missing action property"),
    ({"action": {"type": "Action.Submit", "verb": "countersign.approve"}}, "NotSupported", "Action.Submit"),
    ({"action": ["Action.Execute"]}, "NotSupported", "list"),
])
async def test_malformed_card_action_gets_a_400_answer_and_decides_nothing(
        teams: Teams, value: Any, code: str, says: str) -> None:
    # The SDK's own checks answer these with an unserialisable Exception value: a 500.
    await teams.install()
    run_id, approval_id = await teams.pending_run()
    click = teams.click(approval_id, "countersign.approve")
    if value is None:
        del click["value"]
    else:
        click["value"] = value
    status, body = await teams.post(click)
    assert status == 400
    assert body == {"statusCode": 400, "type": "application/vnd.microsoft.error",
                    "value": {"code": code, "message": body["value"]["message"]}}
    assert says in body["value"]["message"]
    run = await teams.service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []


def _actions(card: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if str(node.get("type", "")).startswith("Action."):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(card.get("actions", []))
    walk(card.get("body", []))
    return found


def _texts(card: dict[str, Any]) -> list[str]:
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "TextBlock":
                texts.append(node.get("text", ""))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(card)
    return texts


async def test_uninstall_by_installation_update(teams: Teams) -> None:
    await teams.install()
    status, _ = await teams.post(teams.activity("installationUpdate", action="remove"))
    assert status == 200
    await teams.pending_run()
    run = await teams.service.wait_for((await teams.service.request("GET", "/api/runs"))[1]["items"][0]["id"],
                                       lambda r: any(j["status"] == "dead" for j in r["jobs"]))
    assert "not installed" in run["jobs"][0]["last_error"]


def test_teams_without_app_id_refuses_to_start(tmp_path, db_url: str) -> None:  # type: ignore[no-untyped-def]
    from service.app import create_app
    from service.config import Settings
    from service.teams.channel import TeamsNotConfigured

    for settings in (
        Settings(data_dir=tmp_path, api_token="x" * 20, microsoft_app_password="secret"),
        Settings(data_dir=tmp_path, api_token="x" * 20,
                 policies={"default": {"reviewers": "anyone", "teams_channel": CHANNEL}}),
    ):
        with pytest.raises(TeamsNotConfigured, match="MicrosoftAppId"):
            create_app(settings)


async def test_insecure_development_mode_is_explicit_and_loud(start_service: StartService, smtp_server: SmtpServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from service.teams.playground import TENANT_ID as PLAYGROUND_TENANT  # the only tenant this mode serves

    service = await start_service(smtp_server, bot_insecure_no_auth=True, teams_allowed_tenants=[PLAYGROUND_TENANT])
    activity = {"type": "conversationUpdate", "id": "1", "channelId": "msteams", "serviceUrl": "http://127.0.0.1:9",
                "from": {"id": "29:x"}, "recipient": {"id": "28:bot"},
                "channelData": {"tenant": {"id": PLAYGROUND_TENANT}},
                "conversation": {"id": CHANNEL, "conversationType": "channel"}, "membersAdded": []}
    for _ in range(2):
        status, _, _ = await service.request("POST", "/api/messages", body=activity, auth="none")
        assert status == 200
    warnings = [r for r in caplog.records if "authentication is OFF" in r.getMessage()]
    assert len(warnings) == 2  # on every request


async def test_without_teams_the_endpoint_says_so(service: Service) -> None:
    status, problem, _ = await service.request("POST", "/api/messages", body={"type": "message"}, auth="none")
    assert status == 503 and problem["type"].endswith("teams_not_configured")


async def test_new_personal_chat_is_created_for_a_known_reviewer(teams: Teams) -> None:
    await teams.install()
    teams.connector.members["29:sam"] = {"id": "29:sam", "name": "Sam", "aadObjectId": "aad-sam",
                                         "email": "sam@example.com", "userPrincipalName": "sam@example.com"}
    # Sam is met in the channel: a click on an approval whose policy names reviewers by email.
    _, first = await teams.pending_run(reviewers=["sam@example.com"])
    status, answer = await teams.post(teams.click(first, "countersign.reject", sender="sam", reason="not now"))
    assert answer["statusCode"] == 200

    run_id, _ = await teams.pending_run(teams_channel=None, teams_chat=["sam@example.com"],
                                        reviewers=["sam@example.com"])
    creates = await teams.wait_calls("POST", 2, "/v3/conversations")
    create = [c for c in creates if c.path == "/v3/conversations" and not c.body.get("channelData", {}).get("channel")]
    assert len(create) == 1 and create[0].body["members"] == [{"id": "29:sam"}] and create[0].body["isGroup"] is False
    chat_id = create[0].conversation_id
    [card] = await teams.wait_calls("POST", 1, f"/v3/conversations/{chat_id}/activities")
    assert card.body["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    run = await teams.service.wait_for(run_id, lambda r: any(
        j["kind"] == "teams.post_card" and j["status"] == "done" for j in r["jobs"]))
    assert "teams.card_posted" in [e["event"] for e in run["timeline"]]


async def test_agent_draft_card_shows_revision_and_sources(teams: Teams) -> None:
    await teams.install()
    accepted = await teams.service.create_run({
        "request": "Can I still return a jacket I bought three weeks ago?",
        "customer": {"email": "ann@example.com", "name": "Ann"}, "policy": "team"})
    [create] = await teams.wait_calls("POST", 1, "/v3/conversations", timeout=30)
    card = create.body["activity"]["attachments"][0]["content"]
    text = "\n".join(_texts(card))
    assert "Returns and refunds" in text and "returns-and-refunds.md" in text
    run = await teams.service.run(accepted["id"])
    [approval] = run["approvals"]
    assert approval["sources"][0]["title"] == "Returns and refunds"
    assert _actions(card)  # a pending card: the reviewer can decide
