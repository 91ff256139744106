"""SMTP delivery against the real aiosmtpd server: retries, dead letters, reuse, TLS."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from .conftest import Service, StartService, email_action
from .peers.smtp import SmtpServer

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def _approved_run(service: Service, **action: Any) -> str:
    accepted = await service.create_run({"action": email_action(**action)})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita"}})
    assert status == 200
    return accepted["id"]


@sqlite_only
async def test_transient_reply_is_retried(service: Service, smtp_server: SmtpServer) -> None:
    smtp_server.handler.fail_next = ["451 4.7.1 greylisted, try again", "421 4.3.2 shutting down"]
    run_id = await _approved_run(service)
    run = await service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1
    [job] = [j for j in run["jobs"] if j["kind"] == "send_email"]
    assert job["attempts"] == 3 and job["status"] == "done"


async def test_permanent_reply_dead_letters_then_operator_retry(service: Service, smtp_server: SmtpServer) -> None:
    smtp_server.handler.fail_next = ["550 5.1.1 mailbox unavailable"]
    run_id = await _approved_run(service)
    run = await service.wait_status(run_id, "failed")
    assert "550 5.1.1 mailbox unavailable" in run["failure_reason"]
    assert run["deliveries"][0]["status"] == "failed"
    [job] = [j for j in run["jobs"] if j["kind"] == "send_email"]
    assert job["status"] == "dead" and job["attempts"] == 1
    status, page, _ = await service.request("GET", "/api/jobs?status=dead")
    assert status == 200 and [j["id"] for j in page["items"]] == [job["id"]]
    assert smtp_server.messages() == []

    status, retried, _ = await service.request("POST", f"/api/jobs/{job['id']}/retry")
    assert status == 200 and retried["status"] == "queued"
    run = await service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1
    events = [e["event"] for e in run["timeline"]]
    assert events.index("job.dead") < events.index("run.failed") < events.index("job.retried") < events.index("delivery.sent")


@sqlite_only
async def test_wrong_password_is_a_clear_dead_letter(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, smtp_password="wrong")
    run_id = await _approved_run(service)
    run = await service.wait_status(run_id, "failed")
    assert "535" in run["failure_reason"] and "COUNTERSIGN_SMTP_PASSWORD" in run["failure_reason"]
    assert "wrong" not in run["failure_reason"]  # never the secret itself


@sqlite_only
async def test_untrusted_certificate_is_refused(start_service: StartService, smtp_server: SmtpServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .peers.certs import make_tls_files

    other_ca = make_tls_files(tmp_path / "other").ca_cert
    service = await start_service(smtp_server, smtp_ca_file=str(other_ca), job_max_attempts=2)
    run_id = await _approved_run(service)
    run = await service.wait_status(run_id, "failed")
    assert "CERTIFICATE_VERIFY_FAILED" in run["failure_reason"] or "certificate" in run["failure_reason"].lower()
    assert smtp_server.messages() == []


@sqlite_only
async def test_server_down_then_up(start_service: StartService, smtp_server: SmtpServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    smtp_server.stop()
    service = await start_service(smtp_server, job_max_attempts=50)
    run_id = await _approved_run(service)
    run = await service.wait_for(run_id, lambda r: any(
        j["kind"] == "send_email" and j["attempts"] >= 2 for j in r["jobs"]))
    [job] = [j for j in run["jobs"] if j["kind"] == "send_email"]
    assert run["status"] == "delivering" and job["attempts"] >= 2
    assert "Connect call failed" in job["last_error"]
    assert run["deliveries"][0]["status"] == "queued"  # nothing was ever handed to a server
    smtp_server.start()
    await service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 1


@sqlite_only
async def test_connection_is_reused_for_emails_due_together(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, worker_concurrency=1, smtp_pool_size=1)
    run_ids = [await _approved_run(service, subject=f"n{i}") for i in range(6)]
    for run_id in run_ids:
        await service.wait_status(run_id, "completed")
    assert len(smtp_server.messages()) == 6
    assert smtp_server.connections == 1


@sqlite_only
async def test_header_injection_cannot_reach_the_wire(service: Service, smtp_server: SmtpServer) -> None:
    """Bodies with header-looking lines and markup stay body text; HTML is escaped."""
    body = "Hello\nBcc: attacker@evil.example\n\n<script>alert(1)</script> [click](http://evil.example)"
    run_id = await _approved_run(service, body=body)
    await service.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert message["Bcc"] is None
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html


async def test_a_cancelled_send_never_returns_its_connection_to_the_pool(smtp_server: SmtpServer) -> None:
    """A send interrupted mid-transaction (job timeout, shutdown) must not poison the next one."""
    from service.config import Settings
    from service.mail.smtp import SmtpTransport

    stalled = asyncio.Event()

    loop = asyncio.get_running_loop()

    def slow(content: bytes) -> None:
        loop.call_soon_threadsafe(stalled.set)
        import time
        time.sleep(0.5)  # the server's own thread: the client is left waiting mid-DATA
        return None

    smtp_server.handler.on_data = slow
    transport = SmtpTransport(Settings(**smtp_server.settings(), smtp_pool_size=1))
    message = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    task = asyncio.create_task(transport.send(message, "a@example.com", ["b@example.com"]))
    await asyncio.wait_for(stalled.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    smtp_server.handler.on_data = None
    reply = await transport.send(message, "a@example.com", ["b@example.com"])
    assert reply.code == 250
    await transport.close()


async def _approved_without_workers(start_service: StartService, smtp_server: SmtpServer, **settings: Any) -> tuple[str, Service]:
    """Approved by a service that runs no jobs: the email waits for the next one."""
    api_only = await start_service(smtp_server, worker_concurrency=0, **settings)
    run_id = await _approved_run(api_only)
    run = await api_only.wait_status(run_id, "delivering")
    assert run["deliveries"][0]["content_hash_version"] == 2
    assert api_only.stop is not None
    await api_only.stop()  # the next service on this SQLite file sends it
    return run_id, api_only


@sqlite_only
async def test_a_changed_html_template_is_refused(start_service: StartService, smtp_server: SmtpServer,
                                                  tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from service.mail import message

    run_id, _ = await _approved_without_workers(start_service, smtp_server)
    tampered = tmp_path / "templates"
    shutil.copytree(message.TEMPLATES, tampered)
    html = tampered / "reply.html.j2"
    html.write_text(html.read_text().replace("<body", '<body><a href="https://evil.example/pay">Pay here</a><div'))
    monkeypatch.setattr(message, "TEMPLATES", tampered)
    message._environment.cache_clear()
    try:
        sender = await start_service(smtp_server)
        run = await sender.wait_status(run_id, "failed")
    finally:
        monkeypatch.undo()
        message._environment.cache_clear()
    assert "does not carry the approved content" in run["failure_reason"] and "nothing was sent" in run["failure_reason"]
    assert run["deliveries"][0]["status"] == "failed"
    assert smtp_server.messages() == []


@sqlite_only
async def test_a_changed_from_is_refused(start_service: StartService, smtp_server: SmtpServer) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.store import tables as t

    run_id, api_only = await _approved_without_workers(start_service, smtp_server)
    engine = create_async_engine(api_only.settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(t.deliveries.update().where(t.deliveries.c.run_id == run_id)
                               .values(mail_from="Support Team <support@evil.example>"))
    finally:
        await engine.dispose()
    sender = await start_service(smtp_server)
    run = await sender.wait_status(run_id, "failed")
    assert "does not carry the approved content" in run["failure_reason"]
    assert smtp_server.messages() == []


@sqlite_only
async def test_a_settings_change_after_approval_sends_the_frozen_headers(start_service: StartService,
                                                                        smtp_server: SmtpServer) -> None:
    run_id, _ = await _approved_without_workers(start_service, smtp_server)
    sender = await start_service(smtp_server, mail_from="New Name <new@example.com>", mail_reply_to="other@example.com")
    run = await sender.wait_status(run_id, "completed")
    [message] = smtp_server.messages()
    assert str(message["From"]) == "Support Team <support@example.com>" and str(message["Reply-To"]) == "help@example.com"
    assert run["approvals"][0]["mail_from"] == "Support Team <support@example.com>"
