"""Attacks on the email reviewer channel and the operator console (issue 13), each against the
running app. Every test here states what the product should do; each was
written while the attack worked (branch i13-attack), and passes since it was fixed."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.email_review import links
from service.scopes import Scope
from service.store import tables as t

from .conftest import Service, StartService
from .console_client import LOOPBACK_URL, ConsoleClient
from .peers.smtp import SmtpServer
from .test_email_review import POLICIES, RITA, _link, _pending, _requests

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
async def mail(start_service: StartService, smtp_server: SmtpServer) -> Service:
    return await start_service(smtp_server, policies=POLICIES)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _csrf(http: aiohttp.ClientSession, link: str) -> str:
    async with http.get(link) as r:
        found = CSRF.search(await r.text())
    assert found is not None
    return found.group(1)


async def _post(http: aiohttp.ClientSession, link: str, data: Any, **kw: Any) -> tuple[int, str]:
    async with http.post(link, data=data, **kw) as r:
        return r.status, await r.text()


def _codes(smtp: SmtpServer) -> list[str]:
    """The one-time codes at the server, oldest first."""
    out = []
    for m in smtp.messages():
        found = re.search(r"Your code to confirm a decision in Countersign: (\d{6})",
                          str(m.get_body(("plain",)).get_content()))
        if found:
            out.append(found.group(1))
    return out


def _wrong(*right: str) -> str:
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in right)


async def _coded_link(mail: Service, smtp: SmtpServer) -> tuple[str, str]:
    """(run id, Rita's link) of an approval under `email_confirm = "code"`."""
    run_id, _ = await _pending(mail, "coded")
    [rita] = await _requests(smtp, 1)
    return run_id, _link(mail, rita)


async def _rita_link(mail: Service, smtp: SmtpServer) -> tuple[str, str]:
    """(run id, Rita's link) of an approval of the two-reviewer "mail" policy."""
    run_id, _ = await _pending(mail)
    [rita] = [m for m in await _requests(smtp, 2) if str(m["To"]) == RITA]
    return run_id, _link(mail, rita)


async def _code_sent(mail: Service, smtp: SmtpServer, http: aiohttp.ClientSession) -> tuple[str, str, dict[str, str]]:
    """(run id, link, the approve form) once Rita was sent her first code."""
    run_id, link = await _coded_link(mail, smtp)
    form = {"csrf": await _csrf(http, link), "action": "approve", "draft_version": "1"}
    assert (await _post(http, link, form))[0] == 202
    return run_id, link, form


async def _decisions(mail: Service, run_id: str) -> list[Any]:
    return list((await mail.run(run_id))["decisions"])


async def _audit_kinds(mail: Service, kind: str) -> int:
    async def q(conn: Any) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(t.audit_events).where(
            t.audit_events.c.kind == kind))).scalar_one())
    return await mail.app[SERVICES].store.read(q)


# -- the one-time code ------------------------------------------------------------------------

@SQLITE_ONLY
async def test_wrong_codes_lock_the_link_instead_of_minting_a_new_code(
        mail: Service, smtp_server: SmtpServer, http: aiohttp.ClientSession) -> None:
    run_id, link, form = await _code_sent(mail, smtp_server, http)
    # Whoever holds a forwarded link guesses; after the 5th wrong guess the link should be dead.
    for _ in range(links.CODE_ATTEMPTS):
        status, _page = await _post(http, link, {**form, "code": _wrong(*_codes(smtp_server))})
        assert status in (403, 202)
    # Today the 5th wrong guess minted a second code and reset the count: 5 more guesses, forever.
    fresh = _codes(smtp_server)[-1]
    status, _page = await _post(http, link, {**form, "code": fresh})
    assert status != 200 and await _decisions(mail, run_id) == [], (
        f"{links.CODE_ATTEMPTS} wrong codes, then a new code decided: {len(_codes(smtp_server))} codes were minted")


@SQLITE_ONLY
async def test_parallel_wrong_codes_are_counted_before_they_are_checked(
        mail: Service, smtp_server: SmtpServer, http: aiohttp.ClientSession) -> None:
    run_id, link, form = await _code_sent(mail, smtp_server, http)
    [code] = _codes(smtp_server)
    guesses = [f"{n:06d}" for n in range(40) if f"{n:06d}" != code][:30]
    answers = await asyncio.gather(*(_post(http, link, {**form, "code": g}) for g in guesses))
    checked = sum("not right" in page for _status, page in answers)
    # A wrong code answered "not right" was compared with the code: at most CODE_ATTEMPTS - 1 may be.
    assert checked <= links.CODE_ATTEMPTS - 1, f"{checked} parallel guesses were checked against one code"


@SQLITE_ONLY
async def test_asking_for_codes_is_throttled(mail: Service, smtp_server: SmtpServer,
                                              http: aiohttp.ClientSession) -> None:
    _run_id, link = await _coded_link(mail, smtp_server)
    csrf = await _csrf(http, link)
    for _ in range(10):
        await _post(http, link, {"csrf": csrf, "action": "approve", "draft_version": "1"})
    sent, audited = len(_codes(smtp_server)), await _audit_kinds(mail, "review.code_sent")
    # A link holder can mail-bomb the reviewer, grow the audit log, and void each code Rita got.
    assert sent <= links.CODE_ATTEMPTS and audited <= links.CODE_ATTEMPTS, (sent, audited)


# -- odd input: no request may produce a 500 --------------------------------------------------

