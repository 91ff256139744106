"""`GET /api/openapi.json` is a valid OpenAPI 3.1 document, names every route, and tells the
truth: real answers, driven over HTTP, validate against the schema it declares for their
path, method and status, and declare every property they carry."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from service.api.openapi import openapi_document
from service.api.routes import ROUTES, add_routes

from .conftest import Service, StartService, email_action, free_port
from .peers.smtp import SmtpServer

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
DOC_URI = "urn:countersign:openapi"
# Routes that are not the ops API's to describe (the Bot Framework defines its own).
NOT_OPS_API = {"/api/messages"}
OPS_PREFIXES = ("/api/", "/healthz", "/readyz", "/metrics")


def strict(document: dict[str, Any]) -> dict[str, Any]:
    """The document with `additionalProperties: false` on every object schema that lists its
    properties, so that an answer carrying an undeclared property fails validation. (The
    document itself leaves answers open, so that clients tolerate new fields.)"""
    doc = copy.deepcopy(document)

    def close(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(doc["components"]["schemas"])
    return doc


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class Contract:
    """Validates requests and answers against one OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = strict(document)
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry: Registry = Registry().with_resource(DOC_URI, resource)
        self.checked: set[tuple[str, str, str]] = set()

    def _at(self, pointer: str) -> Any:
        node: Any = self.doc
        for token in pointer.lstrip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return node

    def _follow(self, pointer: str) -> str:
        """The pointer of the object that `pointer` names, through any `$ref` (responses)."""
        while "$ref" in self._at(pointer):
            pointer = self._at(pointer)["$ref"].removeprefix("#")
        return pointer

    def _validate(self, schema_pointer: str, instance: Any, where: str) -> None:
        # The schema is referenced inside the document, so its own "#/components/..." refs resolve there.
        validator = Draft202012Validator({"$ref": f"{DOC_URI}#{schema_pointer}"}, registry=self.registry,
                                         format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5])

    def operation(self, method: str, path: str) -> str:
        assert path in self.doc["paths"], f"{path} is not in the document"
        assert method.lower() in self.doc["paths"][path], f"{method} {path} is not in the document"
        return f"/paths/{_escape(path)}/{method.lower()}"

    def request(self, method: str, path: str, body: Any) -> None:
        op = self.operation(method, path)
        self._validate(f"{op}/requestBody/content/application~1json/schema", body, f"request of {method} {path}")

    def answer(self, method: str, path: str, status: int, headers: Any, body: Any) -> None:
        op = self.operation(method, path)
        responses = self._at(f"{op}/responses")
        assert str(status) in responses, f"{method} {path} answered {status}, which the document does not list"
        response = self._follow(f"{op}/responses/{status}")
        media = headers.get("Content-Type", "").split(";")[0].strip()
        content = self._at(response).get("content", {})
        assert media in content, f"{method} {path} {status} answered {media}; the document says {list(content)}"
        if "Location" in self._at(response).get("headers", {}):
            assert "Location" in headers, f"{method} {path} {status} lacks the documented Location header"
        self._validate(f"{response}/content/{_escape(media)}/schema", body, f"{method} {path} {status}")
        self.checked.add((method.upper(), path, str(status)))


class Client:
    """The service, with every exchange checked against the contract."""

    def __init__(self, service: Service, contract: Contract) -> None:
        self.service = service
        self.contract = contract

    async def call(self, method: str, template: str, path: str | None = None, *, body: Any = None,
                   raw: bytes | None = None, auth: str = "token", headers: dict[str, str] | None = None,
                   expect: int) -> tuple[Any, Any]:
        if body is not None and expect < 400:
            self.contract.request(method, template, body)
        status, payload, answer_headers = await self.service.request(
            method, path or template, body=body, raw=raw, auth=auth, headers=headers)
        assert status == expect, (method, path or template, status, payload)
        self.contract.answer(method, template, status, answer_headers, payload)
        return payload, answer_headers


@pytest.fixture
async def document(service: Service) -> dict[str, Any]:
    status, doc, headers = await service.request("GET", "/api/openapi.json", auth="none")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    return doc


