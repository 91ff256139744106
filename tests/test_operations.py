"""What operators rely on: metrics, readiness, the trigger CLI, and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from .conftest import API_TOKEN, WEBHOOK_SECRET, Service, StartService, email_action
from .peers.smtp import PASSWORD, SmtpServer

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_metrics_are_prometheus_text(service: Service) -> None:
    await service.create_run({"action": email_action()})
    async with service.http.get(service.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert 'countersign_runs_created_total{kind="action"}' in text
    assert 'countersign_http_requests_total{method="POST",route="/api/runs",status="202"}' in text


@sqlite_only
async def test_trigger_cli_with_token_and_with_signature(service: Service) -> None:
    env = {**os.environ, "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_WEBHOOK_SECRET": WEBHOOK_SECRET}
    base = [sys.executable, "-m", "service", "trigger", "--url", service.url, "--to", "ann@example.com",
            "--subject", "Hello", "--body", "Hi Ann"]
    for extra in ([], ["--sign"]):
        code, out = await _run(base + extra, env)
        assert code == 0, out
        assert '"status": "awaiting_approval"' in out
    status, page, _ = await service.request("GET", "/api/runs")
    assert len(page["items"]) == 2
    code, out = await _run(base, {**env, "COUNTERSIGN_API_TOKEN": "wrong-token"})
    assert code == 1 and "unauthorized" in out


async def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """A subprocess that talks to the server this test's event loop is running."""
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_readyz_reports_an_unreachable_database(service: Service, pg_server) -> None:  # type: ignore[no-untyped-def]
    status, body, _ = await service.request("GET", "/readyz", auth="none")
    assert status == 200 and body["checks"]["database"] == "ok"
    name = service.settings.effective_database_url.rsplit("/", 1)[1]
    admin = create_async_engine(f"postgresql+asyncpg://app@127.0.0.1:{pg_server.port}/postgres",
                                isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()
    status, body, _ = await service.request("GET", "/readyz", auth="none")
    assert status == 503 and body["status"] == "unavailable" and "unreachable" in body["checks"]["database"]
    status, body, _ = await service.request("GET", "/healthz", auth="none")
    assert status == 200


@sqlite_only
async def test_secrets_never_appear_in_logs_or_answers(start_service: StartService, smtp_server: SmtpServer,
                                                       caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    service = await start_service(smtp_server, job_max_attempts=1)
    accepted = await service.create_run({"action": email_action()}, auth="webhook")
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
    await service.wait_status(accepted["id"], "completed")
    # Its own database: the first service's worker must not deliver this run with the right password.
    bad = await start_service(smtp_server, smtp_password=PASSWORD + "-wrong", job_max_attempts=1,
                              data_dir=tmp_path / "bad", database_url=f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}")
    other = await bad.create_run({"action": email_action()})
    await bad.decide((await bad.run(other["id"]))["approvals"][0]["id"], {"decision": "approve", "reviewer": {"id": "r"}})
    failed = await bad.wait_status(other["id"], "failed")
    await service.request("POST", "/api/runs", body={}, auth="none")
    answers = [str(await service.run(accepted["id"])), str(failed)]
    for path in ("/api/runs", "/api/jobs?status=dead", "/api/openapi.json", "/metrics"):
        async with service.http.get(service.url + path, headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
            answers.append(await r.text())
    callback_secret = (tmp_path / "data" / "callback-signing-secret").read_text().strip()  # generated
    for secret in (API_TOKEN, WEBHOOK_SECRET, PASSWORD, callback_secret):
        assert secret not in caplog.text
        assert all(secret not in a for a in answers)
    assert "535" in failed["failure_reason"]
