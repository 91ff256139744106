"""Credentials with scopes: who may decide, as whom, and what each credential may touch.

Each attack from the trust-boundaries review is tried over real HTTP against the running
service, and each must fail without changing anything.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.api.routes import ROUTES
from service.approval_views import ApiLinks, load_view
from service.scopes import Scope
from service.store import tables as t

from .conftest import API_TOKEN, AUDIT_KEY, WEBHOOK_SECRET, Service, StartService, email_action, signed
from .peers.smtp import SmtpServer

DECIDE = "/api/approvals/{}/decisions"


async def pending(service: Service, **run: Any) -> tuple[str, str]:
    accepted = await service.create_run({"action": email_action(), **run})
    return accepted["id"], (await service.run(accepted["id"]))["approvals"][0]["id"]


async def assert_untouched(service: Service, run_id: str, events_before: int) -> None:
    run = await service.run(run_id)
    assert run["status"] == "awaiting_approval" and run["decisions"] == []
    assert run["approvals"][0]["status"] == "pending"
    assert len(run["timeline"]) == events_before


async def test_webhook_secret_cannot_decide_as_anyone(service: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(service)
    before = len((await service.run(run_id))["timeline"])
    body = json.dumps({"decision": "approve", "reviewer": {"id": "ceo@example.com"}}).encode()
    status, problem, _ = await service.request("POST", DECIDE.format(approval_id), raw=body, auth="none",
                                               headers=signed("POST", DECIDE.format(approval_id), body))
    assert status == 403, problem
    assert problem["type"].endswith("/missing_scope") and problem["scope"] == "decide"
    assert "webhook" in problem["detail"]
    await assert_untouched(service, run_id, before)

    async def remembered(conn: Any) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.signature_uses))).scalar_one()

    assert await service.app[SERVICES].store.read(remembered) == 0  # a refused request is not even remembered
    await asyncio.sleep(0.2)
    assert smtp_server.messages() == []


async def test_operator_token_cannot_decide_by_default(service: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(service)
    before = len((await service.run(run_id))["timeline"])
    status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "ceo@example.com"}},
                                           auth="token")
    assert status == 403 and problem["scope"] == "decide", problem
    await assert_untouched(service, run_id, before)


async def test_operator_token_decides_on_behalf_only_when_configured(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server, api_token_may_decide_on_behalf=True)
    run_id, approval_id = await pending(service)
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita@example.com"}},
                                     auth="token")
    assert status == 200
    run = await service.wait_status(run_id, "completed")
    [decision] = run["decisions"]
    assert decision["actor"] == "operator-token" and decision["on_behalf_of"] == "rita@example.com"


async def test_decide_key_decides_only_as_its_reviewer(service: Service, smtp_server: SmtpServer) -> None:
    key = await service.make_key("rita", Scope.DECIDE, reviewer="rita@example.com")
    run_id, approval_id = await pending(service, policy={"reviewers": ["rita@example.com", "ceo@example.com"]})
    before = len((await service.run(run_id))["timeline"])
    for reviewer in ({"id": "ceo@example.com"}, {"id": "rita@example.com", "email": "ceo@example.com"}):
        status, problem = await service.decide(approval_id, {"decision": "approve", "reviewer": reviewer}, auth=key)
        assert status == 403 and problem["type"].endswith("/reviewer_mismatch"), problem
        assert problem["errors"][0]["field"] == "reviewer"
    await assert_untouched(service, run_id, before)

    status, _ = await service.decide(approval_id, {"decision": "approve"}, auth=key)
    assert status == 200
    run = await service.wait_status(run_id, "completed")
    [decision] = run["decisions"]
    assert decision["reviewer"]["id"] == "rita@example.com"
    assert decision["actor"] == "rita@example.com" and decision["on_behalf_of"] is None
    [event] = [e for e in run["timeline"] if e["event"] == "decision.approve"]
    assert event["actor"] == "rita@example.com" and event["data"]["credential"] == "key:rita"


async def test_decide_key_is_still_held_to_the_policy(service: Service) -> None:
    key = await service.make_key("sam", Scope.DECIDE, reviewer="sam@example.com")
    run_id, approval_id = await pending(service, policy={"reviewers": ["rita@example.com"]})
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=key)
    assert status == 403 and problem["type"].endswith("/not_allowed")
    run = await service.run(run_id)
    assert run["decisions"] == [] and run["status"] == "awaiting_approval"
    # The requester's own key cannot approve her request either.
    key = await service.make_key("ann", Scope.DECIDE, reviewer="ann@example.com")
    run_id, approval_id = await pending(service, requested_by="ann@example.com")
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=key)
    assert status == 403 and "self-approval" in problem["detail"]


async def test_on_behalf_decision_names_the_key_everywhere(service: Service, smtp_server: SmtpServer) -> None:
    run_id, approval_id = await pending(service)
    status, problem = await service.decide(approval_id, {"decision": "approve"})
    assert status == 422 and problem["errors"][0]["field"] == "reviewer"
    status, _ = await service.decide(approval_id, {"decision": "approve", "reviewer": {"id": "rita@example.com"}})
    assert status == 200
    run = await service.wait_status(run_id, "completed")
    [decision] = run["decisions"]
    assert decision["actor"] == "key:decider-1" and decision["on_behalf_of"] == "rita@example.com"
    [event] = [e for e in run["timeline"] if e["event"] == "decision.approve"]
    assert event["actor"] == "key:decider-1" and event["data"]["on_behalf_of"] == "rita@example.com"
    view = await load_view(service.app[SERVICES].store, approval_id, ApiLinks("http://countersign.test"))
    assert view.decided_by == "key:decider-1 on behalf of rita@example.com"


def _route_path(path: str) -> str:
    return re.sub(r"{\w+}", "00000000-0000-0000-0000-000000000000", path).replace("{name}", "nobody")


SCOPED = [r for r in ROUTES if r.scopes]


@pytest.mark.parametrize("route", SCOPED, ids=[f"{r.method} {r.path}" for r in SCOPED])
async def test_every_route_refuses_a_key_without_its_scope(service: Service, route: Any) -> None:
    others = [s for s in Scope if s not in route.scopes and s is not Scope.DECIDE]
    key = await service.make_key("narrow", *others)
    body = b"{}" if route.method == "POST" else b""
    status, problem, _ = await service.request(route.method, _route_path(route.path), raw=body, auth=key)
    assert status == 403, (route.path, problem)
    assert problem["scope"] == route.scopes[0].value
    # And a key holding it gets past the scope check (whatever the request then says).
    key = await service.make_key("wide", *route.scopes, reviewer="rita" if Scope.DECIDE in route.scopes else None)
    status, problem, _ = await service.request(route.method, _route_path(route.path), raw=body, auth=key)
    assert status != 403 or problem["type"].endswith("/not_allowed"), (route.path, problem)


@pytest.mark.parametrize("route", SCOPED, ids=[f"{r.method} {r.path}" for r in SCOPED])
async def test_webhook_secret_grants_runs_create_and_read_only(service: Service, route: Any) -> None:
    path = _route_path(route.path)
    body = b"{}" if route.method == "POST" else b""
    status, problem, _ = await service.request(route.method, path, raw=body, auth="none",
                                               headers=signed(route.method, path, body))
    if set(route.scopes) & {Scope.RUNS_CREATE, Scope.RUNS_READ}:
        assert status not in (401, 403), problem
    else:
        assert status == 403 and problem["type"].endswith("/missing_scope"), problem


async def test_keys_api_grants_only_scopes_the_caller_holds(service: Service) -> None:
    # The operator token holds keys:admin but no decide scope: it cannot mint a reviewer.
    status, problem, _ = await service.request("POST", "/api/keys", body={
        "name": "rogue", "scopes": ["decide:on-behalf"]})
    assert status == 403 and problem["type"].endswith("/scope_not_grantable") and problem["scope"] == "decide:on-behalf"
    admin = await service.make_key("admin", Scope.KEYS_ADMIN, Scope.RUNS_READ)
    status, problem, _ = await service.request("POST", "/api/keys", auth=admin, body={
        "name": "writer", "scopes": ["runs:read", "runs:create"]})
    assert status == 403 and problem["errors"][0]["field"] == "scopes"
    status, listed, _ = await service.request("GET", "/api/keys")
    assert {k["name"] for k in listed["items"]} == {"decider-1", "admin"}

    status, created, _ = await service.request("POST", "/api/keys", auth=admin, body={
        "name": "reader", "scopes": ["runs:read"], "expires": "90d"})
    assert status == 201, created
    assert created["key"].startswith("csk_") and created["created_by"] == "key:admin"
    status, _, _ = await service.request("GET", "/api/runs", auth=created["key"])
    assert status == 200
    status, listed, _ = await service.request("GET", "/api/keys")
    assert all("key" not in k for k in listed["items"])
    assert created["key"] not in json.dumps(listed)

    for bad, field in (({"name": "x y", "scopes": ["runs:read"]}, "name"),
                       ({"name": "x", "scopes": ["runs:write"]}, "scopes[0]"),
                       ({"name": "x", "scopes": []}, "scopes"),
                       ({"name": "x", "scopes": ["runs:read"], "expires": "soon"}, "expires"),
                       ({"name": "reader", "scopes": ["runs:read"]}, "name")):
        status, problem, _ = await service.request("POST", "/api/keys", body=bad)
        assert status in (409, 422) and problem["errors"][0]["field"] == field, (bad, problem)
    status, listed, _ = await service.request("GET", "/api/keys")
    assert {k["name"] for k in listed["items"]} == {"decider-1", "admin", "reader"}


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL: one serve per SQLite file
async def test_revoked_and_expired_keys_are_refused_on_every_replica_and_audited(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    first = await start_service(smtp_server)
    second = await start_service(smtp_server)  # another replica on the same database
    key = await first.make_key("ops", Scope.RUNS_READ)
    status, _, _ = await second.request("GET", "/api/runs", auth=key)
    assert status == 200
    status, revoked, _ = await first.request("POST", "/api/keys/ops/revoke")
    assert status == 200 and revoked["status"] == "revoked" and revoked["revoked_by"] == "operator-token"
    status, problem, _ = await second.request("GET", "/api/runs", auth=key)
    assert status == 401 and "revoked" in problem["detail"]

    created = await second.app[SERVICES].keys.create(name="brief", scopes=frozenset({Scope.RUNS_READ}), reviewer=None,
                                                     expires_in=timedelta(seconds=1), created_by="test")
    await asyncio.sleep(1.1)
    status, problem, _ = await first.request("GET", "/api/runs", auth=created.secret)
    assert status == 401 and "expired" in problem["detail"]

    status, page, _ = await first.request("GET", "/api/audit")
    kinds = [(e["kind"], e["actor"], e["data"].get("status")) for e in page["items"] if e["kind"].startswith("key.")]
    assert ("key.created", "test", None) in kinds
    assert ("key.revoked", "operator-token", None) in kinds
    assert ("key.refused", "key:ops", "revoked") in kinds and ("key.refused", "key:brief", "expired") in kinds
    assert key not in json.dumps(page) and created.secret not in json.dumps(page)


async def test_a_revoked_key_presented_again_and_again_is_audited_once_a_minute_counted_and_summarised(
        start_service: StartService, smtp_server: SmtpServer) -> None:
    service = await start_service(smtp_server)
    key = await service.make_key("old", Scope.RUNS_READ)
    assert (await service.request("POST", "/api/keys/old/revoke"))[0] == 200

    async def suppressed() -> float:
        _, text, _ = await service.request("GET", "/metrics", auth="none")
        line = next((line for line in text.splitlines()
                     if line.startswith('countersign_audit_suppressed_total{kind="key.refused"}')), None)
        return float(line.split()[-1]) if line else 0.0

    before = await suppressed()
    for _ in range(10):
        status, problem, _ = await service.request("GET", "/api/runs", auth=key)
        assert status == 401 and "revoked" in problem["detail"]
    assert await suppressed() - before == 9
    status, page, _ = await service.request("GET", "/api/audit")
    assert [e["actor"] for e in page["items"] if e["kind"] == "key.refused"] == ["key:old"]

    assert service.stop is not None
    await service.stop()  # the nine left out are said in the log at shutdown
    again = await start_service(smtp_server)
    status, page, _ = await again.request("GET", "/api/audit")
    [summary] = [e for e in page["items"] if e["kind"] == "audit.suppressed"]
    assert summary["actor"] == "key:old" and summary["data"]["summarises"] == "key.refused"
    assert summary["data"]["suppressed"] == 9 and summary["data"]["of"]["status"] == "revoked"
    assert key not in json.dumps(page)


def _cli(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
           "COUNTERSIGN_AUDIT_KEY": AUDIT_KEY}
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_cli_keys_create_list_revoke(tmp_path: Path, start_service: StartService, smtp_server: SmtpServer,
                                           db_url: str) -> None:
    service = await start_service(smtp_server)  # migrates the database the CLI then uses
    made = _cli(tmp_path, db_url, "create", "--name", "rita", "--scope", "decide", "--reviewer", "rita@example.com",
                "--expires", "90d")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"csk_[A-Za-z0-9_-]{43}", secret)

    async def stored(conn: Any) -> list[Any]:
        return [tuple(r) for r in await conn.execute(sa.select(t.api_keys).where(t.api_keys.c.name == "rita"))]

    [row] = await service.app[SERVICES].store.read(stored)  # only its hash is stored
    assert secret not in json.dumps(row, default=str) and hashlib.sha256(secret.encode()).hexdigest() in row

    refused = _cli(tmp_path, db_url, "create", "--name", "bad", "--scope", "decide")
    assert refused.returncode == 2 and "--reviewer" in refused.stderr
    refused = _cli(tmp_path, db_url, "create", "--name", "bad", "--scope", "runs:write")
    assert refused.returncode == 2 and "unknown scope 'runs:write'" in refused.stderr

    _, approval_id = await pending(service, policy={"reviewers": ["rita@example.com"]})
    listed = _cli(tmp_path, db_url, "list")
    assert listed.returncode == 0 and "rita" in listed.stdout and "active" in listed.stdout
    assert secret not in listed.stdout
    assert _cli(tmp_path, db_url, "revoke", "rita").returncode == 0
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=secret)
    assert status == 401 and "revoked" in problem["detail"]
    assert _cli(tmp_path, db_url, "revoke", "nobody").returncode == 1


async def test_the_api_token_and_webhook_secret_never_show_in_answers(service: Service) -> None:
    status, page, _ = await service.request("GET", "/api/keys")
    text = json.dumps(page)
    assert API_TOKEN not in text and WEBHOOK_SECRET not in text
