"""Attacks on scoped credentials and v2 signatures (security review of issue 10).

Each test tries one way around the new credentials over real HTTP against the running
service (or the real CLI on the same database) and asserts what a correct service must
answer. Every test here FAILS on the main branch it was written against: each shows a hole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.approval_views import ApiLinks, load_view
from service.scopes import Scope
from service.store import tables as t

from .conftest import AUDIT_KEY, Service, StartService, email_action, signed
from .peers.smtp import SmtpServer

DECIDE = "/api/approvals/{}/decisions"


async def pending(service: Service, **run: Any) -> tuple[str, str]:
    accepted = await service.create_run({"action": email_action(), **run})
    return accepted["id"], (await service.run(accepted["id"]))["approvals"][0]["id"]


async def key_names(service: Service) -> list[str]:
    async def q(conn: Any) -> list[str]:
        return [r.name for r in await conn.execute(sa.select(t.api_keys.c.name))]

    return await service.app[SERVICES].store.read(q)


async def audit_count(service: Service) -> int:
    async def q(conn: Any) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.audit_events))).scalar_one()

    return await service.app[SERVICES].store.read(q)


async def test_a_decide_key_with_keys_admin_cannot_mint_a_decide_key_for_another_reviewer(service: Service) -> None:
    """`keys:admin` "can grant only scopes it holds itself" is checked on scope names only: a key
    holding `decide` bound to alice can create a `decide` key bound to ANY reviewer, and so
    decide as the CEO. The reviewer binding is part of what `decide` grants."""
    run_id, approval_id = await pending(service, policy={"reviewers": ["ceo@example.com"]})
    alice = await service.make_key("alice-tools", Scope.KEYS_ADMIN, Scope.DECIDE, reviewer="alice@example.com")
    # alice herself may not decide here
    status, problem = await service.decide(approval_id, {"decision": "approve"}, auth=alice)
    assert status == 403, problem
    events = await audit_count(service)

    status, made, _ = await service.request("POST", "/api/keys", auth=alice, body={
        "name": "as-ceo", "scopes": ["decide"], "reviewer": "ceo@example.com"})
    assert status == 403, made  # main: 201, and the new key approves as ceo@example.com
    assert made["errors"][0]["field"] == "reviewer"
    assert "as-ceo" not in await key_names(service)
    assert await audit_count(service) == events
    run = await service.run(run_id)
    assert run["decisions"] == [] and run["approvals"][0]["status"] == "pending"


async def test_a_keys_admin_key_cannot_mint_a_key_that_outlives_it(service: Service) -> None:
    """A `keys:admin` key made to expire in an hour creates a child with `keys:admin` and no
    expiry: the holder keeps admin rights forever, and revoking or expiring the parent does
    not touch the child. A key should not grant a longer life than its own."""
    parent = await service.app[SERVICES].keys.create(
        name="contractor", scopes=frozenset({Scope.KEYS_ADMIN, Scope.RUNS_READ}), reviewer=None,
        expires_in=timedelta(hours=1), created_by="test")
    assert parent.key.expires_at is not None
    status, made, _ = await service.request("POST", "/api/keys", auth=parent.secret, body={
        "name": "forever", "scopes": ["keys:admin", "runs:read"]})
    if status == 201:  # main: 201 with expires_at null
        assert made["expires_at"] is not None, made
        assert datetime.fromisoformat(made["expires_at"]) <= parent.key.expires_at, made
    else:
        assert status in (403, 422), made
        assert made["errors"][0]["field"] == "expires"
        assert "forever" not in await key_names(service)


@pytest.mark.parametrize("expires", ["99999999999d", "99999999d", "9999999999w"])
async def test_a_huge_key_expiry_is_a_422_not_a_500(service: Service, expires: str) -> None:
    """`expires` overflows timedelta/datetime: OverflowError, answered 500 (logged as unhandled)."""
    status, problem, _ = await service.request("POST", "/api/keys", body={
        "name": "long", "scopes": ["runs:read"], "expires": expires})
    assert status == 422, problem  # main: 500
    assert problem["errors"][0]["field"] == "expires"
    assert "long" not in await key_names(service)


def _cli(tmp_path: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_DATABASE_URL": db_url,
           "COUNTERSIGN_AUDIT_KEY": AUDIT_KEY}
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_cli_keys_create_refuses_a_huge_expiry_without_a_traceback(
        tmp_path: Path, start_service: StartService, smtp_server: SmtpServer, db_url: str) -> None:
    """`--expires 99999999999d` crashes the CLI with an OverflowError traceback."""
    service = await start_service(smtp_server)  # migrates the database the CLI uses
    crashed = _cli(tmp_path, db_url, "create", "--name", "huge", "--scope", "runs:read", "--expires", "99999999999d")
    assert "Traceback" not in crashed.stderr, crashed.stderr  # main: OverflowError traceback
    assert crashed.returncode == 2 and "--expires" in crashed.stderr
    assert "huge" not in await key_names(service)


async def test_cli_keys_create_refuses_a_name_ending_in_a_newline(
        tmp_path: Path, start_service: StartService, smtp_server: SmtpServer, db_url: str) -> None:
    """`--name $'ops\\n'` passes NAME_PATTERN (Python's `$` matches before a final newline; the
    API's pydantic pattern does not), so a key is stored whose name prints like 'ops' in
    `keys list` but which `keys revoke ops` cannot find."""
    service = await start_service(smtp_server)
    made = _cli(tmp_path, db_url, "create", "--name", "ops\n", "--scope", "runs:read")
    assert made.returncode == 2, made.stdout  # main: 0, key 'ops\n' created
    assert "ops\n" not in await key_names(service)


async def test_an_on_behalf_rejection_names_the_key_as_actor_everywhere(service: Service) -> None:
    """An on-behalf approval is recorded as actor = the key; an on-behalf REJECTION writes the
    `run.rejected` audit event (and the approval's decided_by, and the run timeline) with the
    reviewer as the actor, as if rita had acted herself."""
    run_id, approval_id = await pending(service)
    status, answer = await service.decide(approval_id, {
        "decision": "reject", "reason": "wrong amount", "reviewer": {"id": "rita@example.com"}})
    assert status == 200, answer
    run = await service.wait_status(run_id, "rejected")
    [decision] = run["decisions"]
    assert decision["actor"] == "key:decider-1"
    status, page, _ = await service.request("GET", "/api/audit?limit=5000")
    mine = [(e["kind"], e["actor"]) for e in page["items"] if e["run_id"] == run_id]
    # rita never used any credential: nothing on this run may name her as the actor
    assert not [m for m in mine if m[1] == "rita@example.com"], mine  # main: ('run.rejected', 'rita@example.com')


async def test_a_decide_key_cannot_put_another_name_on_the_card(service: Service) -> None:
    """A `decide` key bound to rita may send `reviewer: {"id": <rita>, "name": <anything>}`: the
    id is checked, the name is stored as given and is what the card shows first, so the card
    says the decision was taken by "ceo@example.com". The identity checked must be what is shown."""
    run_id, approval_id = await pending(service, policy={"reviewers": ["rita@example.com", "ceo@example.com"]})
    rita = await service.make_key("rita", Scope.DECIDE, reviewer="rita@example.com")
    status, answer = await service.decide(approval_id, {
        "decision": "reject", "reason": "no", "reviewer": {"id": "rita@example.com", "name": "ceo@example.com"}},
        auth=rita)
    if status == 200:  # main: 200, the card reads "ceo@example.com"
        view = await load_view(service.app[SERVICES].store, approval_id, ApiLinks("http://countersign.test"))
        assert "rita@example.com" in (view.decided_by or ""), view.decided_by
        assert "ceo@example.com" not in (view.decided_by or ""), view.decided_by
    else:
        assert status in (403, 422) and answer["errors"][0]["field"].startswith("reviewer"), answer
        run = await service.run(run_id)
        assert run["decisions"] == [] and run["approvals"][0]["status"] == "pending"


async def test_a_replayed_signature_cannot_borrow_another_callers_idempotency_key(service: Service) -> None:
    """The replay exception checks only that the Idempotency-Key was seen somewhere, and the
    header is not signed: a captured signed trigger, replayed with ANOTHER caller's key,
    answers that caller's run (id and status), and with any other body's key a 409 whose
    detail names that run. A replay should be admitted only with the key it was first sent
    with (remember it with the signature, or sign the header)."""
    theirs = await service.create_run({"action": email_action(subject="Other team")},
                                      headers={"Idempotency-Key": "ticket-4711"})
    body = json.dumps({"action": email_action()}).encode()
    captured = signed("POST", "/api/runs", body)
    status, first, _ = await service.request("POST", "/api/runs", raw=body, auth="none",
                                             headers={**captured, "Idempotency-Key": "mine-1"})
    assert status == 202, first
    status, replayed, _ = await service.request("POST", "/api/runs", raw=body, auth="none",
                                                headers={**captured, "Idempotency-Key": "ticket-4711"})
    assert status == 401, replayed  # main: 409 naming the other caller's run
    assert theirs["id"] not in json.dumps(replayed)
