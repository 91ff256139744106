"""Upgrades with work in flight: a database written by main 3f47b68 (tests/fixtures/upgrade,
made by make_upgrade_db.py from that commit) is migrated by this code, and every run in it
completes: the waiting approval, the queued send_email (approved under the old content-hash
rule), the paused agent runs; and the audit chain verifies (old events by the old rule)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.store.migrate import head_revision

from .conftest import AUDIT_KEY, Service, StartService
from .peers.postgres import PostgresServer
from .peers.smtp import SmtpServer

FIXTURES = Path(__file__).parent / "fixtures" / "upgrade"
MANIFEST = json.loads((FIXTURES / "main-3f47b68.json").read_text())
PG_MANIFEST = json.loads((FIXTURES / "main-3f47b68.pg.json").read_text())


def credentials(manifest: dict[str, Any], db_url: str) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The one place this test says how it authenticates: (service settings, operator headers,
    decision headers). The fixture's service was given this API token, which named the
    reviewer in its decisions; since scoped keys the operator token cannot decide, so the
    upgrading operator makes a decide:on-behalf key for that integration, as the README says."""
    token = manifest["api_token"]
    made = cli(db_url, "keys", "create", "--name", "ops-integration", "--scope", "decide:on-behalf")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    return {"api_token": token}, {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {key}"}


def restore(db_url: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if db_url.startswith("sqlite"):
        shutil.copyfile(FIXTURES / "main-3f47b68.sqlite", db_url.removeprefix("sqlite+aiosqlite:///"))
        return MANIFEST
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = db_url.rsplit("/", 1)[1]
    subprocess.run([str(server.bindir / "psql"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "app", "-d", name,
                    "-v", "ON_ERROR_STOP=1", "-q", "-f", str(FIXTURES / "main-3f47b68.pg.sql")],
                   check=True, capture_output=True)
    return PG_MANIFEST


def cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env.update(COUNTERSIGN_DATABASE_URL=db_url, COUNTERSIGN_AUDIT_KEY=AUDIT_KEY)
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120)


async def test_work_in_flight_survives_the_upgrade(start_service: StartService, smtp_server: SmtpServer,
                                                   db_url: str, request: pytest.FixtureRequest) -> None:
    manifest = restore(db_url, request)
    runs = manifest["runs"]
    migrated = cli(db_url, "migrate")
    assert migrated.returncode == 0 and f"migrated to {head_revision()}" in migrated.stdout, migrated.stderr

    settings, headers, deciding = credentials(manifest, db_url)
    service: Service = await start_service(smtp_server, policies={"default": {"reviewers": manifest["reviewers"]}},
                                           **settings)

    async def get(run_id: str) -> dict[str, Any]:
        status, run, _ = await service.request("GET", f"/api/runs/{run_id}", auth="none", headers=headers)
        assert status == 200, run
        return run

    async def wait(run_id: str, status: str) -> dict[str, Any]:
        import asyncio
        import time
        deadline = time.monotonic() + 30
        while (run := await get(run_id))["status"] != status:
            assert time.monotonic() < deadline, json.dumps(run, indent=1)[:3000]
            await asyncio.sleep(0.05)
        return run

    async def approve(run_id: str, reviewer: str) -> None:
        run = await wait(run_id, "awaiting_approval")
        approval = run["approvals"][-1]
        assert approval["status"] == "pending" and approval["mail_from"] is None  # made before the upgrade
        status, body, _ = await service.request(
            "POST", f"/api/approvals/{approval['id']}/decisions", auth="none", headers=deciding,
            body={"decision": "approve", "reviewer": {"id": reviewer}})
        assert status == 200, body

    # Queued before the upgrade, under the old hash rule: delivered as approved.
    queued = await wait(runs["queued"], "completed")
    [delivery] = queued["deliveries"]
    assert delivery["status"] == "sent" and delivery["content_hash_version"] == 1
    assert delivery["sent_sha256"] == delivery["approved_sha256"]
    agent_approved = await wait(runs["agent-approved"], "completed")
    assert agent_approved["deliveries"][0]["content_hash_version"] == 1 and agent_approved["summary"]

    # Waiting before the upgrade, decided after it: the new rule, From/Reply-To frozen.
    await approve(runs["waiting"], "rita@example.com")
    await approve(runs["agent"], "sam@example.com")
    for role in ("waiting", "agent"):
        run = await wait(runs[role], "completed")
        [delivery] = run["deliveries"]
        assert delivery["content_hash_version"] == 2 and delivery["mail_from"] == service.settings.mail_from
        assert delivery["sent_sha256"] == delivery["approved_sha256"]

    messages = smtp_server.messages()
    subjects = sorted(str(m["Subject"]) for m in messages)
    assert len(messages) == 4 and "Your credit note" in subjects and "Your exchange" in subjects
    credit = next(m for m in messages if str(m["Subject"]) == "Your credit note")
    assert "credit note of 25 EUR" in credit.get_body(("plain",)).get_content()  # the edit, as approved
    for role in ("sent", "rejected"):
        assert (await get(runs[role]))["status"] in ("completed", "rejected")

    result = cli(db_url, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "(24 legacy," in result.stdout and "0 keyed" not in result.stdout
