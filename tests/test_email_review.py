"""The email reviewer channel end to end: a real SMTP server (aiosmtpd, STARTTLS + AUTH)
receives the request, a plain HTTP client plays the mail scanner, and Debian's Chromium
follows the link and decides. Each test checks the customer email that did or did not go
out, and that refused attempts change nothing."""

from __future__ import annotations

import asyncio
import re
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from playwright.async_api import Page, expect

from service.api.deps import SERVICES
from service.store import tables as t

from .conftest import Service, StartService, cas_always_loses, email_action
from .peers.browser import Tab
from .peers.smtp import SmtpServer

RITA, SAM = "rita@example.com", "sam@example.com"
POLICIES: dict[str, Any] = {
    "mail": {"reviewers": [RITA, SAM], "email_reviewers": [RITA, SAM]},
    "coded": {"reviewers": [RITA], "email_reviewers": [RITA], "email_confirm": "code"},
}
LINK = re.compile(r"https?://[^\s\"<>]+/review/[0-9a-f-]{36}/[A-Za-z0-9_-]{43}")
SCANNER = "Mozilla/5.0 (compatible; Microsoft Office Protocol Discovery; SafeLinks scanner)"


def _text(message: EmailMessage) -> str:
    return str(message.get_body(("plain",)).get_content()).replace("\r\n", "\n")


def _to(message: EmailMessage) -> str:
    return str(message["To"])


async def _requests(smtp: SmtpServer, count: int, timeout: float = 15) -> list[EmailMessage]:
    """The review emails at the server (not customer replies), once `count` have arrived."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [m for m in smtp.messages() if "/review/" in m.get_body(("plain",)).get_content()]
        if len(found) >= count:
            return found
        assert asyncio.get_running_loop().time() < deadline, [m["Subject"] for m in smtp.messages()]
        await asyncio.sleep(0.05)


def _link(service: Service, message: EmailMessage) -> str:
    """The personal link in the text part, on the test server's address."""
    [link] = set(LINK.findall(message.get_body(("plain",)).get_content()))
    assert link in message.get_body(("html",)).get_content()
    return service.url + link[link.index("/review/"):]


def _customer_emails(smtp: SmtpServer) -> list[EmailMessage]:
    return [m for m in smtp.messages() if _to(m) == "ann.customer@example.com"]


async def _pending(service: Service, policy: str = "mail", **action: Any) -> tuple[str, str]:
    accepted = await service.create_run({"action": email_action(**action), "policy": policy,
                                         "requested_by": "ops@example.com"})
    run = await service.run(accepted["id"])
    return accepted["id"], run["approvals"][0]["id"]


async def _links(service: Service, approval_id: str) -> list[Any]:
    async def q(conn: Any) -> list[Any]:
        return list((await conn.execute(sa.select(t.review_links).where(
            t.review_links.c.approval_id == approval_id))).all())
    return await service.app[SERVICES].store.read(q)


async def _audit_count(service: Service) -> int:
    """The audit log's length, once every review email sent so far is recorded as sent."""
    async def q(conn: Any) -> tuple[int, int]:
        sent = (await conn.execute(sa.select(sa.func.count()).select_from(t.audit_events).where(
            t.audit_events.c.kind == "review.email_sent"))).scalar_one()
        links = (await conn.execute(sa.select(sa.func.count()).select_from(t.review_links))).scalar_one()
        return int(sent), int(links)

    async def total(conn: Any) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(t.audit_events))).scalar_one())

    for _ in range(200):
        sent, links = await service.app[SERVICES].store.read(q)
        if sent == links:
            return await service.app[SERVICES].store.read(total)
        await asyncio.sleep(0.02)
    raise AssertionError("the review emails were never recorded as sent")


async def _form(http: aiohttp.ClientSession, link: str, **fields: str) -> tuple[int, str]:
    async with http.get(link) as r:
        page = await r.text()
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    data = {"csrf": csrf.group(1) if csrf else "", **fields}
    async with http.post(link, data=data) as r:
        return r.status, await r.text()


