"""A click is answered with a card built from the decision's own outcome, not read back
from the store: it must be exactly the view the store gives once the decision commits."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.deps import SERVICES
from service.domain import EMAIL_NEEDED, Channel, DecisionKind, DecisionRequest, Reviewer
from service.store import tables as t
from service.store.db import Tx
from service.teams.views import ApiLinks, decided_view, load_view

from .conftest import SmtpServer, StartService, email_action

SOURCES = [{"title": "Returns and refunds", "location": "returns-and-refunds.md", "snippet": "within 30 days"},
           {"title": "Ticket 4711"}]


@pytest.mark.parametrize("kind, reviewer, fields", [
    (DecisionKind.APPROVE, Reviewer(id="aad-sam", name="Sam Reviewer"), {}),
    (DecisionKind.EDIT, Reviewer(id="aad-kim", email="kim@example.com"), {"subject": "Edited", "body": "New body"}),
    (DecisionKind.REJECT, Reviewer(id="aad-lee"), {"reason": "Wrong tone"}),
], ids=["approve", "edit", "reject"])
async def test_decided_view_is_the_view_the_store_gives(
    start_service: StartService, smtp_server: SmtpServer, kind: DecisionKind, reviewer: Reviewer, fields: dict[str, Any]
) -> None:
    # No workers: the email job must not move the delivery on before the store is read.
    service = await start_service(smtp_server, worker_concurrency=0, policies={"refunds": {"reviewers": "anyone"}})
    accepted = await service.create_run({"action": email_action(cc=["boss@example.com"]),
                                         "requested_by": "ops@example.com", "policy": "refunds"})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    services = service.app[SERVICES]

    async def add_sources(tx: Tx) -> None:
        await tx.execute(t.approvals.update().where(t.approvals.c.id == approval_id).values(sources=SOURCES))

    await services.store.write(add_sources)
    outcome = await services.decisions.decide(DecisionRequest(approval_id, kind, reviewer, Channel.TEAMS, **fields))
    assert outcome.decided
    links = ApiLinks("http://countersign.test")
    view = decided_view(outcome, links)
    assert view == await load_view(services.store, approval_id, links)
    assert view.status == ("rejected" if kind is DecisionKind.REJECT else "approved") and len(view.sources) == 2


async def test_email_needed_is_asked_for_without_deciding_or_auditing(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await start_service(smtp_server, worker_concurrency=0)
    accepted = await service.create_run({"action": email_action(), "policy": {"reviewers": ["kim@example.com"]}})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    decisions = service.app[SERVICES].decisions
    request = DecisionRequest(approval_id, DecisionKind.APPROVE, Reviewer(id="aad-kim"), Channel.TEAMS,
                              can_resolve_email=True)

    asked = await decisions.decide(request)
    assert not asked.decided and asked.detail == {"reason": EMAIL_NEEDED} and asked.status.value == "pending"
    run = await service.run(accepted["id"])
    assert run["approvals"][0]["status"] == "pending" and not run["decisions"]
    assert [e["event"] for e in run["timeline"]] == ["run.created", "approval.requested"]

    # Without the flag (a channel that cannot look emails up) the same click is refused and audited.
    refused = await decisions.decide(DecisionRequest(approval_id, DecisionKind.APPROVE, Reviewer(id="aad-kim"),
                                                     Channel.TEAMS))
    assert not refused.decided and refused.detail["reason"] == "not_allowed"
    taken = await decisions.decide(DecisionRequest(approval_id, DecisionKind.APPROVE,
                                                   Reviewer(id="aad-kim", email="Kim@Example.com"), Channel.TEAMS))
    assert taken.decided
    run = await service.run(accepted["id"])
    assert [e["event"] for e in run["timeline"]][-3:] == ["decision.refused", "decision.approve", "run.delivering"]


async def test_the_server_side_card_check_sees_the_view_the_card_is_built_from(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """`views.card_refusal` rebuilds the card from the stored approval inside `decide`; it
    must be the very view `load_view` gives the posted card, or the two could disagree."""
    import sqlalchemy as sa

    from service.decisions import _approval_from_row
    from service.teams.views import pending_view

    service = await start_service(smtp_server, worker_concurrency=0)
    accepted = await service.create_run({"action": email_action(cc=["boss@example.com"]),
                                         "requested_by": "ops@example.com"})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    store = service.app[SERVICES].store

    async def add_sources(tx: Tx) -> None:
        await tx.execute(t.approvals.update().where(t.approvals.c.id == approval_id).values(sources=SOURCES))

    await store.write(add_sources)

    async def q(conn: Any) -> Any:
        return (await conn.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id))).first()

    links = ApiLinks("http://countersign.test")
    approval = _approval_from_row(await store.read(q))
    assert pending_view(approval, links) == await load_view(store, approval_id, links)
