"""Input built to break the parser or the message builder, over real HTTP: deeply nested JSON
is a 400 on every endpoint that reads JSON (never a RecursionError 500), and every character
Python treats as a line end is refused in a header-bound field at intake (422 naming the
field), so no email is accepted that could never be built."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.api.deps import SERVICES
from service.scopes import Scope, ScopeRuleError

from .conftest import Service, StartService, email_action
from .peers.smtp import SmtpServer
from .test_bad_input import CUSTOMER, assert_problem, assert_still_pending, pending_approval, stored
from .test_teams import Teams, teams  # noqa: F401  (the fixture: the service with real Bot Framework auth)

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

# What the issue sent, what used to overflow the standard library's parser while opening
# and closing (valid JSON, 10,000 levels deep), and deep nesting inside a real field.
DEEP_BODIES = {
    "open_brackets": b"[" * 200_000,
    "closed_brackets": b"[" * 10_000 + b"]" * 10_000,
    "deep_in_a_field": b'{"reason": ' + b"[" * 100_000,
    "deep_object": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
}
# Everything `str.splitlines()` breaks on that is not CR or LF (those are tested in test_bad_input).
LINE_BREAKERS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]


@pytest.fixture
async def service(start_service: StartService, smtp_server: SmtpServer) -> Service:
    """Workers off, so "nothing was stored" compares row counts (as in test_bad_input)."""
    return await start_service(smtp_server, worker_concurrency=0)


async def test_deeply_nested_json_is_a_400_on_every_api_body(service: Service) -> None:
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    for path, auth in (("/api/runs", "token"), (f"/api/approvals/{approval_id}/decisions", "decider"),
                       (f"/api/runs/{run_id}/cancel", "token")):
        for name, raw in DEEP_BODIES.items():
            status, problem, headers = await service.request("POST", path, raw=raw, auth=auth)
            assert_problem(status, problem, headers, 400)
            assert problem["type"].endswith("/malformed_json"), (path, name, problem)
            assert "not valid JSON" in problem["detail"], (path, name, problem)
    assert await stored(service) == before
    await assert_still_pending(service, run_id)
    status, page, _ = await service.request("GET", "/api/runs")
    assert status == 200 and [r["id"] for r in page["items"]] == [run_id]


@SQLITE_ONLY
async def test_deeply_nested_json_is_a_400_on_the_bot_endpoint(teams: Teams) -> None:  # noqa: F811
    """With a valid Bot Framework token, so the body is really parsed (before or after the
    token check). Bodies stay small, under any body limit the endpoint may have."""
    base = teams.activity("message", text="status")
    deep = json.dumps(base)[:-1].encode() + b', "value": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    for raw in (b"[" * 20_000, b"[" * 5_000 + b"]" * 5_000, deep):
        status, problem, headers = await teams.service.request(
            "POST", "/api/messages", raw=raw, auth="none",
            headers={"Authorization": f"Bearer {teams.tokens.token()}"})
        assert status == 400, problem
        assert problem["status"] == 400 and problem["type"].endswith("/malformed_json"), problem
        assert headers["Content-Type"].startswith("application/problem+json")
    assert teams.connector.calls == []  # nothing answered, nothing stored about the conversation
    status, _, _ = await teams.service.request("POST", "/api/messages", body=base, auth="none",
                                               headers={"Authorization": f"Bearer {teams.tokens.token()}"})
    assert status == 200  # the endpoint still works


def _action(**overrides: Any) -> dict[str, Any]:
    return {"action": email_action(**overrides)}


def _cases(ch: str) -> list[tuple[str, dict[str, Any], str]]:
    """(what, body, the field `errors` must name) for one line-breaking character."""
    return [
        ("subject", _action(subject=f"Your{ch}refund"), "action.subject"),
        ("subject_end", _action(subject=f"Your refund{ch}"), "action.subject"),
        ("in_reply_to", _action(in_reply_to=f"<a{ch}b@example.com>"), "action.in_reply_to"),
        ("references", _action(references=[f"<a{ch}b@example.com>"]), "action.references[0]"),
        ("to", _action(to=[f"ann{ch}@example.com"]), "action.to[0]"),
        ("cc", _action(cc=[f"ann{ch}@example.com"]), "action.cc[0]"),
        ("customer_name", {"request": "Refund?", "customer": {**CUSTOMER, "name": f"Ann{ch}Smith"}}, "customer.name"),
        ("requested_by", {**_action(), "requested_by": f"ops{ch}team"}, "requested_by"),
    ]


@pytest.mark.parametrize("ch", LINE_BREAKERS, ids=lambda c: f"U+{ord(c):04X}")
async def test_line_breakers_in_header_fields_are_refused_at_intake(service: Service, ch: str) -> None:
    before = await stored(service)
    for what, body, field in _cases(ch):
        status, problem, headers = await service.request("POST", "/api/runs", body=body)
        assert_problem(status, problem, headers, 422, field)
        if what.startswith("subject"):
            assert f"U+{ord(ch):04X}" in json.dumps(problem), problem
    assert await stored(service) == before
    status, page, _ = await service.request("GET", "/api/runs")
    assert status == 200 and page["items"] == []


@SQLITE_ONLY
@pytest.mark.parametrize("ch", LINE_BREAKERS, ids=lambda c: f"U+{ord(c):04X}")
async def test_line_breakers_in_an_edited_subject_decide_nothing(service: Service, ch: str) -> None:
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    status, problem = await service.decide(approval_id, {"decision": "edit", "reviewer": {"id": "rita@example.com"},
                                                         "subject": f"Your{ch}refund", "body": "Dear Ann"})
    assert status == 422 and "subject" in [e["field"] for e in problem["errors"]], problem
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


# Characters that leave an identity looking the same (or nearly) but compare unequal: zero
# width, bidi controls, a byte order mark, a soft hyphen, a no-break space, fullwidth letters.
DISGUISES = {"zero_width_space": "rita\u200b@example.com", "zero_width_joiner": "ri\u200dta@example.com",
             "right_to_left_override": "rita@\u202eelpmaxe.com", "bom": "\ufeffrita@example.com",
             "soft_hyphen": "ri\u00adta@example.com", "no_break_space": "rita\u00a0@example.com",
             "fullwidth": "\uff52ita@example.com", "word_joiner": "rita\u2060@example.com"}


@pytest.mark.parametrize("disguised", DISGUISES.values(), ids=DISGUISES.keys())
async def test_a_disguised_identity_is_refused_wherever_identities_are_compared(
    service: Service, disguised: str,
) -> None:
    run_id, approval_id = await pending_approval(service)
    before = await stored(service)
    status, problem, headers = await service.request("POST", "/api/runs",
                                                     body={**_action(), "requested_by": disguised})
    assert_problem(status, problem, headers, 422, "requested_by")
    assert "U+" in problem["errors"][0]["message"], problem
    for path, body, field in (
        (f"/api/approvals/{approval_id}/decisions", {"decision": "approve", "reviewer": {"id": disguised}},
         "reviewer.id"),
        (f"/api/approvals/{approval_id}/decisions",
         {"decision": "approve", "reviewer": {"id": "rita", "email": disguised}}, "reviewer.email"),
        (f"/api/approvals/{approval_id}/delegations", {"to": disguised, "reviewer": {"id": "rita@example.com"}},
         "to"),
    ):
        status, problem, headers = await service.request("POST", path, body=body, auth="decider")
        assert_problem(status, problem, headers, 422, field)
    status, problem, headers = await service.request("POST", "/api/keys", body={
        "name": "disguised", "scopes": ["decide"], "reviewer": disguised})
    assert_problem(status, problem, headers, 422, "reviewer")
    with pytest.raises(ScopeRuleError) as refused:  # as `countersign keys create --reviewer` makes keys
        await service.app[SERVICES].keys.create(name="disguised", scopes=frozenset({Scope.DECIDE}),
                                                reviewer=disguised, expires_in=None, created_by="test")
    assert refused.value.field == "reviewer"
    assert await stored(service) == before
    await assert_still_pending(service, run_id)


async def test_an_identity_with_spaces_around_it_is_the_identity(service: Service) -> None:
    # Python's strip(): a no-break space around it is trimmed too (inside, it is refused above).
    status, accepted, _ = await service.request("POST", "/api/runs",
                                                body={**_action(), "requested_by": "  rita@example.com\u00a0"})
    assert status == 202, accepted
    run = await service.run(accepted["id"])
    assert run["requested_by"] == "rita@example.com"
