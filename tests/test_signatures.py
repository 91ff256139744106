"""Signed requests (v2): bound to method, path, query and body, accepted once, and not
confused with our own outgoing callbacks. Each replay from the review is tried over HTTP."""

from __future__ import annotations

import json
import logging
import time

import pytest
import sqlalchemy as sa

from service.api.deps import SERVICES
from service.signing import HEADER, canonical_v2, sign, sign_v2
from service.store import tables as t

from .conftest import WEBHOOK_SECRET, Service, StartService, email_action, signed
from .peers.smtp import SmtpServer

BODY = json.dumps({"action": email_action()}).encode()


async def run_count(service: Service) -> int:
    async def q(conn: object) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.runs))).scalar_one()  # type: ignore[attr-defined]

    return await service.app[SERVICES].store.read(q)


async def test_a_signed_trigger_sent_three_times_creates_one_run(service: Service) -> None:
    headers = signed("POST", "/api/runs", BODY)
    status, first, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 202
    for _ in range(2):
        status, problem, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
        assert status == 401 and "already used" in problem["detail"], problem
    assert await run_count(service) == 1


async def test_a_replay_with_a_known_idempotency_key_answers_its_run(service: Service) -> None:
    now = int(time.time())
    headers = {**signed("POST", "/api/runs", BODY, at=now), "Idempotency-Key": "ticket-9"}
    status, first, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 202
    status, again, answer = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 202 and again["id"] == first["id"] and answer["Idempotent-Replayed"] == "true"
    # A replay naming a key nobody used is still a replay.
    # Another signature of the same body (another second): a new request, once.
    headers = {**signed("POST", "/api/runs", BODY, at=now - 10), "Idempotency-Key": "ticket-10"}
    status, _, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 202
    headers["Idempotency-Key"] = "ticket-11"
    status, problem, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 401
    assert await run_count(service) == 2


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)  # replicas need PostgreSQL: one serve per SQLite file
async def test_a_replay_is_refused_by_another_replica(start_service: StartService, smtp_server: SmtpServer) -> None:
    first = await start_service(smtp_server)
    second = await start_service(smtp_server)
    headers = signed("POST", "/api/runs", BODY)
    status, _, _ = await first.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 202
    status, problem, _ = await second.request("POST", "/api/runs", raw=BODY, auth="none", headers=headers)
    assert status == 401 and "already used" in problem["detail"]
    assert await run_count(first) == 1


async def test_a_signature_is_bound_to_method_path_and_query(service: Service) -> None:
    run = await service.create_run({"action": email_action()})
    run_path = f"/api/runs/{run['id']}"
    # The signature of an empty body, made for a GET, is not a signature for a cancel.
    read = signed("GET", run_path, b"")
    status, problem, _ = await service.request("POST", f"{run_path}/cancel", raw=b"", auth="none", headers=read)
    assert status == 401 and "does not match" in problem["detail"]
    # Nor for another run's read, nor for the same list with another query.
    status, _, _ = await service.request("GET", "/api/runs/00000000-0000-0000-0000-000000000000", raw=b"",
                                         auth="none", headers=read)
    assert status == 401
    listed = signed("GET", "/api/runs?status=completed", b"")
    status, _, _ = await service.request("GET", "/api/runs?status=drafting", raw=b"", auth="none", headers=listed)
    assert status == 401
    status, _, _ = await service.request("GET", "/api/runs?status=completed", raw=b"", auth="none", headers=listed)
    assert status == 200
    assert (await service.run(run["id"]))["status"] == "awaiting_approval"


async def test_v1_signatures_are_refused_unless_accepted_for_migration(
        start_service: StartService, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    service = await start_service(smtp_server)
    v1 = {HEADER: sign(WEBHOOK_SECRET, int(time.time()), BODY)}
    status, problem, _ = await service.request("POST", "/api/runs", raw=BODY, auth="none", headers=v1)
    assert status == 401 and "v2" in problem["detail"]
    assert await run_count(service) == 0
    assert service.stop is not None
    await service.stop()  # the same database, restarted with v1 accepted

    migrating = await start_service(smtp_server, webhook_accept_v1=True)
    with caplog.at_level(logging.WARNING):
        status, _, _ = await migrating.request("POST", "/api/runs", raw=BODY, auth="none", headers=v1)
    assert status == 202
    assert any("deprecated v1" in r.getMessage() for r in caplog.records)
    # Even then, once only.
    status, _, _ = await migrating.request("POST", "/api/runs", raw=BODY, auth="none", headers=v1)
    assert status == 401


async def test_our_own_callback_replayed_to_the_api_is_refused(service: Service) -> None:
    """A callback receiver holds a body and signature we made; neither opens our API."""
    callback = json.dumps({"event": "run.completed", "run": {"id": "x"}}, separators=(",", ":")).encode()
    header = {HEADER: sign(WEBHOOK_SECRET, int(time.time()), callback)}
    for method, path in (("POST", "/api/jobs/00000000-0000-0000-0000-000000000000/retry"), ("POST", "/api/runs")):
        status, problem, _ = await service.request(method, path, raw=callback, auth="none", headers=header)
        assert status == 401, (path, problem)


async def test_the_canonical_string_is_the_documented_one() -> None:
    """The README's Python and openssl examples compute exactly this."""
    assert canonical_v2(1700000000, "post", "/api/runs", "", b'{"a":1}') == b'1700000000\nPOST\n/api/runs\n\n{"a":1}'
    assert sign_v2("s3cret", 1700000000, "POST", "/api/runs", "", b'{"a":1}') == (
        "t=1700000000,v2=" + __import__("hmac").new(b"s3cret", b'1700000000\nPOST\n/api/runs\n\n{"a":1}',
                                                     "sha256").hexdigest())
