"""Bad input gets a 4xx with an RFC 9457 problem body that names the field, never a 500, and
changes nothing.

The tables below are the contract: each case says what is sent, the status it gets and the
field that `errors` must name. Pure validation runs on SQLite only; the cases that once
reached the database (NUL bytes, NaN, over-long values, odd ids and cursors) run on
PostgreSQL too, because that is where they used to turn into 500s.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.signing import HEADER, sign_v2
from service.store import tables as t

from .conftest import API_TOKEN, WEBHOOK_SECRET, Service, StartService, email_action
from .peers.smtp import SmtpServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
REQUEST_JOB_KINDS = ("agent.step", "send_email", "callback")


@pytest.fixture
async def service(start_service: StartService, smtp_server: SmtpServer) -> Service:
    """Workers off: accepted agent requests would otherwise start drafting in the background,
    and "nothing was stored" compares row counts."""
    return await start_service(smtp_server, worker_concurrency=0)


# ---- helpers --------------------------------------------------------------------------

def assert_problem(status: int, payload: Any, headers: Any, expected: int, field: str | None = None,
                   mentions: str | None = None) -> None:
    """A problem+json body with every RFC 9457 member; `errors` names `field` when given."""
    assert status == expected, payload
    assert headers["Content-Type"].startswith("application/problem+json"), headers["Content-Type"]
    assert isinstance(payload, dict), payload
    assert payload["status"] == status
    assert payload["type"].startswith("https://countersign.dev/problems/")
    assert payload["title"] and payload["detail"]
    assert payload["request_id"] == headers["X-Request-Id"]
    for error in payload.get("errors") or []:
        assert set(error) == {"field", "message"} and error["field"] and error["message"], error
    if field is not None:
        fields = [e["field"] for e in payload.get("errors") or []]
        assert field in fields, f"expected {field!r} in errors, got {fields}: {payload}"
    if mentions is not None:
        text = payload["detail"] + " ".join(e["message"] for e in payload.get("errors") or [])
        assert mentions in text, payload


async def stored(service: Service, *, rows_only: bool = False) -> dict[str, Any]:
    """What the store holds that a request could have written: row counts, the jobs and
    audit events about runs, and every approval's state. `rows_only` leaves out what
    workers change on their own (jobs, their audit events), for tests that leave runs
    for the workers."""

    async def count(conn: Any, table: sa.Table, *where: Any) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(table).where(*where))).scalar_one()

    async def q(conn: Any) -> dict[str, Any]:
        out = {table.name: await count(conn, table)
               for table in (t.runs, t.approvals, t.decisions, t.deliveries, t.idempotency_keys)}
        if not rows_only:
            out["jobs"] = await count(conn, t.jobs, t.jobs.c.kind.in_(REQUEST_JOB_KINDS))
            out["run_events"] = await count(conn, t.audit_events, t.audit_events.c.run_id.is_not(None))
            out["approval_states"] = sorted(tuple(r) for r in await conn.execute(
                sa.select(t.approvals.c.id, t.approvals.c.status, t.approvals.c.version)))
        return out

    return await service.app[SERVICES].store.read(q)


async def assert_no_runs(service: Service) -> None:
    status, page, _ = await service.request("GET", "/api/runs")
    assert status == 200 and page["items"] == [], page


async def pending_approval(service: Service) -> tuple[str, str]:
    accepted = await service.create_run({"action": email_action()})
    run = await service.run(accepted["id"])
    return accepted["id"], run["approvals"][0]["id"]


async def assert_still_pending(service: Service, run_id: str) -> None:
    run = await service.run(run_id)
    assert run["status"] == "awaiting_approval"
    assert [a["status"] for a in run["approvals"]] == ["pending"]
    assert run["decisions"] == [] and run["deliveries"] == []
    assert not [j for j in run["jobs"] if j["kind"] == "send_email"]
    assert not [e for e in run["timeline"] if e["event"].startswith("decision.")]


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def action(**overrides: Any) -> dict[str, Any]:
    return {"action": email_action(**overrides)}


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


INJECTED_ADDRESS = "a@example.com\r\nBcc: x@evil.com"
INJECTED_SUBJECT = "Hi\r\nBcc: x@evil.com"
CUSTOMER = {"email": "ann.customer@example.com", "name": "Ann"}


# ---- POST /api/runs: the body ----------------------------------------------------------

# (id, body: a dict to send as JSON or raw bytes, status, field named in `errors`, text the answer mentions)
CREATE_CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    # Not JSON, or not a JSON object.
    ("malformed_json", b'{"action": {"type": ', 400, None, None),
    ("trailing_garbage", b'{"action": {}} x', 400, None, None),
    ("empty_body", b"", 400, None, None),
    ("not_utf8", b'{"request": "\xff\xfe"}', 400, None, None),
    ("array", b"[]", 422, "$", None),  # "$": the body as a whole
    ("string", b'"send an email"', 422, "$", None),
    ("number", b"42", 422, "$", None),
    ("null", b"null", 422, "$", None),
    # Wrong types.
    ("to_is_a_string", action(to="ann@example.com"), 422, "action.to", None),
    ("to_item_is_a_number", action(to=[42]), 422, "action.to[0]", None),
    ("subject_is_a_number", action(subject=7), 422, "action.subject", None),
    ("body_is_a_list", action(body=["Dear Ann"]), 422, "action.body", None),
    ("action_is_a_string", {"action": "send_email"}, 422, "action", None),
    ("metadata_is_a_string", {**action(), "metadata": "T-42"}, 422, "metadata", None),
    ("requested_by_is_a_number", {**action(), "requested_by": 12}, 422, "requested_by", None),
    ("request_is_an_object", {"request": {"text": "hi"}, "customer": CUSTOMER}, 422, "request", None),
    ("customer_is_a_string", {"request": "Refund?", "customer": "ann@example.com"}, 422, "customer", None),
    # Missing fields.
    ("action_without_to", {"action": without(email_action(), "to")}, 422, "action.to", "Field required"),
    ("action_without_subject", {"action": without(email_action(), "subject")}, 422, "action.subject", None),
    ("action_without_body", {"action": without(email_action(), "body")}, 422, "action.body", None),
    ("action_without_type", {"action": without(email_action(), "type")}, 422, "action", "type"),
    ("customer_without_email", {"request": "Refund?", "customer": {"name": "Ann"}}, 422, "customer.email", None),
    # Exactly one of request and action.
    ("neither_request_nor_action", {"requested_by": "ops"}, 422, "action", "exactly one"),
    ("empty_object", {}, 422, "request", "exactly one"),
    ("both_request_and_action", {**action(), "request": "Refund?", "customer": CUSTOMER}, 422, "action",
     "exactly one"),
    ("request_without_customer", {"request": "Please answer Ann about her refund"}, 422, "customer", None),
    ("blank_request", {"request": "   ", "customer": CUSTOMER}, 422, "request", "blank"),
    ("request_with_nul", {"request": "Refund\x00?", "customer": CUSTOMER}, 422, "request", "control"),
    ("request_too_long", {"request": "x" * 20_001, "customer": CUSTOMER}, 422, "request", None),
    # Unknown action type: named, with the tag.
    ("unknown_action_type", action(type="send_fax"), 422, "action", "send_fax"),
    ("null_action_type", action(type=None), 422, "action", None),
    # Addresses.
    ("invalid_to", action(to=["not-an-address"]), 422, "action.to[0]", None),
    ("invalid_second_to", action(to=["ann@example.com", "bob@"]), 422, "action.to[1]", None),
    ("invalid_cc", action(cc=["@example.com"]), 422, "action.cc[0]", None),
    ("two_addresses_in_one", action(to=["a@example.com, b@example.com"]), 422, "action.to[0]", None),
    ("display_name_address", action(to=["Ann <ann@example.com>"]), 422, "action.to[0]", "bare address"),
    ("invalid_customer_email", {"request": "Refund?", "customer": {"email": "ann"}}, 422, "customer.email", None),
    ("no_recipients", action(to=[]), 422, "action.to", None),
    ("too_many_recipients", action(to=[f"r{i}@example.com" for i in range(51)]), 422, "action.to", None),
    ("too_many_cc", action(cc=[f"c{i}@example.com" for i in range(51)]), 422, "action.cc", None),
    # Header injection.
    ("crlf_in_to", action(to=[INJECTED_ADDRESS]), 422, "action.to[0]", None),
    ("crlf_in_cc", action(cc=[INJECTED_ADDRESS]), 422, "action.cc[0]", None),
    ("lf_in_to", action(to=["a@example.com\nBcc: x@evil.com"]), 422, "action.to[0]", None),
    ("crlf_in_customer_email", {"request": "Refund?", "customer": {"email": INJECTED_ADDRESS}}, 422,
     "customer.email", None),
    ("crlf_in_subject", action(subject=INJECTED_SUBJECT), 422, "action.subject", "single line"),
    ("lf_in_subject", action(subject="Hi\nBcc: x@evil.com"), 422, "action.subject", "single line"),
    ("cr_in_subject", action(subject="Hi\rthere"), 422, "action.subject", "single line"),
    ("crlf_in_customer_name", {"request": "Refund?", "customer": {"email": "a@example.com", "name": "A\r\nB"}},
     422, "customer.name", None),
    ("crlf_in_requested_by", {**action(), "requested_by": "ops\r\nX-Evil: 1"}, 422, "requested_by", None),
    ("crlf_in_in_reply_to", action(in_reply_to="<a@example.com>\r\nBcc: x@evil.com"), 422, "action.in_reply_to",
     None),
    # Control characters and blanks.
    ("nul_in_body", action(body="Dear Ann,\x00 hello"), 422, "action.body", "control characters"),
    ("escape_in_body", action(body="Dear Ann, \x1b[31mred"), 422, "action.body", "control characters"),
    ("bell_in_subject", action(subject="Refund\x07"), 422, "action.subject", None),
    ("blank_subject", action(subject="   "), 422, "action.subject", "blank"),
    ("empty_subject", action(subject=""), 422, "action.subject", "blank"),
    ("blank_body", action(body="\n\n"), 422, "action.body", "blank"),
    ("subject_too_long", action(subject="s" * 501), 422, "action.subject", None),
    # Threading headers.
    ("in_reply_to_not_a_message_id", action(in_reply_to="original-123"), 422, "action.in_reply_to", "Message-ID"),
    ("in_reply_to_without_host", action(in_reply_to="<original-123>"), 422, "action.in_reply_to", None),
    ("reference_not_a_message_id", action(references=["<ok@example.com>", "bad"]), 422, "action.references[1]",
     None),
    # Unknown fields are refused, never ignored.
    ("unknown_top_level_field", {**action(), "priority": "high"}, 422, "priority", "Extra inputs"),
    ("bcc_smuggled_into_action", action(bcc=["x@evil.com"]), 422, "action.bcc", "Extra inputs"),
    ("unknown_customer_field", {"request": "Refund?", "customer": {**CUSTOMER, "vip": True}}, 422,
     "customer.vip", None),
    # Policies.
    ("unknown_policy_name", {**action(), "policy": "four-eyes"}, 422, "policy", "four-eyes"),
    ("policy_is_a_number", {**action(), "policy": 5}, 422, "policy", None),
    ("unknown_policy_mode", {**action(), "policy": {"mode": "quorum"}}, 422, "policy.mode", None),
    ("crlf_in_policy_reviewer", {**action(), "policy": {"reviewers": ["rita@example.com\r\nX: y"]}}, 422,
     "policy.reviewers[0]", None),
    ("unknown_policy_field", {**action(), "policy": {"quorum": 2}}, 422, "policy.quorum", None),
    # Callback URLs.
    ("ftp_callback_url", {**action(), "callback_url": "ftp://ops.example.com/hook"}, 422, "callback_url", None),
    ("file_callback_url", {**action(), "callback_url": "file:///etc/passwd"}, 422, "callback_url", None),
    ("javascript_callback_url", {**action(), "callback_url": "javascript:alert(1)"}, 422, "callback_url", None),
    ("relative_callback_url", {**action(), "callback_url": "/hook"}, 422, "callback_url", None),
    ("callback_url_too_long", {**action(), "callback_url": "https://ops.example.com/" + "a" * 2100}, 422,
     "callback_url", None),
    # Metadata must be JSON that can be stored and read back.
    ("nan_in_metadata", b'{"action": %s, "metadata": {"score": NaN}}' % json.dumps(email_action()).encode(), 422,
     "metadata", "finite"),
    ("infinity_in_metadata", b'{"action": %s, "metadata": {"n": [1, 1e999]}}' % json.dumps(email_action()).encode(),
     422, "metadata", "finite"),
    ("deeply_nested_metadata", b'{"action": %s, "metadata": %s}' % (json.dumps(email_action()).encode(),
                                                                   b'{"a":' * 5000 + b"1" + b"}" * 5000), 400,
     None, None),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("body", "status", "field", "mentions"), [c[1:] for c in CREATE_CASES],
                         ids=[c[0] for c in CREATE_CASES])
async def test_create_run_refuses(service: Service, body: Any, status: int, field: str | None,
                                  mentions: str | None) -> None:
    before = await stored(service)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, payload, headers = await service.request("POST", "/api/runs", raw=raw)
    assert_problem(got, payload, headers, status, field, mentions)
    assert await stored(service) == before
    await assert_no_runs(service)


# ---- POST /api/runs: headers, credentials, size ------------------------------------------

VALID = json.dumps({"action": email_action()}).encode()
OTHER = json.dumps({"action": email_action(to=["x@evil.com"])}).encode()


def signed(body: bytes, *, secret: str = WEBHOOK_SECRET, age: int = 0) -> dict[str, str]:
    return {HEADER: sign_v2(secret, int(time.time()) - age, "POST", "/api/runs", "", body)}


# (id, headers, status, field): sent with the valid body and no credentials but these headers.
# Signatures are made when the test runs (a lambda), so their timestamps are what they say.
HEADER_CASES: list[tuple[str, dict[str, str] | Callable[[], dict[str, str]], int, str | None]] = [
    ("no_credentials", {}, 401, None),
    ("wrong_bearer_token", {"Authorization": "Bearer not-the-token"}, 401, None),
    ("token_prefix", {"Authorization": f"Bearer {API_TOKEN[:-1]}"}, 401, None),
    ("empty_bearer_token", {"Authorization": "Bearer "}, 401, None),
    ("basic_scheme", {"Authorization": f"Basic {API_TOKEN}"}, 401, None),
    ("token_without_scheme", {"Authorization": API_TOKEN}, 401, None),
    ("bad_bearer_beats_good_signature", lambda: {"Authorization": "Bearer nope", **signed(VALID)}, 401, None),
    ("signature_wrong_secret", lambda: signed(VALID, secret="not-the-secret"), 401, None),
    ("signature_stale", lambda: signed(VALID, age=330), 401, None),
    ("signature_from_the_future", lambda: signed(VALID, age=-330), 401, None),
    ("signature_garbage", {HEADER: "garbage"}, 401, None),
    ("signature_bad_timestamp", {HEADER: "t=yesterday,v1=00"}, 401, None),
    ("signature_empty", {HEADER: ""}, 401, None),
    ("signature_not_ascii", lambda: {HEADER: f"t={int(time.time())},v1=\u00e9"}, 401, None),
    ("body_changed_after_signing", lambda: signed(OTHER), 401, None),
    ("wrong_content_type", {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "text/plain"}, 415, None),
    ("form_content_type", {"Authorization": f"Bearer {API_TOKEN}",
                           "Content-Type": "application/x-www-form-urlencoded"}, 415, None),
    ("empty_idempotency_key", {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": ""}, 400,
     "Idempotency-Key"),
    ("long_idempotency_key", {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "k" * 256}, 400,
     "Idempotency-Key"),
    ("tab_in_idempotency_key", {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "order\t77"}, 400,
     "Idempotency-Key"),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("headers", "status", "field"), [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
async def test_create_run_refuses_headers(service: Service, headers: Any, status: int,
                                          field: str | None) -> None:
    headers = headers() if callable(headers) else headers
    before = await stored(service)
    got, payload, answer_headers = await service.request("POST", "/api/runs", raw=VALID, auth="none",
                                                         headers=headers)
    assert_problem(got, payload, answer_headers, status, field)
    if status == 401:
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
        assert API_TOKEN not in json.dumps(payload) and WEBHOOK_SECRET not in json.dumps(payload)
    assert await stored(service) == before
    await assert_no_runs(service)


# (id, raw header line, status): bytes that are not UTF-8, sent over a bare socket
RAW_HEADER_CASES: list[tuple[str, bytes, int]] = [
    ("bearer_token_not_utf8", b"Authorization: Bearer \xff\xfe", 401),
    ("signature_not_utf8", b"X-Countersign-Signature: t=1,v1=\xff", 401),
    ("idempotency_key_not_utf8", b"Authorization: Bearer " + API_TOKEN.encode() + b"\r\nIdempotency-Key: \xff\xfe", 400),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("header", "status"), [c[1:] for c in RAW_HEADER_CASES], ids=[c[0] for c in RAW_HEADER_CASES])
async def test_header_bytes_that_are_not_utf8(service: Service, header: bytes, status: int) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /api/runs HTTP/1.1\r\nHost: countersign.test\r\nConnection: close\r\n"
                 b"X-Request-Id: r\xc3\xa9quest\r\nContent-Type: application/json\r\n"
                 + header + b"\r\nContent-Length: %d\r\n\r\n" % len(VALID) + VALID)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode(), answer
    assert b"application/problem+json" in head
    request_id = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"x-request-id:"))
    assert request_id.isascii(), request_id  # a request id that is not ASCII is replaced, not echoed
    assert json.loads(body)["status"] == status
    await assert_no_runs(service)


@SQLITE_ONLY
async def test_credentials_are_checked_before_the_body(service: Service) -> None:
    status, payload, headers = await service.request("POST", "/api/runs", raw=b"{not json", auth="none")
    assert_problem(status, payload, headers, 401)
    status, payload, headers = await service.request("POST", "/api/runs", raw=b"{not json", auth="none",
                                                     headers={HEADER: sign_v2("wrong", int(time.time()), "POST",
                                                                               "/api/runs", "", b"{not json")})
    assert_problem(status, payload, headers, 401)


@SQLITE_ONLY
async def test_body_over_the_configured_limit(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, max_body_bytes=2048)
    big = json.dumps({"action": email_action(body="x" * 3000)}).encode()
    for auth in ("token", "webhook", "none"):
        status, payload, headers = await service.request("POST", "/api/runs", raw=big, auth=auth)
        assert_problem(status, payload, headers, 413, mentions="2048")
    status, payload, headers = await service.request(
        "POST", f"/api/approvals/{'0' * 36}/decisions", raw=json.dumps({"reason": "x" * 3000}).encode())
    assert_problem(status, payload, headers, 413)
    await assert_no_runs(service)
    # The limit is the setting, not a constant: just under it is accepted.
    fits = json.dumps({"action": email_action(body="x" * 1800)}).encode()
    assert len(fits) < 2048
    status, payload, _ = await service.request("POST", "/api/runs", raw=fits)
    assert status == 202, payload


# ---- POST /api/approvals/{id}/decisions ------------------------------------------------

RITA = {"id": "rita@example.com"}

# (id, body, status, field, mentions)
DECISION_CASES: list[tuple[str, Any, int, str | None, str | None]] = [
    ("malformed_json", b'{"decision": "approve"', 400, None, None),
    ("array", b'["approve"]', 422, "$", None),
    ("unknown_decision_kind", {"decision": "maybe", "reviewer": RITA}, 422, "decision", None),
    ("decision_is_a_number", {"decision": 1, "reviewer": RITA}, 422, "decision", None),
    ("missing_decision", {"reviewer": RITA}, 422, "decision", "Field required"),
    ("missing_reviewer", {"decision": "approve"}, 422, "reviewer", "must name the reviewer"),
    ("reviewer_is_a_string", {"decision": "approve", "reviewer": "rita"}, 422, "reviewer", None),
    ("reviewer_without_id", {"decision": "approve", "reviewer": {"name": "Rita"}}, 422, "reviewer.id", None),
    ("blank_reviewer_id", {"decision": "approve", "reviewer": {"id": "  "}}, 422, "reviewer.id", "blank"),
    ("crlf_in_reviewer_id", {"decision": "approve", "reviewer": {"id": "rita\r\nX: y"}}, 422, "reviewer.id", None),
    ("invalid_reviewer_email", {"decision": "approve", "reviewer": {"id": "r", "email": "rita"}}, 422,
     "reviewer.email", None),
    ("unknown_reviewer_field", {"decision": "approve", "reviewer": {**RITA, "role": "admin"}}, 422,
     "reviewer.role", None),
    ("reject_without_reason", {"decision": "reject", "reviewer": RITA}, 422, "reason", "required to reject"),
    ("reject_with_blank_reason", {"decision": "reject", "reviewer": RITA, "reason": " \n "}, 422, "reason", None),
    ("reason_with_nul", {"decision": "reject", "reviewer": RITA, "reason": "no\x00"}, 422, "reason", "control"),
    ("reason_too_long", {"decision": "reject", "reviewer": RITA, "reason": "r" * 2001}, 422, "reason", None),
    ("edit_without_subject_or_body", {"decision": "edit", "reviewer": RITA}, 422, "subject", "`edit` needs"),
    ("approve_with_body", {"decision": "approve", "reviewer": RITA, "body": "Other text"}, 422, "body",
     "only accepted with `edit`"),
    ("approve_with_subject", {"decision": "approve", "reviewer": RITA, "subject": "Other"}, 422, "subject", None),
    ("reject_with_body", {"decision": "reject", "reviewer": RITA, "reason": "no", "body": "x"}, 422, "body", None),
    ("crlf_in_edited_subject", {"decision": "edit", "reviewer": RITA, "subject": INJECTED_SUBJECT}, 422, "subject",
     "single line"),
    ("lf_in_edited_subject", {"decision": "edit", "reviewer": RITA, "subject": "Hi\nBcc: x@evil.com"}, 422,
     "subject", None),
    ("blank_edited_subject", {"decision": "edit", "reviewer": RITA, "subject": " "}, 422, "subject", "blank"),
    ("nul_in_edited_body", {"decision": "edit", "reviewer": RITA, "body": "Dear Ann\x00"}, 422, "body", None),
    ("blank_edited_body", {"decision": "edit", "reviewer": RITA, "body": "\r\n"}, 422, "body", "blank"),
    ("edit_cannot_change_recipients", {"decision": "edit", "reviewer": RITA, "to": ["x@evil.com"]}, 422, "to",
     "Extra inputs"),
    ("unknown_field", {"decision": "approve", "reviewer": RITA, "approved_by": "boss"}, 422, "approved_by", None),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("body", "status", "field", "mentions"), [c[1:] for c in DECISION_CASES],
                         ids=[c[0] for c in DECISION_CASES])
async def test_decision_refuses(service: Service, body: Any, status: int, field: str | None,
                                mentions: str | None) -> None:
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, payload, headers = await service.request("POST", f"/api/approvals/{approval_id}/decisions", raw=raw,
                                                  auth="decider")
    assert_problem(got, payload, headers, status, field, mentions)
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


# (id, approval id or None for the real one, credentials, headers, status): a valid approve
DECISION_REQUEST_CASES: list[tuple[str, str | None, str, dict[str, str], int]] = [
    ("unknown_approval", "00000000-0000-4000-8000-000000000000", "decider", {}, 404),
    ("approval_id_too_long", "a" * 37, "decider", {}, 404),
    ("no_credentials", None, "none", {}, 401),
    ("wrong_token", None, "none", {"Authorization": "Bearer nope"}, 401),
    ("operator_token_may_not_decide", None, "token", {}, 403),
    ("wrong_content_type", None, "decider", {"Content-Type": "text/plain"}, 415),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("approval", "auth", "headers", "status"), [c[1:] for c in DECISION_REQUEST_CASES],
                         ids=[c[0] for c in DECISION_REQUEST_CASES])
async def test_decision_request_refused(service: Service, approval: str | None, auth: str,
                                        headers: dict[str, str], status: int) -> None:
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    got, payload, answer = await service.request(
        "POST", f"/api/approvals/{approval or approval_id}/decisions",
        body={"decision": "approve", "reviewer": RITA}, auth=auth, headers=headers)
    assert_problem(got, payload, answer, status)
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


@SQLITE_ONLY
@pytest.mark.parametrize(("approval", "auth", "headers", "status"), [c[1:] for c in DECISION_REQUEST_CASES],
                         ids=[c[0] for c in DECISION_REQUEST_CASES])
async def test_a_delegation_request_is_refused_as_a_decision_is(service: Service, approval: str | None, auth: str,
                                                                headers: dict[str, str], status: int) -> None:
    # Both routes read the body, the credential, the reviewer and the approval the same way.
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    answers = []
    for route, body in (("decisions", {"decision": "approve", "reviewer": RITA}),
                        ("delegations", {"to": "dana@example.com", "reviewer": RITA})):
        got, payload, answer = await service.request(
            "POST", f"/api/approvals/{approval or approval_id}/{route}", body=body, auth=auth, headers=headers)
        assert_problem(got, payload, answer, status)
        answers.append((got, payload["type"], payload["detail"]))
    assert answers[0] == answers[1]
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


# ---- reads, other routes, cancel, jobs ---------------------------------------------------

# (id, method, path, status, field)
ROUTE_CASES: list[tuple[str, str, str, int, str | None]] = [
    ("runs_unknown_status", "GET", "/api/runs?status=done", 422, "status"),
    ("runs_limit_zero", "GET", "/api/runs?limit=0", 422, "limit"),
    ("runs_limit_too_big", "GET", "/api/runs?limit=201", 422, "limit"),
    ("runs_limit_negative", "GET", "/api/runs?limit=-1", 422, "limit"),
    ("runs_limit_not_a_number", "GET", "/api/runs?limit=ten", 422, "limit"),
    ("runs_limit_fraction", "GET", "/api/runs?limit=1.5", 422, "limit"),
    ("runs_cursor_not_base64", "GET", "/api/runs?cursor=%25%25%25", 422, "cursor"),
    ("runs_cursor_not_a_cursor", "GET", f"/api/runs?cursor={b64('hello')}", 422, "cursor"),
    ("runs_cursor_bad_date", "GET", f"/api/runs?cursor={b64('yesterday|abc')}", 422, "cursor"),
    ("unknown_run", "GET", "/api/runs/00000000-0000-4000-8000-000000000000", 404, None),
    ("run_id_too_long", "GET", f"/api/runs/{'a' * 37}", 404, None),
    ("cancel_unknown_run", "POST", "/api/runs/00000000-0000-4000-8000-000000000000/cancel", 404, None),
    ("jobs_unknown_status", "GET", "/api/jobs?status=failed", 422, "status"),
    ("retry_unknown_job", "POST", "/api/jobs/00000000-0000-4000-8000-000000000000/retry", 404, None),
    ("retry_job_id_too_long", "POST", f"/api/jobs/{'j' * 40}/retry", 404, None),
    ("unknown_route", "GET", "/api/nothing-here", 404, None),
    ("unknown_root_route", "POST", "/admin", 404, None),
    ("delete_runs", "DELETE", "/api/runs", 405, None),
    ("put_run", "PUT", "/api/runs/00000000-0000-4000-8000-000000000000", 405, None),
    ("get_decisions", "GET", "/api/approvals/00000000-0000-4000-8000-000000000000/decisions", 405, None),
    ("post_healthz", "POST", "/healthz", 405, None),
]


@SQLITE_ONLY
@pytest.mark.parametrize(("method", "path", "status", "field"), [c[1:] for c in ROUTE_CASES],
                         ids=[c[0] for c in ROUTE_CASES])
async def test_route_refuses(service: Service, method: str, path: str, status: int, field: str | None) -> None:
    before = await stored(service)
    got, payload, headers = await service.request(method, path)
    assert_problem(got, payload, headers, status, field)
    if status == 405:
        assert headers["Allow"], headers
    assert await stored(service) == before


@SQLITE_ONLY
async def test_cancel_refuses_bad_bodies(service: Service) -> None:
    run_id, _ = await pending_approval(service)
    before = await stored(service)
    path = f"/api/runs/{run_id}/cancel"
    for raw, headers, status, field in [
        (b"{", {}, 400, None),
        (b"[]", {}, 422, "$"),
        (b'{"reason": 5}', {}, 422, "reason"),
        (b'{"reason": "ok", "force": true}', {}, 422, "force"),
        (b'{"reason": "a\\u0000b"}', {}, 422, "reason"),
        (b'{"reason": "ok"}', {"Content-Type": "text/plain"}, 415, None),
    ]:
        got, payload, answer = await service.request("POST", path, raw=raw, headers=headers)
        assert_problem(got, payload, answer, status, field)
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


# ---- what PostgreSQL refuses is refused before the store (both databases) ---------------

# (id, method, path, body, status, field); "{run}" and "{approval}" name a real pending run
STORE_CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    ("nul_in_request", "POST", "/api/runs", {"request": "a\x00b", "customer": CUSTOMER}, 422, "request"),
    ("nan_in_metadata", "POST", "/api/runs",
     b'{"action": %s, "metadata": {"a": NaN}}' % json.dumps(email_action()).encode(), 422, "metadata"),
    ("callback_url_over_column", "POST", "/api/runs",
     {**action(), "callback_url": "https://ops.example.com/" + "\u00e9" * 600}, 422, "callback_url"),
    ("nul_in_reason", "POST", "/api/approvals/{approval}/decisions",
     {"decision": "reject", "reviewer": RITA, "reason": "\x00"}, 422, "reason"),
    ("nul_in_cancel_reason", "POST", "/api/runs/{run}/cancel", {"reason": "\x00"}, 422, "reason"),
    ("nul_run_id", "GET", "/api/runs/%00", None, 404, None),
    ("nul_approval_id", "POST", "/api/approvals/%00/decisions", {"decision": "approve", "reviewer": RITA}, 404,
     None),
    ("nul_job_id", "POST", "/api/jobs/%00/retry", None, 404, None),
    ("nul_cancel_id", "POST", "/api/runs/%00/cancel", None, 404, None),
    ("nul_jobs_run_id", "GET", "/api/jobs?run_id=%00", None, 422, "run_id"),
    ("cursor_naive_time", "GET", f"/api/runs?cursor={b64('2024-01-01T00:00:00|abc')}", None, 422, "cursor"),
    ("cursor_out_of_range", "GET", f"/api/runs?cursor={b64('9999-12-31T23:59:59-14:00|abc')}", None, 422,
     "cursor"),
    ("cursor_nul_id", "GET", f"/api/runs?cursor={b64('2024-01-01T00:00:00+00:00|a' + chr(0))}", None, 422,
     "cursor"),
]


async def test_store_sensitive_input(service: Service) -> None:
    """One service per database; every case in turn, then nothing has changed."""
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    for case, method, path, body, status, field in STORE_CASES:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        got, payload, headers = await service.request(method, path.format(run=run_id, approval=approval_id),
                                                      raw=raw, auth="decider" if "/decisions" in path else "token")
        try:
            assert_problem(got, payload, headers, status, field)
        except AssertionError as exc:
            raise AssertionError(f"case {case}: {exc}") from None
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


# ---- no input gives a 500: seeded mutations of valid bodies, on both databases -------------

ODD_VALUES: list[Any] = [None, True, 0, -1, 10**30, 1.5, "", " ", "\x00", "\r\n", "a" * 5000, "\u202e", [],
                         [None], {}, {"x": 1}, "ann@example.com", "<id@example.com>", "https://example.com/h"]


def mutate(rng: random.Random, value: Any) -> Any:
    """The value with one node replaced, one key dropped or one key added."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        roll = rng.random()
        if roll < 0.15:
            return without(value, key)
        if roll < 0.25:
            return {**value, rng.choice(["extra", "bcc", "type", "to"]): rng.choice(ODD_VALUES)}
        return {**value, key: mutate(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], mutate(rng, value[i]), *value[i + 1:]]
    return rng.choice(ODD_VALUES)


