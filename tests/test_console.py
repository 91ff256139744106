"""The operator console over real HTTP: login and sessions, CSRF, scopes, escaping, the
runs filters, the audited actions, and the time-to-decision histogram. The pages in a real
browser are tests/test_console_browser.py."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from service.api.deps import SERVICES
from service.console.escaping import shown
from service.console.filters import FilterError, parse_filter
from service.console.levels import Decided, Waiting, compute, percentile
from service.console.pages import cookie_secure
from service.console.tokens import Signer
from service.console.views_auth import safe_next
from service.scopes import Scope
from service.store import tables as t

from .conftest import API_TOKEN, Service, StartService, email_action
from .console_client import LOOPBACK_URL, ConsoleClient
from .peers.smtp import SmtpServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
HOSTILE = "<script>alert(1)</script> [click me](https://evil.example) &amp; \u202egnp.exe"


@pytest.fixture
async def console_service(start_service: StartService, smtp_server: SmtpServer) -> Service:
    return await start_service(smtp_server, public_url=LOOPBACK_URL)


@pytest.fixture
async def client(console_service: Service) -> AsyncIterator[ConsoleClient]:
    c = ConsoleClient(console_service)
    yield c
    await c.close()


async def audit_events(service: Service, kind: str) -> list[dict[str, Any]]:
    status, page, _ = await service.request("GET", "/api/audit?limit=5000")
    assert status == 200
    return [e for e in page["items"] if e["kind"] == kind]


async def new_run(service: Service, **action: Any) -> dict[str, Any]:
    created = await service.create_run({"action": email_action(**action)})
    return await service.run(created["id"])


# -- pure parts -------------------------------------------------------------------------------

def test_shown_escapes_and_isolates_bidi() -> None:
    out = str(shown(HOSTILE))
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "&amp;amp;" in out  # an entity in the text stays text
    assert "\u202e" not in out and "[U+202E]" in out
    assert out.startswith("<bdi>") and out.endswith("</bdi>")


def test_signed_cookie_and_csrf_tokens() -> None:
    signer = Signer("s" * 32)
    cookie = signer.cookie("abc", "k")
    assert signer.read_cookie(cookie) is not None
    assert signer.read_cookie(cookie[:-1] + ("0" if cookie[-1] != "0" else "1")) is None
    assert signer.read_cookie("abc.k.deadbeef") is None
    assert Signer("t" * 32).read_cookie(cookie) is None  # another secret
    assert signer.csrf_ok("abc", signer.csrf("abc")) and not signer.csrf_ok("abd", signer.csrf("abc"))
    assert not signer.csrf_ok("abc", None) and not signer.login_csrf_ok(None, signer.login_csrf("n"))


def test_cookie_is_secure_except_plain_http_on_loopback() -> None:
    assert not cookie_secure("http://127.0.0.1:3978") and not cookie_secure("http://localhost:3978")
    assert not cookie_secure("http://[::1]:3978")
    assert cookie_secure("https://countersign.example.com") and cookie_secure("http://countersign.test")
    assert cookie_secure("http://0.0.0.0:3978")


def test_after_login_only_console_paths() -> None:
    assert safe_next("/console/runs/1?x=1") == "/console/runs/1?x=1"
    for bad in ("https://evil.example", "//evil.example", "/console//evil.example", "/\\evil", "/consolex\\", None, ""):
        assert safe_next(bad) in ("/console", bad) and (bad is None or "evil" not in safe_next(bad))


def test_filter_errors_name_the_field() -> None:
    for query, field in (({"status": "nope"}, "status"), ({"since": "yesterday"}, "since"),
                         ({"since": "2026-05-02", "until": "2026-05-01"}, "until"), ({"q": "x" * 201}, "q")):
        with pytest.raises(FilterError) as caught:
            parse_filter(query)
        assert caught.value.field == field


def test_levels_percentiles_buckets_and_weeks() -> None:
    from datetime import datetime, timedelta, timezone
    now = datetime(2026, 5, 6, 12, tzinfo=timezone.utc)  # a Wednesday
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50) == 5 and percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == 9
    decided = [Decided("refunds", "approved", now - timedelta(hours=h + 2), now - timedelta(hours=1),
                       (("rita", now - timedelta(hours=1)),)) for h in range(10)]
    decided.append(Decided("refunds", "expired", now - timedelta(days=3), now - timedelta(days=1)))
    decided.append(Decided("vip", "rejected", now - timedelta(days=8, hours=1), now - timedelta(days=8)))
    levels = compute(decided, [Waiting("refunds", now - timedelta(minutes=5)), Waiting("vip", now - timedelta(days=5))],
                     now)
    [refunds, vip] = levels.per_policy
    assert (refunds.name, refunds.count, refunds.p50, refunds.p90) == ("refunds", 10, 5 * 3600, 9 * 3600)
    assert vip.count == 1 and [r.name for r in levels.per_reviewer] == ["rita"]
    assert dict(levels.waiting) == {"< 1 h": 1, "1-4 h": 0, "4-24 h": 0, "1-3 d": 0, "> 3 d": 1}
    assert [(w.expired, w.rejected) for w in levels.weeks[-2:]] == [(0, 1), (1, 0)]


# -- never open without a login ---------------------------------------------------------------

@SQLITE_ONLY
async def test_unauthenticated_requests_are_refused(console_service: Service, client: ConsoleClient) -> None:
    run = await new_run(console_service)
    for path in ("/console", f"/console/runs/{run['id']}", "/console/jobs", "/console/audit",
                 "/console/audit/export", "/console/levels"):
        status, _, headers = await client.get(path)
        assert status == 303 and headers["Location"].startswith("/console/login?next=%2Fconsole"), path
    for path in (f"/console/runs/{run['id']}/cancel", "/console/jobs/x/retry", "/console/logout"):
        status, text, _ = await client.post(path, {"csrf": "anything"})
        assert status == 401 and "Not logged in" in text, path
    async with client.http.get(console_service.url + "/console/static/console.css") as r:
        assert r.status == 200 and r.content_type == "text/css"  # the stylesheet needs no login
    # A made-up cookie is no session either.
    client.http.cookie_jar.update_cookies({"countersign_console": "a.k.b"})
    assert (await client.get("/console"))[0] == 303
    assert (await console_service.run(run["id"]))["status"] == "awaiting_approval"


# -- login, the cookie, logout ----------------------------------------------------------------

async def test_login_cookie_session_row_and_logout(console_service: Service, client: ConsoleClient) -> None:
    key = await console_service.make_key("ops-ann", Scope.RUNS_READ)
    _, _, headers = await client.login(key)
    [set_cookie] = [c for c in headers.getall("Set-Cookie") if c.startswith("countersign_console=")]
    attributes = {a.strip().lower() for a in set_cookie.split(";")}
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain http on loopback: the development rule
    value = set_cookie.split(";")[0].split("=", 1)[1]
    session_id = value.split(".")[0]
    assert (await client.get("/console"))[0] == 200

    async def rows(conn: Any) -> list[Any]:
        return (await conn.execute(sa.select(t.console_sessions))).all()

    [row] = await console_service.app[SERVICES].store.read(rows)
    assert row.id_sha256 == hashlib.sha256(session_id.encode()).hexdigest() and row.actor == "key:ops-ann"
    assert session_id not in repr(tuple(row)) and row.scopes == ["runs:read"] and row.ended_at is None

    # Logout needs the form's CSRF token.
    assert (await client.post("/console/logout", {}))[0] == 403
    assert (await client.get("/console"))[0] == 200
    status, _, headers = await client.action("/console/logout")
    assert status == 303 and headers["Location"] == "/console/login"
    # The old cookie, sent again, opens nothing: the session ended in the database.
    client.http.cookie_jar.update_cookies({"countersign_console": value})
    assert (await client.get("/console"))[0] == 303
    [login] = await audit_events(console_service, "console.login")
    [logout] = await audit_events(console_service, "console.logout")
    assert login["actor"] == logout["actor"] == "key:ops-ann"
    assert login["data"]["via"] == logout["data"]["via"] == "console"


@SQLITE_ONLY
async def test_cookie_is_secure_and_host_prefixed_outside_development(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, public_url="https://countersign.example.com")
    async with service.http.get(service.url + "/console/login") as r:
        [login_cookie] = r.headers.getall("Set-Cookie")
        page = await r.text()
    assert login_cookie.startswith("__Host-countersign_console_login=") and "Secure" in login_cookie
    nonce = login_cookie.split(";")[0].split("=", 1)[1]
    token = page.split('name="csrf" value="')[1].split('"')[0]
    async with service.http.post(service.url + "/console/login", allow_redirects=False,
                                 headers={"Cookie": f"__Host-countersign_console_login={nonce}"},
                                 data={"csrf": token, "key": API_TOKEN}) as r:
        assert r.status == 303
        [session_cookie] = [c for c in r.headers.getall("Set-Cookie") if c.startswith("__Host-countersign_console=")]
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= {a.strip().lower() for a in session_cookie.split(";")}
    assert "domain" not in session_cookie.lower()


@SQLITE_ONLY
async def test_failed_logins_are_refused_and_audited_boundedly(console_service: Service, client: ConsoleClient) -> None:
    for attempt in range(5):
        status, text, _ = await client.login(f"csk_not-a-key-{attempt}", expect=401)
        assert "not a valid operator key" in text
    await client.login("", expect=401)
    reviewer = await console_service.make_key("rita", Scope.DECIDE, reviewer="rita@example.com")
    status, text, _ = await client.login(reviewer, expect=401)
    assert "runs:read" in text
    revoked = await console_service.make_key("old", Scope.RUNS_READ)
    await console_service.app[SERVICES].keys.revoke("old", by="test")
    status, text, _ = await client.login(revoked, expect=401)
    assert "revoked" in text
    # Without the login form's CSRF token: refused before the key is even looked at.
    assert (await client.post("/console/login", {"key": API_TOKEN}))[0] == 403
    failures = await audit_events(console_service, "console.login_failed")
    # One event for all the unknown keys of this minute, one per known key: bounded by the keys.
    assert sorted((e["actor"], e["data"]["reason"]) for e in failures) == [
        ("anonymous", "unknown_credential"), ("key:old", "revoked"), ("key:rita", "missing_scope")]
    assert all(e["data"]["via"] == "console" for e in failures)
    assert await audit_events(console_service, "console.login") == []
    assert (await client.get("/console"))[0] == 303


async def test_failed_logins_left_out_of_the_audit_log_are_summarised_at_shutdown(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, public_url=LOOPBACK_URL)
    client = ConsoleClient(service)
    try:
        for attempt in range(6):
            await client.login(f"csk_not-a-key-{attempt}", expect=401)
    finally:
        await client.close()
    assert len(await audit_events(service, "console.login_failed")) == 1  # the other five are counted
    assert service.stop is not None
    await service.stop()
    again = await start_service(smtp_server, public_url=LOOPBACK_URL)
    [summary] = await audit_events(again, "audit.suppressed")
    assert summary["data"]["summarises"] == "console.login_failed" and summary["data"]["suppressed"] == 5
    assert summary["actor"] == "anonymous" and summary["data"]["of"]["reason"] == "unknown_credential"


@SQLITE_ONLY
async def test_a_revoked_key_ends_its_sessions(console_service: Service, client: ConsoleClient) -> None:
    key = await console_service.make_key("ops-bob", Scope.RUNS_READ)
    await client.login(key)
    assert (await client.get("/console"))[0] == 200
    await console_service.app[SERVICES].keys.revoke("ops-bob", by="test")
    assert (await client.get("/console"))[0] == 303
    [ended] = await audit_events(console_service, "console.session_ended")
    assert ended["actor"] == "key:ops-bob" and ended["data"] == {"via": "console", "reason": "key_revoked"}


# -- actions: CSRF, scopes, audit -------------------------------------------------------------

async def test_cancel_needs_csrf_and_scope_and_is_audited(console_service: Service, client: ConsoleClient) -> None:
    run = await new_run(console_service)
    path = f"/console/runs/{run['id']}/cancel"
    reader = ConsoleClient(console_service)
    try:
        await reader.login(await console_service.make_key("ops-read", Scope.RUNS_READ))
        status, text, _ = await reader.action(path)
        assert status == 403 and "runs:cancel" in text
    finally:
        await reader.close()
    await client.login(await console_service.make_key("ops-cancel", Scope.RUNS_READ, Scope.RUNS_CANCEL))
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 64}):
        status, text, _ = await client.post(path, {**data, "reason": "no"})
        assert status == 403 and "Nothing was changed" in text
    assert (await console_service.run(run["id"]))["status"] == "awaiting_approval"
    status, _, headers = await client.action(path, reason="duplicate request")
    assert status == 303 and headers["Location"] == f"/console/runs/{run['id']}?done=cancelled"
    after = await console_service.run(run["id"])
    assert after["status"] == "cancelled" and after["failure_reason"] == "duplicate request"
    [event] = [e for e in after["timeline"] if e["event"] == "run.cancelled"]
    assert event["actor"] == "key:ops-cancel" and event["data"]["via"] == "console"
    status, text, _ = await client.action(path)  # again: a clear 409 page, nothing changed
    assert status == 409 and "only drafting or awaiting_approval" in text


@SQLITE_ONLY
async def test_dead_letter_retry_is_audited(console_service: Service, client: ConsoleClient,
                                            smtp_server: SmtpServer) -> None:
    smtp_server.handler.fail_next = ["550 5.1.1 mailbox unavailable"]
    run = await new_run(console_service)
    status, _ = await console_service.decide(run["approvals"][0]["id"], {"decision": "approve",
                                                                         "reviewer": {"id": "rita"}})
    assert status == 200
    failed = await console_service.wait_status(run["id"], "failed")
    [job] = [j for j in failed["jobs"] if j["kind"] == "send_email"]
    await client.login(await console_service.make_key("ops-retry", Scope.RUNS_READ, Scope.JOBS_RETRY))
    status, text, _ = await client.get("/console/jobs")
    assert status == 200 and job["id"] in text and "550 5.1.1 mailbox unavailable" in text
    assert (await client.post(f"/console/jobs/{job['id']}/retry", {}))[0] == 403
    reader = ConsoleClient(console_service)  # a valid form, without jobs:retry
    try:
        await reader.login(await console_service.make_key("ops-read", Scope.RUNS_READ))
        status, text, _ = await reader.action(f"/console/jobs/{job['id']}/retry")
        assert status == 403 and "jobs:retry" in text
    finally:
        await reader.close()
    assert (await console_service.run(run["id"]))["status"] == "failed"
    status, _, headers = await client.action(f"/console/jobs/{job['id']}/retry")
    assert status == 303 and headers["Location"] == f"/console/jobs?retried={job['id']}"
    done = await console_service.wait_status(run["id"], "completed")
    [event] = [e for e in done["timeline"] if e["event"] == "job.retried"]
    assert event["actor"] == "key:ops-retry" and event["data"]["via"] == "console"
    status, text, _ = await client.action("/console/jobs/not-a-job/retry")
    assert status == 404


@SQLITE_ONLY
async def test_audit_page_and_export_need_audit_read(console_service: Service, client: ConsoleClient) -> None:
    await client.login(await console_service.make_key("ops-read", Scope.RUNS_READ))
    for path in ("/console/audit", "/console/audit/export"):
        status, text, _ = await client.get(path)
        assert status == 403 and "audit:read" in text
    auditor = ConsoleClient(console_service)
    try:
        await auditor.login(await console_service.make_key("auditor", Scope.RUNS_READ, Scope.AUDIT_READ))
        status, text, _ = await auditor.get("/console/audit")
        assert status == 200 and "Chain intact" in text
        status, text, headers = await auditor.get("/console/audit/export")
        assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
        import json
        lines = [json.loads(line) for line in text.splitlines()]
        assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
        assert lines[-1]["kind"] == "console.audit_exported" and lines[-1]["actor"] == "key:auditor"
    finally:
        await auditor.close()


# -- escaping, filters, pages -----------------------------------------------------------------

@SQLITE_ONLY
async def test_every_customer_and_model_string_is_escaped(console_service: Service, client: ConsoleClient) -> None:
    created = await console_service.create_run({
        "request": f"Please help {HOSTILE}", "customer": {"email": "ann@example.com", "name": f"Ann {HOSTILE}"},
        # An identity may not hold the bidi override (refused at intake: test_hostile_input); the markup it may.
        "requested_by": f"ops {HOSTILE.replace(chr(0x202E), '')}"})
    await console_service.wait_status(created["id"], "awaiting_approval")
    edited = await new_run(console_service, subject=f"Re: {HOSTILE}", body=f"Hello\n{HOSTILE}\n<img src=x onerror=alert(2)>")
    status, _ = await console_service.decide(edited["approvals"][0]["id"], {
        "decision": "edit", "subject": "Re: fixed", "body": f"Hello\n<b>{HOSTILE}</b>", "reviewer": {"id": "rita"}})
    assert status == 200
    await client.login(API_TOKEN)
    pages = [await client.get(p) for p in ("/console", f"/console/runs/{created['id']}",
                                           f"/console/runs/{edited['id']}", "/console/audit", "/console/levels")]
    for status, text, headers in pages:
        assert status == 200
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>&lt;" not in text
        assert "\u202e" not in text
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0][1] and "[U+202E]" in pages[0][1]
    assert "[click me](https://evil.example)" in pages[1][1] and "&amp;amp;" in pages[1][1]
    assert 'href="https://evil.example"' not in "".join(p[1] for p in pages)
    assert 'class="diff"' in pages[2][1] and "&lt;b&gt;" in pages[2][1]


async def test_runs_filters_and_pages(console_service: Service, client: ConsoleClient) -> None:
    refund = await new_run(console_service, subject="Your refund of order 1234")
    await new_run(console_service, subject="Shipping update")
    await console_service.create_run({"action": email_action(subject="Password reset"), "requested_by": "zed@ops.test"})
    await console_service.request("POST", f"/api/runs/{refund['id']}/cancel", body={})
    await client.login(API_TOKEN)

    async def shown_runs(query: str) -> list[str]:
        status, text, _ = await client.get(f"/console?{query}")
        assert status == 200, text[:300]
        return [chunk.split('"')[0] for chunk in text.split('data-run="')[1:]]

    assert len(await shown_runs("")) == 3
    assert await shown_runs("q=REFUND") == [refund["id"]]
    assert len(await shown_runs("q=zed%40ops")) == 1
    assert await shown_runs("status=cancelled") == [refund["id"]]
    assert len(await shown_runs("status=awaiting_approval&policy=default")) == 2
    assert await shown_runs("policy=nonexistent") == []
    assert await shown_runs("q=100%25") == []  # % is a character, not a wildcard
    assert await shown_runs("until=2000-01-01") == [] and len(await shown_runs("since=2000-01-01")) == 3
    first = await shown_runs("limit=2")
    status, text, _ = await client.get("/console?limit=2")
    next_link = text.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
    second = await shown_runs(next_link.removeprefix("/console?"))
    assert len(first) == 2 and len(second) == 1 and not set(first) & set(second)
    for query, field in (("status=nope", "status"), ("since=soon", "since"), ("limit=0", "limit"),
                         ("cursor=zzz", "cursor")):
        status, text, _ = await client.get(f"/console?{query}")
        assert status == 422 and (field in text or "cursor" in text), query


async def test_time_to_decision_histogram_per_policy(console_service: Service) -> None:
    labels = {"policy": "default", "outcome": "approved"}
    before = REGISTRY.get_sample_value("countersign_time_to_decision_seconds_count", labels) or 0
    run = await new_run(console_service)
    status, _ = await console_service.decide(run["approvals"][0]["id"], {"decision": "approve",
                                                                         "reviewer": {"id": "rita"}})
    assert status == 200
    await console_service.wait_status(run["id"], "completed")
    assert REGISTRY.get_sample_value("countersign_time_to_decision_seconds_count", labels) == before + 1
    status, text, _ = await console_service.request("GET", "/metrics", auth="none")
    lines = [line for line in text.splitlines() if line.startswith("countersign_time_to_decision_seconds")]
    assert lines and not any("rita" in line or "reviewer" in line for line in lines)


@SQLITE_ONLY
async def test_the_captured_mailbox_needs_a_login_and_exists_only_when_configured(
        start_service: StartService, smtp_server: SmtpServer, client: ConsoleClient, console_service: Service,
        tmp_path: Path) -> None:
    await client.login(await console_service.make_key("ops", Scope.RUNS_READ))
    assert (await client.get("/console/mailbox"))[0] == 404  # no capture mailbox: no page
    demo = await start_service(smtp_server, public_url=LOOPBACK_URL, capture_mailbox_dir=tmp_path / "box",
                               data_dir=tmp_path / "demo", database_url=f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}")
    anonymous = ConsoleClient(demo)
    try:
        status, _, headers = await anonymous.get("/console/mailbox")
        assert status in (302, 303) and headers["Location"].startswith("/console/login")
    finally:
        await anonymous.close()
