"""The whole path over HTTP: signed webhook -> pending approval -> API decision -> email at a
real SMTP server (STARTTLS + AUTH required) -> recorded, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json

import pytest

from service.domain import EmailAction
from service.mail.message import approved_sha256, visible_content_of

from .conftest import Service, email_action
from .peers.smtp import SmtpServer


async def test_webhook_to_approved_email(service: Service, smtp_server: SmtpServer) -> None:
    body = {"action": email_action(cc=["billing@example.com"], in_reply_to="<original-123@customer.example.com>",
                                   references=["<thread-1@customer.example.com>"]),
            "requested_by": "ops-bot", "metadata": {"ticket": "T-42"}}
    accepted = await service.create_run(body, auth="webhook")
    assert accepted["status"] == "awaiting_approval"
    assert accepted["url"] == f"http://countersign.test/api/runs/{accepted['id']}"

    run = await service.run(accepted["id"])
    assert run["status"] == "awaiting_approval" and run["metadata"] == {"ticket": "T-42"}
    [approval] = run["approvals"]
    assert approval["status"] == "pending" and approval["action"]["subject"] == "Your refund"
    assert smtp_server.messages() == []

    status, decision = await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    assert status == 200, decision
    assert decision["status"] == "approved"

    run = await service.wait_status(accepted["id"], "completed")
    [message] = smtp_server.messages()
    assert message["From"] == "Support Team <support@example.com>"
    assert message["To"] == "ann.customer@example.com"
    assert message["Cc"] == "billing@example.com"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "Your refund"
    assert message["In-Reply-To"] == "<original-123@customer.example.com>"
    assert message["References"].split() == ["<thread-1@customer.example.com>", "<original-123@customer.example.com>"]
    assert message["Message-ID"].endswith("@countersign.example.com>")
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == body["action"]["body"] + "\n"
    html = message.get_body(("html",)).get_content()
    assert "<p>Dear Ann,</p>" in html

    # What was approved is what was sent, and the record proves it.
    [delivery] = run["deliveries"]
    assert delivery["status"] == "sent" and delivery["message_id"] == message["Message-ID"]
    assert delivery["smtp_reply"].startswith("250")
    [raw] = smtp_server.raw_messages()
    assert delivery["approved_sha256"] == delivery["sent_sha256"] == visible_content_of(raw).sha256()
    assert delivery["content_hash_version"] == 2 and delivery["mail_from"] == service.settings.mail_from
    assert run["approvals"][0]["approved_sha256"] == delivery["approved_sha256"]
    events = [e["event"] for e in run["timeline"]]
    assert events == ["run.created", "approval.requested", "decision.approve", "run.delivering", "delivery.sent",
                      "run.completed"]


async def test_reject_sends_nothing(service: Service, smtp_server: SmtpServer) -> None:
    accepted = await service.create_run({"action": email_action()})
    run = await service.run(accepted["id"])
    approval_id = run["approvals"][0]["id"]
    status, decision = await service.decide(approval_id, {"decision": "reject", "reviewer": {"id": "rita"},
                                                          "reason": "Refund not yet approved by finance"})
    assert status == 200 and decision["status"] == "rejected"
    run = await service.wait_status(accepted["id"], "rejected")
    assert run["failure_reason"] == "Refund not yet approved by finance"
    assert run["deliveries"] == [] and [j for j in run["jobs"] if j["kind"] == "send_email"] == []
    assert smtp_server.messages() == []


async def test_edit_and_approve_sends_the_edit(service: Service, smtp_server: SmtpServer) -> None:
    accepted = await service.create_run({"action": email_action()})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    edited = "Dear Ann,\r\n\r\nYour refund of EUR 40 was issued today.\r\n\r\nBest,\r\nRita\r\n"
    status, _ = await service.decide(approval_id, {"decision": "edit", "reviewer": {"id": "rita"},
                                                   "subject": "Your refund (EUR 40)", "body": edited})
    assert status == 200
    run = await service.wait_status(accepted["id"], "completed")
    [message] = smtp_server.messages()
    assert message["Subject"] == "Your refund (EUR 40)"
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == edited.replace("\r\n", "\n")
    approved = EmailAction.from_dict(run["approvals"][0]["approved_action"])
    assert approved.body == edited.replace("\r\n", "\n").rstrip("\n")
    assert run["deliveries"][0]["sent_sha256"] == approved_sha256(
        approved, sender=service.settings.mail_from, reply_to=service.settings.mail_reply_to)
    # The run shows what the edit changed, line by line, against the draft.
    diff = run["approvals"][0]["diff"]
    assert diff["subject"] == {"added": 1, "removed": 1, "hunks": [{
        "header": "@@ -1 +1 @@", "old_start": 1, "old_count": 1, "new_start": 1, "new_count": 1,
        "lines": [{"kind": "removed", "text": "Your refund", "old_line": 1, "new_line": None},
                  {"kind": "added", "text": "Your refund (EUR 40)", "old_line": None, "new_line": 1}]}]}
    body = [(line["kind"], line["text"]) for line in diff["body"]["hunks"][0]["lines"]]
    assert body == [("equal", "Dear Ann,"), ("equal", ""), ("removed", "Your refund was issued today."),
                    ("added", "Your refund of EUR 40 was issued today."), ("equal", ""),
                    ("removed", "Kind regards,"), ("removed", "Support"), ("added", "Best,"), ("added", "Rita")]
    assert diff["unified"] == (
        "--- draft/subject\n+++ approved/subject\n@@ -1 +1 @@\n-Your refund\n+Your refund (EUR 40)\n"
        "--- draft/body\n+++ approved/body\n@@ -1,6 +1,6 @@\n Dear Ann,\n \n-Your refund was issued today.\n"
        "+Your refund of EUR 40 was issued today.\n \n-Kind regards,\n-Support\n+Best,\n+Rita")
    assert (diff["draft_version"], diff["approved_draft_version"]) == (1, 1)
    # Nothing of it is stored: the approval keeps the draft and what was approved, as before.
    assert run["approvals"][0]["action"]["body"] == email_action()["body"]


async def test_an_edit_that_changes_nothing_and_a_plain_approval_have_no_diff(
    service: Service, smtp_server: SmtpServer
) -> None:
    for decision in ({"decision": "approve"}, {"decision": "edit", "body": email_action()["body"] + "\r\n"}):
        accepted = await service.create_run({"action": email_action()})
        approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
        status, _ = await service.decide(approval_id, {**decision, "reviewer": {"id": "rita"}})
        assert status == 200
        run = await service.wait_status(accepted["id"], "completed")
        assert run["approvals"][0]["status"] == "approved" and run["approvals"][0]["diff"] is None
    pending = await service.create_run({"action": email_action()})
    assert (await service.run(pending["id"]))["approvals"][0]["diff"] is None


async def test_second_decision_changes_nothing(service: Service, smtp_server: SmtpServer) -> None:
    accepted = await service.create_run({"action": email_action()})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    first = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
    again = await service.decide(approval_id, {"decision": "reject", "reviewer": {"id": "sam"}, "reason": "no"})
    assert first[0] == 200
    assert again[0] == 409 and again[1]["detail"].endswith("already approved")
    run = await service.wait_status(accepted["id"], "completed")
    assert len(run["decisions"]) == 1 and len(smtp_server.messages()) == 1
    assert "decision.refused" in [e["event"] for e in run["timeline"]]


async def test_policy_reviewers_and_self_approval(service: Service, smtp_server: SmtpServer) -> None:
    accepted = await service.create_run({"action": email_action(), "requested_by": "rita@example.com",
                                         "policy": {"reviewers": ["rita@example.com", "sam@example.com"]}})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "mallory@example.com"}})
    assert status == 403 and "not among the reviewers" in problem["detail"]
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "RITA@example.com"}})
    assert status == 403 and "self-approval" in problem["detail"]
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "x1", "email": "sam@example.com"}})
    assert status == 200
    run = await service.wait_status(accepted["id"], "completed")
    refused = [e for e in run["timeline"] if e["event"] == "decision.refused"]
    # The key that asked is the actor; the reviewer it named is who it was on behalf of.
    assert [(e["actor"], e["data"]["on_behalf_of"]) for e in refused] == [
        ("key:decider-1", "mallory@example.com"), ("key:decider-1", "RITA@example.com")]


async def test_cancel_then_decide(service: Service, smtp_server: SmtpServer) -> None:
    accepted = await service.create_run({"action": email_action()})
    status, run, _ = await service.request("POST", f"/api/runs/{accepted['id']}/cancel", body={"reason": "customer called"})
    assert status == 200 and run["status"] == "cancelled"
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
    assert status == 409
    status, problem, _ = await service.request("POST", f"/api/runs/{accepted['id']}/cancel")
    assert status == 409 and problem["type"].endswith("invalid_transition")
    assert smtp_server.messages() == []


async def test_idempotency_key(service: Service) -> None:
    body = {"action": email_action()}
    headers = {"Idempotency-Key": "order-77-reply"}
    s1, first, _ = await service.request("POST", "/api/runs", body=body, headers=headers)
    s2, second, h2 = await service.request("POST", "/api/runs", raw=json.dumps(body, indent=2).encode(), headers=headers)
    assert s1 == s2 == 202 and first["id"] == second["id"] and h2["Idempotent-Replayed"] == "true"
    s3, problem, _ = await service.request("POST", "/api/runs", body={"action": email_action(subject="Other")}, headers=headers)
    assert s3 == 409 and problem["type"].endswith("idempotency_key_reused")
    status, page, _ = await service.request("GET", "/api/runs")
    assert [r["id"] for r in page["items"]] == [first["id"]]


async def test_list_runs_filters_and_paginates(service: Service) -> None:
    ids = [(await service.create_run({"action": email_action(subject=f"n{i}")}))["id"] for i in range(5)]
    await service.request("POST", f"/api/runs/{ids[0]}/cancel")
    seen: list[str] = []
    cursor = None
    while True:
        path = "/api/runs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await service.request("GET", path)
        assert status == 200 and len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    status, page, _ = await service.request("GET", "/api/runs?status=cancelled")
    assert [r["id"] for r in page["items"]] == [ids[0]]


async def test_callback_is_signed_and_retried(start_service, smtp_server: SmtpServer) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from service.callbacks import SIGNATURE_HEADER
    from service.signing import HEADER, SignatureError, verify

    from .conftest import WEBHOOK_SECRET, free_port

    callback_secret = "test-callback-secret-e2e"
    received: list[tuple[bytes, dict[str, str]]] = []
    answers = [503, 200]

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server(shutdown_timeout=2)
    try:
        # The receiver is on loopback: reachable only because it is allow-listed (and over
        # plain http only because that is allowed too).
        service = await start_service(smtp_server, callback_allow_http=True, callback_allowed_hosts=["127.0.0.1"],
                                      callback_signing_secret=callback_secret)
        accepted = await service.create_run({"action": email_action(), "callback_url": str(server.make_url("/hook"))})
        approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
        await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
        run = await service.wait_for(accepted["id"], lambda r: "callback.delivered" in [e["event"] for e in r["timeline"]])
        assert len(received) == 2
        body, headers = received[-1]
        import time
        verify(callback_secret, headers[SIGNATURE_HEADER], body, now=time.time(), tolerance=300)
        with pytest.raises(SignatureError):  # not the webhook secret, and not its header
            verify(WEBHOOK_SECRET, headers[SIGNATURE_HEADER], body, now=time.time(), tolerance=300)
        assert HEADER not in headers
        payload = json.loads(body)
        assert payload["event"] == "run.completed" and payload["run"]["id"] == accepted["id"]
        assert [j["attempts"] for j in run["jobs"] if j["kind"] == "callback"] == [2]
    finally:
        await server.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
