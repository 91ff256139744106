"""Pause in one process, resume in another: the agent run waits in the database, not in
memory. Each test kills the first process with SIGKILL while the run waits for a decision,
takes the decision through a freshly started process, and counts LLM calls and emails so
that any repeated call or duplicate email fails the test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import API_TOKEN, free_port, migrate_database_sync
from .peers.openai_server import Say, ScriptedLLM, call
from .peers.smtp import SmtpServer
from .processes import ServiceProcess

CUSTOMER = {"email": "ann.customer@example.com", "name": "Ann"}
DRAFT = {"subject": "Your return", "body": "Dear Ann,\n\nUnused items can be returned within 30 days.\n\nSupport"}
REVIEWER = {"id": "rita@example.com"}


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body,
                                     headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
            return r.status, await r.json(content_type=None)

    async def wait_run(self, run_id: str, predicate: Any, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status, run = await self.call("GET", f"/api/runs/{run_id}")
            assert status == 200, run
            if predicate(run):
                return run
            assert time.monotonic() < deadline, run
            await asyncio.sleep(0.05)


def pending(revision: int) -> Any:
    return lambda run: any(a["revision"] == revision and a["status"] == "pending" for a in run["approvals"])


def environment(tmp_path: Path, db_url: str, smtp: SmtpServer, llm: ScriptedLLM, port: int) -> dict[str, str]:
    env = {
        "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
        "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_PORT": str(port),
        # These tests are about crashes, not credentials: the operator token decides for them.
        "COUNTERSIGN_API_TOKEN_MAY_DECIDE_ON_BEHALF": "true", "COUNTERSIGN_LOG_LEVEL": "WARNING",
        "COUNTERSIGN_JOB_POLL_SECONDS": "0.05", "COUNTERSIGN_JOB_BACKOFF_BASE_SECONDS": "0.05",
        "COUNTERSIGN_JOB_BACKOFF_MAX_SECONDS": "0.2", "COUNTERSIGN_JOB_LEASE_SECONDS": "1",
        "OPENAI_BASE_URL": llm.url, "OPENAI_API_KEY": "sk-test", "COUNTERSIGN_LLM_MODEL": "gpt-4o-mini",  # type: ignore[attr-defined]
        **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp.settings().items()},
    }
    if not db_url.startswith("sqlite"):
        migrate_database_sync(db_url)  # as `countersign migrate` would (tests/conftest.py)
    return env


async def pause_in_a_first_process(tmp_path: Path, env: dict[str, str], port: int) -> tuple[str, dict[str, Any]]:
    first = ServiceProcess(env, port, tmp_path / "first.log")
    await first.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, first.url)
            status, accepted = await api.call("POST", "/api/runs", {"request": "Can I return my jacket?",
                                                                     "customer": CUSTOMER})
            assert status == 202, accepted
            run = await api.wait_run(accepted["id"], pending(1))
    finally:
        first.kill()
        await first.wait_dead()
    assert_loop_never_blocked(tmp_path / "first.log")
    return accepted["id"], run["approvals"][0]


def assert_loop_never_blocked(log: Path) -> None:
    """The agent's first step (LlamaIndex, the OpenAI client, the knowledge index) never held
    the event loop long enough to put the leases renewed on it at risk (service/loop_lag.py)."""
    blocked = [line for line in log.read_text().splitlines() if "event loop was blocked" in line]
    assert blocked == []


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
async def test_decision_resumes_a_run_paused_by_a_killed_process(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer, llm: ScriptedLLM, decision: str
) -> None:
    second_draft = {"subject": "Your return, free in the EU", "body": "Dear Ann,\n\nWithin 30 days, free in the EU."}
    llm.script = [call("search_knowledge_base", query="returns"), call("send_customer_email", **DRAFT)]
    llm.script += [call("send_customer_email", **second_draft)] if decision == "reject" else []
    llm.script += [Say("Done.")]
    port = free_port()
    env = environment(tmp_path, db_url, smtp_server, llm, port)
    run_id, approval = await pause_in_a_first_process(tmp_path, env, port)
    assert len(llm.chat_requests) == 2

    second = ServiceProcess(env, port, tmp_path / "second.log")
    await second.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, second.url)
            body: dict[str, Any] = {"decision": decision, "reviewer": REVIEWER}
            if decision == "edit":
                body["body"] = "Dear Ann,\n\nEdited: within 30 days.\n\nSupport"
            if decision == "reject":
                body["reason"] = "Say that return shipping is free in the EU."
            status, answer = await api.call("POST", f"/api/approvals/{approval['id']}/decisions", body)
            assert status == 200, answer
            if decision == "reject":
                run = await api.wait_run(run_id, pending(2))
                revision_2 = next(a for a in run["approvals"] if a["revision"] == 2)
                assert revision_2["action"]["subject"] == second_draft["subject"]
                status, answer = await api.call("POST", f"/api/approvals/{revision_2['id']}/decisions",
                                                {"decision": "approve", "reviewer": REVIEWER})
                assert status == 200, answer
            run = await api.wait_run(run_id, lambda r: r["status"] == "completed")
            # The same decision again, through the new process: nothing resumes twice.
            status, _ = await api.call("POST", f"/api/approvals/{approval['id']}/decisions",
                                       {"decision": "approve", "reviewer": REVIEWER})
            assert status == 409
            await asyncio.sleep(0.3)
    finally:
        second.kill()
    assert_loop_never_blocked(tmp_path / "second.log")
    [message] = smtp_server.messages()
    expected = {"approve": DRAFT["subject"], "edit": DRAFT["subject"], "reject": second_draft["subject"]}[decision]
    assert message["Subject"] == expected
    if decision == "edit":
        assert "Edited: within 30 days." in message.get_body(("plain",)).get_content()
    assert run["summary"] == "Done."
    assert len(llm.chat_requests) == (4 if decision == "reject" else 3)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_restart_between_decision_and_send_sends_once_and_calls_the_llm_once(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    llm.script = [call("search_knowledge_base", query="returns"), call("send_customer_email", **DRAFT), Say("Done.")]
    port = free_port()
    env = environment(tmp_path, db_url, smtp_server, llm, port)
    run_id, approval = await pause_in_a_first_process(tmp_path, env, port)

    # Approved while the SMTP server is down: the delivery is queued and failing when the
    # process dies.
    smtp_server.stop()
    second = ServiceProcess(env, port, tmp_path / "second.log")
    await second.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, second.url)
            status, _ = await api.call("POST", f"/api/approvals/{approval['id']}/decisions",
                                       {"decision": "approve", "reviewer": REVIEWER})
            assert status == 200
            await api.wait_run(run_id, lambda r: any(j["kind"] == "send_email" and j["attempts"] >= 1
                                                     for j in r["jobs"]))
    finally:
        second.kill()
        await second.wait_dead()
    assert len(llm.chat_requests) == 2

    smtp_server.start()
    third = ServiceProcess(env, port, tmp_path / "third.log")
    await third.start()
    try:
        async with aiohttp.ClientSession() as http:
            run = await Api(http, third.url).wait_run(run_id, lambda r: r["status"] == "completed")
    finally:
        third.kill()
    assert len(smtp_server.messages()) == 1
    assert len(llm.chat_requests) == 3 and run["summary"] == "Done."


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_process_killed_mid_step_is_taken_over_and_drafts_once(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer, llm: ScriptedLLM
) -> None:
    # Killed while the LLM is drafting: nothing of that step was committed, so the next
    # process runs the step again from the start (the only LLM calls ever repeated are
    # those whose result was never recorded) and exactly one approval comes of it.
    llm.delay = 0.5
    llm.script = [call("search_knowledge_base", query="returns"), call("send_customer_email", **DRAFT)] * 2
    port = free_port()
    env = environment(tmp_path, db_url, smtp_server, llm, port)
    first = ServiceProcess(env, port, tmp_path / "first.log")
    await first.start()
    async with aiohttp.ClientSession() as http:
        status, accepted = await Api(http, first.url).call("POST", "/api/runs", {"request": "Can I return it?",
                                                                                 "customer": CUSTOMER})
        assert status == 202
        while len(llm.chat_requests) < 2:  # the drafting call is in flight
            await asyncio.sleep(0.02)
    first.kill()
    await first.wait_dead()

    second = ServiceProcess(env, port, tmp_path / "second.log")
    await second.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, second.url)
            run = await api.wait_run(accepted["id"], pending(1))
            await asyncio.sleep(1.5)  # a second takeover would have drafted again by now
            status, run = await api.call("GET", f"/api/runs/{accepted['id']}")
    finally:
        second.kill()
    assert [(a["revision"], a["status"]) for a in run["approvals"]] == [(1, "pending")]
    [step] = [j for j in run["jobs"] if j["kind"] == "agent.step"]
    assert step["attempts"] == 2 and step["status"] == "done"
    assert len(llm.chat_requests) == 4
