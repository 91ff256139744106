"""A decision is taken once, even when many arrive at once at several service processes."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import StartService, email_action
from .peers.smtp import SmtpServer


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL: one serve per SQLite file
async def test_concurrent_decisions_across_two_services(start_service: StartService, smtp_server: SmtpServer) -> None:
    # Two app instances on one database: two processes' worth of pools, writers and workers.
    first = await start_service(smtp_server)
    second = await start_service(smtp_server)
    accepted = await first.create_run({"action": email_action()})
    approval_id = (await first.run(accepted["id"]))["approvals"][0]["id"]

    def body(i: int) -> dict[str, object]:
        if i % 3 == 0:
            return {"decision": "reject", "reviewer": {"id": f"r{i}"}, "reason": "no"}
        if i % 3 == 1:
            return {"decision": "edit", "reviewer": {"id": f"r{i}"}, "subject": f"Edited by r{i}"}
        return {"decision": "approve", "reviewer": {"id": f"r{i}"}}

    results = await asyncio.gather(*((first if i % 2 else second).decide(approval_id, body(i)) for i in range(30)))
    winners = [r for r in results if r[0] == 200]
    assert len(winners) == 1
    assert all(status == 409 and problem["type"].endswith("already_decided") for status, problem in results
               if status != 200)
    run = await first.wait_for(accepted["id"], lambda r: r["status"] in ("completed", "rejected"))
    assert len(run["decisions"]) == 1
    assert len(smtp_server.messages()) == (0 if run["status"] == "rejected" else 1)
    refused = [e for e in run["timeline"] if e["event"] == "decision.refused"]
    assert len(refused) == 29


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL: one serve per SQLite file
async def test_runs_created_concurrently_are_all_stored_once(start_service: StartService, smtp_server: SmtpServer) -> None:
    first = await start_service(smtp_server)
    second = await start_service(smtp_server)
    created = await asyncio.gather(*((first if i % 2 else second).create_run(
        {"action": email_action(subject=f"s{i % 25}")}, headers={"Idempotency-Key": f"k{i % 25}"}) for i in range(50)))
    ids = {c["id"] for c in created}
    assert len(ids) == 25
    status, page, _ = await first.request("GET", "/api/runs?limit=200")
    assert {r["id"] for r in page["items"]} == ids