@pytest.fixture
async def mail(start_service: StartService, smtp_server: SmtpServer) -> Service:
    return await start_service(smtp_server, policies=POLICIES)


async def test_a_request_email_goes_to_each_email_reviewer_and_a_scanner_decides_nothing(
        mail: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await _pending(mail)
    requests = await _requests(smtp_server, 2)
    assert sorted(_to(m) for m in requests) == [RITA, SAM]
    [rita] = [m for m in requests if _to(m) == RITA]
    assert rita["Subject"] == "Approval requested: Your refund" and rita["Auto-Submitted"] == "auto-generated"
    text = _text(rita)
    # The draft as the customer gets it: recipients, subject, every line of the body.
    assert "To: ann.customer@example.com" in text and "Subject: Your refund" in text
    assert "Dear Ann,\n\nYour refund was issued today.\n\nKind regards,\nSupport" in text
    link = _link(mail, rita)
    before = await _audit_count(mail)
    # Safe Links, previews, scanners: GETs and HEADs with and without a scanner's User-Agent.
    async with aiohttp.ClientSession() as scanner:
        for headers in ({"User-Agent": SCANNER}, {}):
            for method in ("GET", "HEAD"):
                async with scanner.request(method, link, headers=headers, allow_redirects=True) as r:
                    assert r.status == 200
                    assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "same-origin"
                    if method == "GET":
                        page = await r.text()
                        assert "This link is for <strong>rita@example.com</strong>" in page
                        assert 'id="approve"' in page and "Kind regards," in page
    run = await mail.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert all(link.spent_at is None for link in await _links(mail, approval_id))
    after = await _audit_count(mail)
    async def kinds(conn: Any) -> list[Any]:
        return list((await conn.execute(sa.select(t.audit_events.c.kind).order_by(t.audit_events.c.seq))).scalars())
    assert after == before, await mail.app[SERVICES].store.read(kinds)  # a GET writes nothing at all
    assert _customer_emails(smtp_server) == []


async def test_approve_in_chromium_sends_the_customer_email_and_the_link_is_spent(
        mail: Service, smtp_server: SmtpServer, tab: Tab) -> None:
    run_id, approval_id = await _pending(mail)
    [rita] = [m for m in await _requests(smtp_server, 2) if _to(m) == RITA]
    link = _link(mail, rita)

    async def approve(page: Page) -> None:
        await page.goto(link)
        await expect(page.locator("#reviewer")).to_contain_text(RITA)
        await page.get_by_role("button", name="Approve and send").click()
        await expect(page.locator("#message")).to_have_text("Approved: thank you.")
        await expect(page.locator("#outcome")).to_contain_text("approved")

    await tab.run(approve)
    await tab.screenshot("approved")
    run = await mail.wait_status(run_id, "completed")
    assert run["decisions"][0]["channel"] == "email" and run["decisions"][0]["reviewer"]["id"] == RITA
    [sent] = _customer_emails(smtp_server)
    assert sent.get_body(("plain",)).get_content().startswith("Dear Ann,")
    [spent] = [x for x in await _links(mail, approval_id) if x.reviewer == RITA]
    assert spent.spent_at is not None and spent.spent_reason == "decided"
    # The same link again: the outcome, and a form post with it is refused and changes nothing.
    async with aiohttp.ClientSession() as http:
        async with http.get(link) as r:
            page = await r.text()
            assert r.status == 200 and "This approval is <strong>approved</strong>" in page and 'id="approve"' not in page
        status, page = await _form(http, link, action="approve", draft_version="1")
        assert status == 409 and "already used" in page
        # Sam's link, after Rita decided: the outcome, who decided and where.
        [sam] = [m for m in await _requests(smtp_server, 2) if _to(m) == SAM]
        async with http.get(_link(mail, sam)) as r:
            page = await r.text()
            assert r.status == 200 and "rita@example.com approved in email" in page
    assert len(_customer_emails(smtp_server)) == 1


async def test_edit_and_approve_in_chromium_sends_the_edit_and_shows_the_diff(
        mail: Service, smtp_server: SmtpServer, tab: Tab) -> None:
    run_id, _ = await _pending(mail)
    [rita] = [m for m in await _requests(smtp_server, 2) if _to(m) == RITA]
    link = _link(mail, rita)

    async def edit(page: Page) -> None:
        await page.goto(link)
        await page.locator("#edit-subject").fill("Your refund, edited")
        await page.locator("#edit-body").fill("Dear Ann,\n\nYour refund of 30 EUR was issued today.\n\nKind regards,\nRita")
        await page.get_by_role("button", name="Edit and approve").click()
        await expect(page.locator("#message")).to_have_text("Your edit is approved: thank you.")
        await expect(page.locator("#changes")).to_contain_text("- Your refund was issued today.")
        await expect(page.locator("#changes")).to_contain_text("+ Your refund of 30 EUR was issued today.")

    await tab.run(edit)
    await tab.screenshot("edited")
    run = await mail.wait_status(run_id, "completed")
    assert run["approvals"][0]["diff"]["body"] is not None
    [sent] = _customer_emails(smtp_server)
    assert sent["Subject"] == "Your refund, edited"
    assert _text(sent).strip().endswith("Kind regards,\nRita")


async def test_reject_in_chromium_sends_nothing_and_the_reason_goes_back(
        mail: Service, smtp_server: SmtpServer, tab: Tab) -> None:
    run_id, _ = await _pending(mail)
    [sam] = [m for m in await _requests(smtp_server, 2) if _to(m) == SAM]
    link = _link(mail, sam)

    async def reject(page: Page) -> None:
        await page.goto(link)
        await page.locator("#reject-reason").fill("Wrong customer")
        await page.get_by_role("button", name="Reject").click()
        await expect(page.locator("#message")).to_contain_text("Rejected")

    await tab.run(reject)
    await tab.screenshot("rejected")
    run = await mail.wait_status(run_id, "rejected")
    assert run["failure_reason"] == "Wrong customer"
    await asyncio.sleep(0.2)
    assert _customer_emails(smtp_server) == []


async def test_tampered_other_approval_forged_and_cross_site_posts_are_refused(
        mail: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await _pending(mail)
    other_run, other_id = await _pending(mail, subject="Another")
    requests = await _requests(smtp_server, 4)
    [rita] = [m for m in requests if _to(m) == RITA and "Your refund" in str(m["Subject"])]
    link = _link(mail, rita)
    token = link.rsplit("/", 1)[1]
    before = await _audit_count(mail)
    async with aiohttp.ClientSession() as http:
        tampered = link[:-1] + ("A" if link[-1] != "A" else "B")
        for bad in (tampered, link.replace(approval_id, other_id), link + "x", f"{mail.url}/review/{approval_id}/x"):
            async with http.get(bad) as r:
                assert r.status == 404, bad
                page = await r.text()
                assert "This review link is not valid" in page and "Your refund" not in page
            async with http.post(bad, data={"action": "approve"}) as r:
                assert r.status == 404
        # No anti-forgery field, a wrong one, and a cross-site form with the right one.
        async with http.post(link, data={"action": "approve", "draft_version": "1"}) as r:
            assert r.status == 403 and "anti-forgery" in await r.text()
        async with http.post(link, data={"action": "approve", "csrf": "0" * 64}) as r:
            assert r.status == 403
        async with http.get(link) as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        # The field alone is no guard (it comes with the link): each header check on its own refuses.
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}):
            async with http.post(link, data={"action": "approve", "csrf": csrf.group(1), "draft_version": "1"},
                                 headers=headers) as r:
                assert r.status == 403, headers
        # A bad decision is a page naming the field, and nothing changes.
        status, page = await _form(http, link, action="reject", reason="  ", draft_version="1")
        assert status == 422 and "reason" in page
        status, page = await _form(http, link, action="launch")
        assert status == 422
    for run in (run_id, other_run):
        assert (await mail.run(run))["decisions"] == []
    assert await _audit_count(mail) == before
    assert all(x.spent_at is None for x in await _links(mail, approval_id))
    assert token not in (await mail.run(run_id)).__repr__()  # the token is never in the run's record
    assert _customer_emails(smtp_server) == []