# ---- the document ------------------------------------------------------------------------

@SQLITE_ONLY
async def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate_openapi(document)
    assert document["openapi"].startswith("3.1")
    assert document == json.loads(json.dumps(openapi_document()))
    operation_ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids)), operation_ids
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for item in document["paths"].values():
        for op in item.values():
            assert {"200", "201", "202"} & set(op["responses"]), op["operationId"]
            for status, response in op["responses"].items():
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    assert name in document["components"]["responses"], (op["operationId"], status)


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def _registered(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


@SQLITE_ONLY
async def test_document_covers_every_route(service: Service, document: dict[str, Any]) -> None:
    # Exactly the routes of service/api/routes.py ...
    bare = web.Application()
    add_routes(bare)
    assert _documented(document) == _registered(bare) == {(r.method, r.path) for r in ROUTES}
    # ... and every ops route the running service answers is among them.
    live = {(m, p) for m, p in _registered(service.app) if p.startswith(OPS_PREFIXES) and p not in NOT_OPS_API}
    assert live <= _documented(document), live - _documented(document)
    # Path parameters are declared, query parameters of the list routes too.
    for path, item in document["paths"].items():
        for op in item.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, path
    list_runs = {p["name"] for p in document["paths"]["/api/runs"]["get"]["parameters"]}
    assert list_runs == {"status", "limit", "cursor"}
    run_statuses = document["components"]["schemas"]["RunStatus"]["enum"]
    query_statuses = next(p for p in document["paths"]["/api/runs"]["get"]["parameters"] if p["name"] == "status")
    assert query_statuses["schema"]["enum"] == run_statuses


def test_strict_copy_refuses_undeclared_properties() -> None:
    """The check below is only as good as its strictness: an extra property must fail."""
    contract = Contract(openapi_document())
    problem = {"type": "https://countersign.dev/problems/x", "title": "T", "status": 404, "detail": "d",
               "request_id": "r"}
    contract.answer("GET", "/api/runs/{run_id}", 404, {"Content-Type": "application/problem+json"}, problem)
    with pytest.raises(AssertionError, match="secret"):
        contract.answer("GET", "/api/runs/{run_id}", 404, {"Content-Type": "application/problem+json"},
                        {**problem, "secret": "x"})
    with pytest.raises(AssertionError, match="does not list"):
        contract.answer("GET", "/api/runs/{run_id}", 418, {"Content-Type": "application/problem+json"}, problem)


# ---- real answers ---------------------------------------------------------------------------

async def test_answers_match_the_document(start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, policies={"pair": {
        "reviewers": ["rita@example.com", "sam@example.com"], "mode": "quorum", "required": 2,
        "delegates": ["dana@example.com"]}})
    _, document, _ = await service.request("GET", "/api/openapi.json", auth="none")
    api = Client(service, Contract(document))

    # Create: pre-drafted (with an idempotent replay), and one for the agent.
    body = {"action": email_action(cc=["billing@example.com"], in_reply_to="<o-1@customer.example.com>",
                                   references=["<t-1@customer.example.com>"]),
            "requested_by": "ops-bot", "metadata": {"ticket": "T-42", "n": [1, 2.5, None]},
            "policy": {"reviewers": ["rita@example.com", "sam@example.com"]}}
    key = {"Idempotency-Key": "openapi-flow-1"}
    accepted, headers = await api.call("POST", "/api/runs", body=body, headers=key, expect=202)
    _, replay_headers = await api.call("POST", "/api/runs", body=body, headers=key, expect=202)
    assert replay_headers["Idempotent-Replayed"] == "true" and headers["Location"] == accepted["url"]
    run_id = accepted["id"]
    agent, _ = await api.call("POST", "/api/runs", body={"request": "Tell Ann her refund is on its way",
                                                         "customer": {"email": "ann@example.com", "name": "Ann"}},
                              expect=202)
    other, _ = await api.call("POST", "/api/runs", auth="webhook",
                              body={"action": email_action(subject="Other"),
                                    # a name for loopback: accepted, then refused when sent
                                    "callback_url": f"https://localhost:{free_port()}/closed"}, expect=202)

    # Read and list.
    run, _ = await api.call("GET", "/api/runs/{run_id}", f"/api/runs/{run_id}", expect=200)
    await api.call("GET", "/api/runs/{run_id}", f"/api/runs/{agent['id']}", expect=200)
    page, _ = await api.call("GET", "/api/runs", "/api/runs?limit=2", expect=200)
    assert page["next_cursor"]
    await api.call("GET", "/api/runs", f"/api/runs?limit=2&cursor={page['next_cursor']}&status=awaiting_approval",
                   expect=200)

    # Decide: refused (403), then approved; the delivered run validates in full.
    approval_id = run["approvals"][0]["id"]
    decisions = "/api/approvals/{approval_id}/decisions"
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions",
                   body={"decision": "approve", "reviewer": {"id": "mallory@example.com"}}, expect=403)
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions",
                   body={"decision": "approve", "reviewer": {"id": "mallory@example.com"}}, auth="decider", expect=403)
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions",
                   body={"decision": "edit", "reviewer": {"id": "rita@example.com", "name": "Rita",
                                                           "email": "rita@example.com"},
                         "subject": "Your refund (EUR 40)"}, auth="decider", expect=200)
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions",
                   body={"decision": "reject", "reviewer": {"id": "sam@example.com"}, "reason": "late"},
                   auth="decider", expect=409)
    completed = await service.wait_status(run_id, "completed")
    assert completed["deliveries"] and completed["decisions"] and completed["approvals"][0]["approved_action"]
    assert completed["approvals"][0]["diff"]["subject"] and completed["approvals"][0]["diff"]["body"] is None
    await api.call("GET", "/api/runs/{run_id}", f"/api/runs/{run_id}", expect=200)

    # A policy with two votes: progress in the answer, a second vote refused, a vote handed over.
    pair, _ = await api.call("POST", "/api/runs", body={"action": email_action(), "policy": "pair"}, expect=202)
    pair_approval = (await service.run(pair["id"]))["approvals"][0]["id"]
    delegations = "/api/approvals/{approval_id}/delegations"
    rita = {"decision": "approve", "reviewer": {"id": "rita@example.com", "email": "rita@example.com"}}
    voted, _ = await api.call("POST", decisions, f"/api/approvals/{pair_approval}/decisions", body=rita,
                              auth="decider", expect=200)
    assert voted["status"] == "pending" and voted["progress"]["required"] == 2
    await api.call("POST", decisions, f"/api/approvals/{pair_approval}/decisions", body=rita, auth="decider",
                   expect=409)
    await api.call("POST", delegations, f"/api/approvals/{pair_approval}/delegations",
                   body={"to": "eve@example.com", "reviewer": {"id": "sam@example.com"}}, auth="decider", expect=422)
    await api.call("POST", delegations, f"/api/approvals/{pair_approval}/delegations",
                   body={"to": "dana@example.com", "reviewer": {"id": "sam@example.com"}}, auth="decider", expect=201)
    await api.call("POST", delegations, f"/api/approvals/{pair_approval}/delegations",
                   body={"to": "dana@example.com"}, expect=403)
    await api.call("POST", delegations, "/api/approvals/nope/delegations",
                   body={"to": "dana@example.com", "reviewer": {"id": "sam@example.com"}}, auth="decider", expect=404)
    await api.call("GET", "/api/runs/{run_id}", f"/api/runs/{pair['id']}", expect=200)

    # Cancel another run; its callback is refused (loopback) and ends in the dead letters; retry it.
    await api.call("POST", "/api/runs/{run_id}/cancel", f"/api/runs/{other['id']}/cancel",
                   body={"reason": "customer called"}, expect=200)
    await api.call("POST", "/api/runs/{run_id}/cancel", f"/api/runs/{other['id']}/cancel", expect=409)
    await api.call("GET", "/api/jobs", "/api/jobs?status=done", expect=200)
    dead = await _wait_dead(api, other["id"])
    retried, _ = await api.call("POST", "/api/jobs/{job_id}/retry", f"/api/jobs/{dead['id']}/retry", expect=200)
    assert retried["status"] == "queued"
    await api.call("POST", "/api/jobs/{job_id}/retry", f"/api/jobs/{dead['id']}/retry", expect=409)
    await api.call("GET", "/api/runs/{run_id}", f"/api/runs/{other['id']}", expect=200)

    # Health, metrics, the document itself.
    await api.call("GET", "/healthz", auth="none", expect=200)
    await api.call("GET", "/readyz", auth="none", expect=200)
    await api.call("GET", "/metrics", auth="none", expect=200)
    await api.call("GET", "/api/openapi.json", auth="none", expect=200)

    # Errors are problem details, under a status the document lists for the operation.
    await api.call("GET", "/api/runs", auth="none", expect=401)
    await api.call("GET", "/api/runs", "/api/runs?limit=0", expect=422)
    await api.call("GET", "/api/runs/{run_id}", "/api/runs/00000000-0000-4000-8000-000000000000", expect=404)
    await api.call("POST", "/api/runs", raw=b"{", expect=400)
    await api.call("POST", "/api/runs", body={"action": email_action(to=["a@example.com\r\nBcc: x@evil.com"])},
                   expect=422)
    await api.call("POST", "/api/runs", body={"action": email_action()}, headers={"Content-Type": "text/plain"},
                   expect=415)
    await api.call("POST", "/api/runs", body={"action": email_action(subject="Changed")}, headers=key, expect=409)
    await api.call("POST", "/api/runs/{run_id}/cancel", f"/api/runs/{run_id}/cancel", raw=b"[", expect=400)
    await api.call("POST", decisions, "/api/approvals/nope/decisions",
                   body={"decision": "approve", "reviewer": {"id": "rita"}}, auth="decider", expect=404)
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions", raw=b"[]", auth="decider",
                   expect=422)
    await api.call("POST", decisions, f"/api/approvals/{approval_id}/decisions",
                   body={"decision": "approve", "reviewer": {"id": "rita"}}, expect=403)
    await api.call("GET", "/api/jobs", "/api/jobs?status=lost", expect=422)
    await api.call("POST", "/api/jobs/{job_id}/retry", "/api/jobs/nope/retry", expect=404)

    # Keys and the audit log.
    created, _ = await api.call("POST", "/api/keys", body={"name": "reader", "scopes": ["runs:read"], "expires": "1d"},
                                expect=201)
    await api.call("POST", "/api/keys", body={"name": "reader", "scopes": ["runs:read"]}, expect=409)
    await api.call("POST", "/api/keys", body={"name": "x", "scopes": ["decide"], "reviewer": "rita"}, expect=403)
    await api.call("POST", "/api/keys", body={"name": "x", "scopes": []}, expect=422)
    await api.call("GET", "/api/keys", expect=200)
    await api.call("GET", "/api/keys", auth=created["key"], expect=403)
    await api.call("POST", "/api/keys/{name}/revoke", "/api/keys/reader/revoke", expect=200)
    await api.call("POST", "/api/keys/{name}/revoke", "/api/keys/nobody/revoke", expect=404)
    await api.call("GET", "/api/runs", auth=created["key"], expect=401)
    page, _ = await api.call("GET", "/api/audit", "/api/audit?limit=2", expect=200)
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["seq"]
    await api.call("GET", "/api/audit", "/api/audit?limit=0", expect=422)

    # Every operation was exercised with its success status.
    ok = {(m, p) for m, p, s in api.contract.checked if s in ("200", "201", "202")}
    assert ok == _documented(document), _documented(document) - ok


async def _wait_dead(api: Client, run_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        page, _ = await api.call("GET", "/api/jobs", f"/api/jobs?run_id={run_id}", expect=200)
        if page["items"]:
            return page["items"][0]
        assert time.monotonic() < deadline, "the callback job never reached the dead letters"
        await asyncio.sleep(0.05)
