"""Every SMTP attempt of a delivery is on record with the server's reply, and `sending` (the
one state a duplicate can come from) is committed only between RCPT TO and DATA: a process
killed before it cannot have transmitted the message; one killed after it is re-sent, and
the re-send is marked as a possible duplicate and audited."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from service.store import tables as t

from .conftest import API_TOKEN, Service, email_action, free_port, migrate_database_sync
from .peers.smtp import SmtpServer
from .processes import ServiceProcess

RESENT = "delivery.resent_after_interruption"
ACCEPTED_REPLY = "250 2.0.0 Message accepted for delivery"


async def _approved_run(service: Service, **action: Any) -> str:
    accepted = await service.create_run({"action": email_action(**action)})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
    assert status == 200
    return accepted["id"]


def _log(run: dict[str, Any]) -> list[tuple[Any, ...]]:
    [delivery] = run["deliveries"]
    return [(a["number"], a["step"], a["outcome"], a["smtp_reply"], a["possible_duplicate"])
            for a in delivery["attempt_log"]]


def _events(run: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in run["timeline"] if e["event"] == kind]


async def _metric_count(service: Service) -> float:
    async with service.http.get(service.url + "/metrics") as r:
        text = await r.text()
    found = re.search(r'^countersign_side_effect_record_seconds_count\{kind="send_email"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_transient_reply_at_rcpt_is_a_failed_attempt(service: Service, smtp_server: SmtpServer) -> None:
    before = await _metric_count(service)
    smtp_server.handler.fail_rcpt_next = ["451 4.3.0 mailbox busy, try later"]
    run = await service.wait_status(await _approved_run(service), "completed")
    assert _log(run) == [
        (1, "RCPT", "failed", "451 4.3.0 mailbox busy, try later", False),
        (2, "DATA", "accepted", ACCEPTED_REPLY, False),
    ]
    [delivery] = run["deliveries"]
    failed, accepted = delivery["attempt_log"]
    assert "451 4.3.0 mailbox busy" in failed["error"] and failed["finished_at"] >= failed["started_at"]
    assert accepted["error"] is None and accepted["finished_at"] is not None
    assert delivery["attempts"] == 2 and delivery["smtp_reply"] == ACCEPTED_REPLY
    assert _events(run, RESENT) == []
    [sent] = _events(run, "delivery.sent")
    assert sent["data"]["attempt"] == 2
    assert len(smtp_server.messages()) == 1
    # The 250-to-committed window of this send was observed (once the commit's callbacks ran).
    deadline = time.monotonic() + 5
    while await _metric_count(service) != before + 1:
        assert time.monotonic() < deadline, (before, await _metric_count(service))
        await asyncio.sleep(0.05)


async def test_a_transient_reply_at_data_is_a_failed_attempt(service: Service, smtp_server: SmtpServer) -> None:
    smtp_server.handler.fail_next = ["451 4.3.0 try again later"]
    run = await service.wait_status(await _approved_run(service), "completed")
    # A refusal of the content is an answer: the server does not have the message, so the
    # next attempt is a first send, not a possible duplicate.
    assert _log(run) == [
        (1, "DATA", "failed", "451 4.3.0 try again later", False),
        (2, "DATA", "accepted", ACCEPTED_REPLY, False),
    ]
    assert _events(run, RESENT) == []
    assert len(smtp_server.messages()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_refused_recipients(service: Service, smtp_server: SmtpServer) -> None:
    # One of two refused: sent to the other, the refusal kept with the reply.
    smtp_server.handler.fail_rcpt_next = ["550 5.1.1 no such mailbox"]
    run = await service.wait_status(
        await _approved_run(service, to=["gone@example.com", "ann.customer@example.com"]), "completed")
    [(number, step, outcome, reply, duplicate)] = _log(run)
    assert (number, step, outcome, duplicate) == (1, "DATA", "accepted", False)
    assert reply == f"{ACCEPTED_REPLY} (refused: gone@example.com: 550 5.1.1 no such mailbox)"

    # Every recipient refused: the delivery fails, and its one attempt says why.
    smtp_server.handler.fail_rcpt_next = ["550 5.1.1 no such mailbox"]
    run = await service.wait_status(await _approved_run(service, subject="Second"), "failed")
    assert _log(run) == [(1, "RCPT", "failed", "550 5.1.1 no such mailbox", False)]
    assert run["deliveries"][0]["status"] == "failed"
    assert len(smtp_server.messages()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_server_that_is_down_leaves_failed_connect_attempts(start_service: Any, smtp_server: SmtpServer) -> None:
    smtp_server.stop()
    service = await start_service(smtp_server, job_max_attempts=50)
    run_id = await _approved_run(service)
    await service.wait_for(run_id, lambda r: len(r["deliveries"][0]["attempt_log"]) >= 2)
    smtp_server.start()
    run = await service.wait_status(run_id, "completed")
    log = _log(run)
    *failed, accepted = log
    assert all(step == "connect" and outcome == "failed" and reply is None for _, step, outcome, reply, _ in failed)
    assert "Connect call failed" in run["deliveries"][0]["attempt_log"][0]["error"]
    assert accepted[1:] == ("DATA", "accepted", ACCEPTED_REPLY, False)
    assert [a[0] for a in log] == list(range(1, len(log) + 1)) and run["deliveries"][0]["attempts"] == len(log)


async def _api(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        assert r.status < 300, await r.text()
        return await r.json()


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_sigkill_before_and_after_sending(tmp_path: Path, db_url: str, smtp_server: SmtpServer) -> None:
    """Three approved emails; the service is SIGKILLed at RCPT TO of the first (before
    `sending`) and in DATA of the second (after it); the third was left `sending` by a
    version without attempt records. Each arrives once; only the second and the third are
    re-sends after an interruption, and the audit log says so once each."""
    port = free_port()
    env = {
        "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
        "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_PORT": str(port),
        "COUNTERSIGN_API_TOKEN_MAY_DECIDE_ON_BEHALF": "true", "COUNTERSIGN_LOG_LEVEL": "WARNING",
        "COUNTERSIGN_JOB_POLL_SECONDS": "0.05", "COUNTERSIGN_JOB_BACKOFF_BASE_SECONDS": "0.05",
        "COUNTERSIGN_JOB_BACKOFF_MAX_SECONDS": "0.2", "COUNTERSIGN_JOB_LEASE_SECONDS": "1",
        **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp_server.settings().items()},
    }
    if not db_url.startswith("sqlite"):
        migrate_database_sync(db_url)  # as `countersign migrate` would (tests/conftest.py)
    service = ServiceProcess(env, port, tmp_path / "service.log")
    recipients = {"rcpt": "rhea@example.com", "data": "dora@example.com", "legacy": "lee@example.com"}

    await service.start(worker_concurrency=0)
    runs: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for role, to in recipients.items():
            accepted = await _api(http, "POST", service.url + "/api/runs",
                                  {"action": email_action(subject=f"For {role}", to=[to])})
            runs[role] = accepted["id"]
            run = await _api(http, "GET", f"{service.url}/api/runs/{accepted['id']}")
            await _api(http, "POST", f"{service.url}/api/approvals/{run['approvals'][0]['id']}/decisions",
                       {"decision": "approve", "reviewer": {"id": "rita"}})
    service.kill()
    await service.wait_dead()

    # The third as the version before attempt records left a delivery it was sending.
    legacy_sending_at = datetime(2026, 12, 1, 23, 59, 0, tzinfo=timezone.utc)
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(t.deliveries.update().where(t.deliveries.c.run_id == runs["legacy"])
                               .values(status="sending", attempts=1, sending_at=legacy_sending_at))
    finally:
        await engine.dispose()

    kills = {"rcpt", "data"}

    def on_rcpt(address: str) -> str | None:
        if address == recipients["rcpt"] and "rcpt" in kills:
            kills.discard("rcpt")
            service.kill()
            return "451 4.3.0 connection lost"
        return None

    def on_data(content: bytes) -> str | None:
        if recipients["data"].encode() in content and "data" in kills:
            kills.discard("data")
            service.kill()
            return "451 4.3.0 connection lost"  # the server drops the copy of a vanished client
        return None

    smtp_server.handler.on_rcpt = on_rcpt
    smtp_server.handler.on_data = on_data
    while kills:  # each process runs until it reaches a kill point
        await service.start(wait_ready=False, worker_concurrency=1)
        await asyncio.wait_for(service.wait_dead(), timeout=60)

    smtp_server.handler.on_rcpt = smtp_server.handler.on_data = None
    await service.start(worker_concurrency=2)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                done = {role: await _api(http, "GET", f"{service.url}/api/runs/{r}") for role, r in runs.items()}
                if all(r["status"] == "completed" for r in done.values()):
                    break
                assert time.monotonic() < deadline, {role: r["status"] for role, r in done.items()}
                await asyncio.sleep(0.2)
    finally:
        service.kill()

    messages = smtp_server.messages()
    assert sorted(str(m["To"]) for m in messages) == sorted(recipients.values())  # one each
    # Killed before `sending`: nothing was transmitted, nothing is suspected.
    assert _log(done["rcpt"]) == [(1, "DATA", "accepted", ACCEPTED_REPLY, False)]
    assert _events(done["rcpt"], RESENT) == []
    # Killed in DATA: that attempt is interrupted, the next one a possible duplicate.
    assert _log(done["data"]) == [(1, "DATA", "interrupted", None, False),
                                  (2, "DATA", "accepted", ACCEPTED_REPLY, True)]
    interrupted = done["data"]["deliveries"][0]["attempt_log"][0]
    assert interrupted["finished_at"] is None
    [resent] = _events(done["data"], RESENT)
    assert resent["data"] == {
        "delivery_id": done["data"]["deliveries"][0]["id"], "message_id": done["data"]["deliveries"][0]["message_id"],
        "attempt": 2, "interrupted_attempt": 1, "interrupted_attempt_started_at": interrupted["started_at"],
        "interrupted_attempt_outcome": "interrupted",
    }
    # Left `sending` without a record: its attempt gets one, numbered as the old count said.
    assert _log(done["legacy"]) == [(1, "DATA", "interrupted", None, False),
                                    (2, "DATA", "accepted", ACCEPTED_REPLY, True)]
    [resent] = _events(done["legacy"], RESENT)
    assert resent["data"]["interrupted_attempt"] == 1
    assert datetime.fromisoformat(resent["data"]["interrupted_attempt_started_at"]) == legacy_sending_at
    for run in done.values():
        [delivery] = run["deliveries"]
        assert delivery["attempts"] == len(delivery["attempt_log"])
        assert delivery["sent_sha256"] == delivery["approved_sha256"]


async def test_on_ready_runs_between_rcpt_and_data_and_its_failure_drops_the_connection(smtp_server: SmtpServer) -> None:
    """The envelope is accepted before `on_ready` (the `sending` commit) runs, the content
    only after it; if it fails, nothing is transmitted and the half-open session is closed."""
    from service.config import Settings
    from service.mail.smtp import SmtpTransport

    seen: list[str] = []

    def on_rcpt(address: str) -> None:
        seen.append(f"RCPT {address}")

    def on_data(content: bytes) -> None:
        seen.append("DATA")

    smtp_server.handler.on_rcpt, smtp_server.handler.on_data = on_rcpt, on_data
    transport = SmtpTransport(Settings(**smtp_server.settings(), smtp_pool_size=1))
    message = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"

    async def failing() -> None:
        seen.append("ready")
        raise RuntimeError("the database is away")

    with pytest.raises(RuntimeError):
        await transport.send(message, "a@example.com", ["b@example.com"], on_ready=failing)
    assert seen == ["RCPT b@example.com", "ready"] and smtp_server.messages() == []

    async def ready() -> None:
        seen.append("ready")

    seen.clear()
    reply = await transport.send(message, "a@example.com", ["b@example.com"], on_ready=ready)
    assert str(reply) == ACCEPTED_REPLY and seen == ["RCPT b@example.com", "ready", "DATA"]
    assert smtp_server.connections == 2  # the first connection was not reused
    await transport.close()
