"""The hash-chained audit log: written by every step, verified and exported by the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service.store import tables as t

from .conftest import Service, email_action


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COUNTERSIGN_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=60)


async def _flow(service: Service) -> None:
    for decision, final in (({"decision": "approve", "reviewer": {"id": "rita"}}, "completed"),
                            ({"decision": "reject", "reviewer": {"id": "sam"}, "reason": "wrong tone"}, "rejected")):
        accepted = await service.create_run({"action": email_action()})
        approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
        await service.decide(approval_id, decision)
        await service.wait_status(accepted["id"], final)


async def test_verify_and_export(service: Service, tmp_path: Path) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    result = cli(url, "audit", "verify")
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split(": ")[1].split()[0])
    assert count >= 8

    out = tmp_path / "audit.jsonl"
    assert cli(url, "audit", "export", "--format", "jsonl", "-o", str(out)).returncode == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, count + 1))
    assert all(events[i]["prev_hash"] == events[i - 1]["hash"] for i in range(1, count))
    assert {"run.created", "decision.approve", "decision.reject", "delivery.sent"} <= {e["kind"] for e in events}

    exported = cli(url, "audit", "export", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [int(r["seq"]) for r in rows] == list(range(1, count + 1)) and rows[-1]["hash"] == events[-1]["hash"]


async def test_tampering_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(t.audit_events.update().where(t.audit_events.c.seq == 3)
                               .values(data={"approval_id": "forged"}))
        result = cli(url, "audit", "verify")
        assert result.returncode == 1 and "BROKEN at event 3" in result.stderr and "altered" in result.stderr
    finally:
        await engine.dispose()


async def test_deleting_the_tail_is_detected(service: Service) -> None:
    await _flow(service)
    url = service.settings.effective_database_url
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            last = (await conn.execute(sa.select(sa.func.max(t.audit_events.c.seq)))).scalar_one()
            await conn.execute(t.audit_events.delete().where(t.audit_events.c.seq == last))
    finally:
        await engine.dispose()
    result = cli(url, "audit", "verify")
    assert result.returncode == 1 and "tail removed" in result.stderr
