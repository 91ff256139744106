"""The console's pages in Debian's Chromium (Playwright) against the real running service:
login, the runs list with a filter, a run's timeline, the dead-letter retry, the audit page,
service levels and logout. Screenshots go to tests/artifacts/test_console_browser/."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from service.scopes import Scope

from .conftest import StartService, email_action
from .console_client import LOOPBACK_URL
from .peers.browser import Tab
from .peers.smtp import SmtpServer

HOSTILE = "<script>alert(1)</script> [click](https://evil.example) &amp; \u202eevil"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_console_in_chromium(start_service: StartService, smtp_server: SmtpServer, tab: Tab) -> None:
    service = await start_service(smtp_server, public_url=LOOPBACK_URL)
    key = await service.make_key("ops-ann", Scope.RUNS_READ, Scope.RUNS_CANCEL, Scope.JOBS_RETRY, Scope.AUDIT_READ)
    # An edited and sent email, a dead letter (the SMTP server refuses it once), an agent's draft.
    edited = await service.create_run({"action": email_action(subject=f"Refund {HOSTILE}"),
                                       "customer": {"email": "ann@example.com", "name": f"Ann {HOSTILE}"}})
    run = await service.run(edited["id"])
    status, _ = await service.decide(run["approvals"][0]["id"], {
        "decision": "edit", "subject": "Your refund", "body": "Dear Ann,\n\nYour refund is on its way.\n\nSupport",
        "reviewer": {"id": "rita@example.com", "name": "Rita"}})
    assert status == 200
    await service.wait_status(edited["id"], "completed")
    smtp_server.handler.fail_next = ["550 5.1.1 mailbox unavailable"]
    dead = await service.create_run({"action": email_action(subject="Shipping delay")})
    status, _ = await service.decide((await service.run(dead["id"]))["approvals"][0]["id"],
                                     {"decision": "approve", "reviewer": {"id": "sam@example.com"}})
    assert status == 200
    failed = await service.wait_status(dead["id"], "failed")
    [dead_job] = [j for j in failed["jobs"] if j["kind"] == "send_email"]
    agent = await service.create_run({"request": "Can I still return the jacket I bought three weeks ago?",
                                      "customer": {"email": "bo@example.com", "name": "Bo"}})
    await service.wait_status(agent["id"], "awaiting_approval")
    base = service.url

    async def log_in(page: Page) -> None:
        await page.goto(f"{base}/console")
        await expect(page).to_have_url(re.compile(r"/console/login\?next="))
        await page.get_by_label("Operator key").fill("csk_wrong")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator("#login-error")).to_contain_text("not a valid operator key")
        await page.get_by_label("Operator key").fill(key)
        await page.get_by_role("button", name="Log in").click()
        await expect(page.locator("#runs")).to_be_visible()
        await expect(page.locator("tr.run-row")).to_have_count(3)

    await tab.run(lambda page: page.goto(f"{base}/console/login"))
    await tab.screenshot("login")
    await tab.run(log_in)
    await tab.screenshot("runs")

    async def filter_runs(page: Page) -> None:
        await page.locator("#f-q").fill("refund")
        await page.locator("#apply").click()
        await expect(page.locator("tr.run-row")).to_have_count(1)
        subject = page.locator("tr.run-row .subject")
        await expect(subject).to_contain_text("<script>alert(1)</script>")  # shown as text, not run
        await expect(subject.locator(".ctl")).to_have_text("[U+202E]")
        assert await page.evaluate("() => typeof window.alerted") == "undefined"

    await tab.run(filter_runs)
    await tab.screenshot("runs-filtered")

    async def timeline(page: Page) -> list[str]:
        await page.locator("tr.run-row a").first.click()
        await expect(page.locator("#run-status")).to_have_text("completed")
        await expect(page.locator("#diff .added", has_text="on its way")).to_have_count(1)
        await expect(page.locator("li[data-kind='delivery.sent'] table.attempts")).to_contain_text("250")
        return await page.locator("#timeline > li strong").all_inner_texts()

    titles = await tab.run(timeline)
    await tab.screenshot("run-timeline")
    assert titles[0] == "Run triggered" and "Approval requested" in titles and "Edited and approved" in titles
    assert titles.index("Edited and approved") < titles.index("Email sent") < titles.index("Run completed")

    async def agent_draft(page: Page) -> None:
        await page.goto(f"{base}/console/runs/{agent['id']}")
        await expect(page.locator("details.sources li.source").first).to_be_visible()
        await expect(page.locator("#cancel")).to_be_visible()

    await tab.run(agent_draft)
    await tab.screenshot("agent-draft")

    async def retry(page: Page) -> None:
        await page.locator("#nav-jobs").click()
        row = page.locator(f"tr.job-row[data-job='{dead_job['id']}']")
        await expect(row.locator(".reason")).to_contain_text("550 5.1.1 mailbox unavailable")
        await row.locator("button.retry").click()
        await expect(page.locator("#notice")).to_contain_text("queued again")

    await tab.run(retry)
    await tab.screenshot("dead-letter-retried")
    await service.wait_status(dead["id"], "completed")

    async def audit(page: Page) -> None:
        await page.locator("#nav-audit").click()
        await expect(page.locator("#verify")).to_contain_text("Chain intact")
        await expect(page.locator("tr.event-row[data-kind='job.retried']")).to_contain_text("key:ops-ann")
        await expect(page.locator("#export")).to_have_attribute("href", "/console/audit/export")

    await tab.run(audit)
    await tab.screenshot("audit")

    async def levels(page: Page) -> None:
        await page.locator("#nav-levels").click()
        await expect(page.locator("#per-policy")).to_contain_text("default")
        await expect(page.locator("svg.chart").first).to_be_visible()

    await tab.run(levels)
    await tab.screenshot("service-levels")

    async def log_out(page: Page) -> None:
        await page.locator("#logout").click()
        await expect(page).to_have_url(re.compile(r"/console/login$"))
        await page.goto(f"{base}/console/jobs")
        await expect(page).to_have_url(re.compile(r"/console/login\?next="))

    await tab.run(log_out)
    assert len(tab.screenshots) == 8 and all(p.is_file() for p in tab.screenshots)