async def test_an_expired_link_is_refused_with_a_clear_page(start_service: StartService,
                                                            smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, policies={
        "short": {"reviewers": [RITA], "email_reviewers": [RITA], "email_link_ttl": "1s"}})
    run_id, approval_id = await _pending(service, "short")
    [rita] = await _requests(smtp_server, 1)
    link = _link(service, rita)
    await asyncio.sleep(1.1)  # the link's own, real time to live
    async with aiohttp.ClientSession() as http:
        async with http.get(link) as r:
            assert r.status == 410 and "expired" in await r.text()
        status, page = await _form(http, link, action="approve", draft_version="1")
        assert status == 410
    assert (await service.run(run_id))["decisions"] == [] and _customer_emails(smtp_server) == []


async def test_a_code_sent_to_the_reviewer_confirms_the_decision(mail: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await _pending(mail, "coded")
    [rita] = await _requests(smtp_server, 1)
    link = _link(mail, rita)
    async with aiohttp.ClientSession() as http:
        status, page = await _form(http, link, action="approve", draft_version="1")
        assert status == 202 and "We sent a code to rita@example.com" in page
        [code_mail] = [m for m in smtp_server.messages() if "confirmation code" in str(m["Subject"])]
        assert not re.search(r"\d{6}", str(code_mail["Subject"]))  # not on lock screens
        code = re.search(r"\d{6}", _text(code_mail)).group(0)  # type: ignore[union-attr]
        assert (await mail.run(run_id))["decisions"] == []
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        status, page = await _form(http, link, action="approve", draft_version="1", code=wrong)
        assert status == 403 and "not right" in page
        assert (await mail.run(run_id))["decisions"] == []
        status, page = await _form(http, link, action="approve", draft_version="1", code=code)
        assert status == 200 and "Approved" in page
    await mail.wait_status(run_id, "completed")
    assert len(_customer_emails(smtp_server)) == 1
    stored = [x for x in await _links(mail, approval_id)]
    assert all(code not in repr(row) for row in stored)  # the code was never stored in the clear


@pytest.mark.parametrize("hostile", [
    "<script>alert(1)</script>", "[click here](https://evil.example)", "&lt;b&gt; &amp; \"quotes\"",
    "moc.\u202eevil\u202c.example",
])
async def test_customer_and_model_strings_are_escaped_in_the_email_and_the_page(
        mail: Service, smtp_server: SmtpServer, hostile: str) -> None:
    await _pending(mail, subject=f"Refund {hostile}", body=f"Dear Ann,\n{hostile}\nRegards")
    [rita] = [m for m in await _requests(smtp_server, 2) if _to(m) == RITA]
    html_part = rita.get_body(("html",)).get_content()
    async with aiohttp.ClientSession() as http:
        async with http.get(_link(mail, rita)) as r:
            page = await r.text()
    for rendered in (html_part, page):
        assert "<script>alert" not in rendered
        assert "\u202e" not in rendered and ("[U+202E]" in rendered or "\u202e" not in hostile)
        if "&lt;b&gt;" in hostile:
            assert "&amp;lt;b&amp;gt;" in rendered  # shown as typed, not turned into markup
        if "[click here]" in hostile:
            assert 'href="https://evil.example"' not in rendered
    assert "\u202e" not in rita.get_body(("plain",)).get_content()


async def test_a_decision_that_keeps_losing_the_compare_and_set_is_a_page_saying_try_again(
        mail: Service, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id, approval_id = await _pending(mail)
    [rita] = [m for m in await _requests(smtp_server, 2) if _to(m) == RITA]
    link = _link(mail, rita)
    async with aiohttp.ClientSession() as http:
        cas_always_loses(monkeypatch)
        async with http.get(link) as r:
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        async with http.post(link, data={"csrf": csrf.group(1), "action": "approve", "draft_version": "1"}) as r:
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
            assert r.content_type == "text/html" and "try again" in await r.text()
        assert (await mail.run(run_id))["decisions"] == []
        assert all(x.spent_at is None for x in await _links(mail, approval_id))  # the link still works
        monkeypatch.undo()
        status, page = await _form(http, link, action="approve", draft_version="1")
        assert status == 200 and "Approved" in page
    await mail.wait_status(run_id, "completed")


async def test_a_link_used_on_a_text_since_edited_opens_for_the_new_text(start_service: StartService,
                                                                        smtp_server: SmtpServer) -> None:
    """Under a multi-vote policy an edit is a new text that everyone is asked again: Sam's
    link, spent by his approval of the draft, decides again on Rita's edit."""
    service = await start_service(smtp_server, policies={
        "both": {"reviewers": [RITA, SAM], "mode": "all", "email_reviewers": [RITA, SAM]}})
    run_id, _ = await _pending(service, "both")
    requests = await _requests(smtp_server, 2)
    rita, sam = (_link(service, next(m for m in requests if _to(m) == who)) for who in (RITA, SAM))
    async with aiohttp.ClientSession() as http:
        assert (await _form(http, sam, action="approve", draft_version="1"))[0] == 200
        status, page = await _form(http, sam, action="approve", draft_version="1")
        assert status == 409  # the same text again: his vote is recorded
        status, _ = await _form(http, rita, action="edit", draft_version="1", subject="Your refund, edited",
                                body="Dear Ann,\n\nYour refund of 30 EUR was issued today.")
        assert status == 200
        assert (await service.run(run_id))["status"] == "awaiting_approval"  # Sam's vote was for the old text
        async with http.get(sam) as r:
            page = await r.text()
        assert r.status == 200 and 'id="approve"' in page and "30 EUR" in page
        assert (await _form(http, sam, action="approve", draft_version="2"))[0] == 200
    await service.wait_status(run_id, "completed")
    [sent] = _customer_emails(smtp_server)
    assert sent["Subject"] == "Your refund, edited"


async def test_wrong_codes_lock_the_link_and_a_right_code_works_once(mail: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await _pending(mail, "coded")
    [rita] = await _requests(smtp_server, 1)
    link = _link(mail, rita)
    async with aiohttp.ClientSession() as http:
        assert (await _form(http, link, action="approve", draft_version="1"))[0] == 202
        [code_mail] = [m for m in smtp_server.messages() if "confirmation code" in str(m["Subject"])]
        code = re.search(r"\d{6}", _text(code_mail)).group(0)  # type: ignore[union-attr]
        # A right code for a decision that is refused (a stale text version) is used up all the same.
        status, _ = await _form(http, link, action="approve", draft_version="7", code=code)
        assert status == 409
        status, page = await _form(http, link, action="approve", draft_version="1", code=code)
        assert status == 403 and "we sent a new one" in page  # it worked once: a new one is sent
        codes = [re.search(r"\d{6}", _text(m)).group(0)  # type: ignore[union-attr]
                 for m in smtp_server.messages() if "confirmation code" in str(m["Subject"])]
        assert len(codes) == 2 and codes[1] != code
        wrong = f"{(int(codes[1]) + 1) % 1_000_000:06d}"
        pages = [await _form(http, link, action="approve", draft_version="1", code=wrong) for _ in range(4)]
        # The right code above was one try of five: three more are "not right", the fourth locks.
        assert [st for st, _ in pages] == [403] * 4
        assert ["not right" in p for _, p in pages] == [True, True, True, False] and "locked" in pages[3][1]
        status, page = await _form(http, link, action="approve", draft_version="1", code=codes[1])
        assert status == 410 and "locked" in page
    assert (await mail.run(run_id))["decisions"] == []
    [row] = await _links(mail, approval_id)
    assert row.spent_reason == "locked"