async def test_mutated_bodies_never_500(service: Service) -> None:
    rng = random.Random(20240601)
    run_bodies = [{"action": email_action(cc=["b@example.com"], in_reply_to="<o@example.com>",
                                          references=["<r@example.com>"]),
                   "requested_by": "ops", "metadata": {"k": [1, "v"]}, "policy": {"reviewers": ["rita"]},
                   "callback_url": "https://ops.example.com/hook"},
                  {"request": "Refund for Ann?", "customer": CUSTOMER}]
    for _ in range(150):
        body = mutate(rng, rng.choice(run_bodies))
        before = await stored(service, rows_only=True)
        status, payload, headers = await service.request("POST", "/api/runs", body=body)
        assert status < 500, (body, payload)
        if status >= 400:
            assert_problem(status, payload, headers, status)
            assert await stored(service, rows_only=True) == before, body
    run_id, approval_id = await pending_approval(service)
    decision = {"decision": "edit", "reviewer": {"id": "rita", "name": "Rita", "email": "rita@example.com"},
                "subject": "New subject", "body": "New body"}
    for _ in range(80):
        body = mutate(rng, decision)
        status, payload, headers = await service.request("POST", f"/api/approvals/{approval_id}/decisions",
                                                         body=body, auth="decider")
        assert status < 500, (body, payload)
        if status >= 400:
            assert_problem(status, payload, headers, status)