@SQLITE_ONLY
@pytest.mark.parametrize("fields", [
    pytest.param({"csrf": "\u00e9" * 64, "action": "approve"}, id="non-ascii-csrf"),
    pytest.param({"action": "approve", "draft_version": "\u00b2"}, id="superscript-draft-version"),
    pytest.param({"action": "approve", "draft_version": "9" * 5000}, id="5000-digit-draft-version"),
])
async def test_odd_review_form_values_get_a_4xx(mail: Service, smtp_server: SmtpServer,
                                                http: aiohttp.ClientSession, fields: dict[str, str]) -> None:
    run_id, link = await _rita_link(mail, smtp_server)
    status, _page = await _post(http, link, {"csrf": await _csrf(http, link), **fields})
    assert 400 <= status < 500, status
    assert await _decisions(mail, run_id) == []


@SQLITE_ONLY
async def test_a_non_ascii_code_gets_a_4xx(mail: Service, smtp_server: SmtpServer,
                                           http: aiohttp.ClientSession) -> None:
    run_id, link, form = await _code_sent(mail, smtp_server, http)
    status, _page = await _post(http, link, {**form, "code": "\u0661\u0662\u0663\u0664\u0665\u0666"})
    assert 400 <= status < 500, status
    assert await _decisions(mail, run_id) == []


@SQLITE_ONLY
@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
async def test_a_review_form_in_an_unknown_charset_gets_a_4xx(mail: Service, smtp_server: SmtpServer,
                                                              http: aiohttp.ClientSession, multipart: bool) -> None:
    run_id, link = await _rita_link(mail, smtp_server)
    csrf = await _csrf(http, link)
    if multipart:
        body = (b'--XX\r\nContent-Disposition: form-data; name="csrf"\r\nContent-Type: text/plain; charset=x-bogus'
                b"\r\n\r\n" + csrf.encode() + b"\r\n--XX--\r\n")
        content_type = "multipart/form-data; boundary=XX"
    else:
        body, content_type = f"csrf={csrf}&action=approve".encode(), "application/x-www-form-urlencoded; charset=x-bogus"
    status, _page = await _post(http, link, body, headers={"Content-Type": content_type})
    assert 400 <= status < 500, status
    assert await _decisions(mail, run_id) == []


# -- the token in the logs --------------------------------------------------------------------

@SQLITE_ONLY
async def test_the_token_stays_out_of_the_request_log_for_other_methods(
        mail: Service, smtp_server: SmtpServer, http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    _run_id, link = await _rita_link(mail, smtp_server)
    token = link.rsplit("/", 1)[1]
    caplog.set_level(logging.INFO)
    for method in ("OPTIONS", "PUT"):
        async with http.request(method, link) as r:
            assert r.status == 405
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("service") and token in r.getMessage()]
    assert logged == [], logged


# -- what the reviewer sees -------------------------------------------------------------------

@SQLITE_ONLY
async def test_bidi_marks_are_made_visible_in_the_email_and_the_page(
        mail: Service, smtp_server: SmtpServer, http: aiohttp.ClientSession) -> None:
    await _pending(mail, subject="Refund of 30\u200f EUR", body="Dear Ann,\nWe refund 30\u200f,00 EUR.\n")
    [rita] = [m for m in await _requests(smtp_server, 2) if str(m["To"]) == RITA]
    async with http.get(_link(mail, rita)) as r:
        page = await r.text()
    parts: list[str] = [page, str(rita.get_body(("html",)).get_content()),
                        str(rita.get_body(("plain",)).get_content())]
    assert all("\u200f" not in part for part in parts)


# -- the console ------------------------------------------------------------------------------

@asynccontextmanager
async def _logged_in(start_service: StartService, smtp: SmtpServer) -> AsyncIterator[tuple[Service, ConsoleClient]]:
    """A console service and a browser-less client, not yet logged in."""
    service = await start_service(smtp, public_url=LOOPBACK_URL)
    client = ConsoleClient(service)
    try:
        yield service, client
    finally:
        await client.close()


@SQLITE_ONLY
@pytest.mark.parametrize("body, content_type", [
    pytest.param(b"key=\xff", "application/x-www-form-urlencoded", id="not-utf-8"),
    pytest.param(b"key=x", "application/x-www-form-urlencoded; charset=x-bogus", id="unknown-charset"),
])
async def test_console_forms_it_cannot_decode_get_a_4xx(start_service: StartService, smtp_server: SmtpServer,
                                                        body: bytes, content_type: str) -> None:
    async with _logged_in(start_service, smtp_server) as (console, client):
        async with client.http.post(console.url + "/console/login", data=body,
                                    headers={"Content-Type": content_type}) as r:
            assert 400 <= r.status < 500, r.status
        await client.login(await console.make_key("ops", Scope.RUNS_READ))
        async with client.http.post(console.url + "/console/logout", data=body,
                                    headers={"Content-Type": content_type}) as r:
            assert 400 <= r.status < 500, r.status


@SQLITE_ONLY
async def test_the_retry_notice_names_only_a_job_that_was_retried(start_service: StartService,
                                                                  smtp_server: SmtpServer) -> None:
    async with _logged_in(start_service, smtp_server) as (console, client):
        await client.login(await console.make_key("ops", Scope.RUNS_READ))
        status, page, _ = await client.get(
            "/console/jobs?retried=x.+Your+session+ended:+log+in+again+at+countersign-login.example.com+-")
    assert status == 200 and "countersign-login.example.com" not in page



@SQLITE_ONLY
@pytest.mark.parametrize("path", ["/console?limit=%C2%B2", "/console/audit?before=%C2%B2"])
async def test_a_superscript_page_number_gets_a_4xx(start_service: StartService, smtp_server: SmtpServer,
                                                    path: str) -> None:
    async with _logged_in(start_service, smtp_server) as (console, client):
        await client.login(await console.make_key("ops", Scope.RUNS_READ, Scope.AUDIT_READ))
        status, _page, _ = await client.get(path)
    assert status == 422, status
