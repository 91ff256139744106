"""Kill the service (SIGKILL) while emails are being delivered, start it again, and check that
every approved email arrives exactly once and every run completes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import API_TOKEN, email_action, free_port, migrate_database_sync
from .peers.smtp import SmtpServer
from .processes import ServiceProcess

RUNS = 20


async def _api(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        assert r.status < 300, await r.text()
        return await r.json()


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_sigkill_during_delivery_sends_each_email_exactly_once(
    tmp_path: Path, db_url: str, smtp_server: SmtpServer
) -> None:
    port = free_port()
    env = {
        "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
        "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_PORT": str(port),
        # These tests are about crashes, not credentials: the operator token decides for them.
        "COUNTERSIGN_API_TOKEN_MAY_DECIDE_ON_BEHALF": "true", "COUNTERSIGN_LOG_LEVEL": "WARNING",
        "COUNTERSIGN_JOB_POLL_SECONDS": "0.05", "COUNTERSIGN_JOB_BACKOFF_BASE_SECONDS": "0.05",
        "COUNTERSIGN_JOB_BACKOFF_MAX_SECONDS": "0.2",
        # A crashed worker's lease must run out before another attempt can take the job.
        "COUNTERSIGN_JOB_LEASE_SECONDS": "1",
        **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp_server.settings().items()},
    }
    if not db_url.startswith("sqlite"):
        migrate_database_sync(db_url)  # as `countersign migrate` would (tests/conftest.py)
    service = ServiceProcess(env, port, tmp_path / "service.log")

    # Phase 1: runs are approved, then the process dies before any job runs.
    await service.start(worker_concurrency=0)
    async with aiohttp.ClientSession() as http:
        run_ids = []
        for i in range(RUNS):
            accepted = await _api(http, "POST", service.url + "/api/runs",
                                  {"action": email_action(subject=f"Reply {i}", to=[f"customer{i}@example.com"])})
            run_ids.append(accepted["id"])
            run = await _api(http, "GET", f"{service.url}/api/runs/{accepted['id']}")
            await _api(http, "POST", f"{service.url}/api/approvals/{run['approvals'][0]['id']}/decisions",
                       {"decision": "approve", "reviewer": {"id": "rita"}})
    service.kill()
    await service.wait_dead()

    # Phases 2 and 3: killed in the middle of an SMTP transaction (DATA received, not yet
    # acknowledged: the server drops that copy, as an MTA does when the client vanishes).
    for kill_at in (4, 11):
        received = 0

        def on_data(content: bytes) -> str | None:
            nonlocal received
            if len(smtp_server.raw_messages()) + 1 == kill_at:  # noqa: B023 (called in this iteration only)
                service.kill()
                return "451 4.3.0 connection lost"
            received += 1
            return None

        smtp_server.handler.on_data = on_data
        # One delivery at a time: with several in flight, a copy the server accepted in the
        # instant before the kill could be re-sent (the RFC 1047 window; see README).
        await service.start(wait_ready=False, worker_concurrency=1)
        await asyncio.wait_for(service.wait_dead(), timeout=60)
        assert len(smtp_server.raw_messages()) == kill_at - 1

    # Phase 4: a clean run finishes the rest.
    smtp_server.handler.on_data = None
    await service.start(worker_concurrency=4)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                statuses = [(await _api(http, "GET", f"{service.url}/api/runs/{r}"))["status"] for r in run_ids]
                if all(s == "completed" for s in statuses):
                    break
                assert time.monotonic() < deadline, statuses
                await asyncio.sleep(0.2)
            runs = [await _api(http, "GET", f"{service.url}/api/runs/{r}") for r in run_ids]
    finally:
        service.kill()

    messages = smtp_server.messages()
    message_ids = [m["Message-ID"] for m in messages]
    assert len(message_ids) == RUNS and len(set(message_ids)) == RUNS
    assert sorted(m["Subject"] for m in messages) == sorted(f"Reply {i}" for i in range(RUNS))
    assert {r["deliveries"][0]["message_id"] for r in runs} == set(message_ids)
    # The two messages in flight at the kills were sent again (possibly the same one twice).
    assert sum(r["deliveries"][0]["attempts"] for r in runs) == RUNS + 2
    # Both kills came after `sending` was committed: each left an interrupted attempt, and
    # the re-send after it is a possible duplicate, audited as such, once per kill.
    resent = [e for r in runs for e in r["timeline"] if e["event"] == "delivery.resent_after_interruption"]
    assert len(resent) == 2
    for r in runs:
        [delivery] = r["deliveries"]
        log = delivery["attempt_log"]
        assert [a["number"] for a in log] == list(range(1, delivery["attempts"] + 1))
        assert [a["outcome"] for a in log] == ["interrupted"] * (len(log) - 1) + ["accepted"]
        assert [a["possible_duplicate"] for a in log] == [False] + [True] * (len(log) - 1)
        assert len([e for e in r["timeline"] if e["event"] == "delivery.resent_after_interruption"]) == len(log) - 1
        assert delivery["sent_sha256"] == delivery["approved_sha256"]
