"""A click is answered with a card built from the decision's own outcome, not read back
from the store: it must be exactly the view the store gives once the decision commits."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.deps import SERVICES
from service.approval_views import ApiLinks, decided_view, load_view
from service.domain import EMAIL_NEEDED, Channel, DecisionKind, DecisionRequest, Reviewer
from service.store import tables as t
from service.store.db import Tx

from .conftest import SmtpServer, StartService, email_action

SOURCES = [{"title": "Returns and refunds", "location": "returns-and-refunds.md", "snippet": "within 30 days"},
           {"title": "Ticket 4711"}]


@pytest.mark.parametrize("kind, reviewer, fields", [
    (DecisionKind.APPROVE, Reviewer(id="aad-sam", name="Sam Reviewer", email="sam@example.com"), {}),
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
    # An edit's card shows what it changed against the draft; the others show no changes.
    if kind is DecisionKind.EDIT:
        assert view.changes is not None and view.changes.subject == ("Your refund", "Edited")
        assert [(x.kind, x.text) for h in view.changes.hunks for x in h.lines] == [
            ("removed", line) for line in email_action()["body"].split("\n")] + [("added", "New body")]
    else:
        assert view.changes is None


async def test_after_an_edit_under_a_quorum_the_settling_vote_shows_the_changes_against_the_first_draft(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    service = await start_service(smtp_server, worker_concurrency=0, policies={
        "pair": {"reviewers": ["aad-kim", "aad-sam", "aad-lee"], "mode": "quorum", "required": 2}})
    accepted = await service.create_run({"action": email_action(), "policy": "pair"})
    approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]
    decisions, store = service.app[SERVICES].decisions, service.app[SERVICES].store
    links = ApiLinks("http://countersign.test")
    edited = "Dear Ann,\n\nYour refund of EUR 40 was issued today.\n\nKind regards,\nSupport"
    for reviewer, version in (("aad-kim", 1), ("aad-sam", 2)):  # two edits: each a new text
        outcome = await decisions.decide(DecisionRequest(approval_id, DecisionKind.EDIT, Reviewer(id=reviewer),
                                                         Channel.TEAMS, body=edited + "!" * (version - 1),
                                                         draft_version=version))
        assert outcome.decided and outcome.status.value == "pending" and outcome.drafted is None
    outcome = await decisions.decide(DecisionRequest(approval_id, DecisionKind.APPROVE, Reviewer(id="aad-lee"),
                                                     Channel.TEAMS, draft_version=3))
    assert outcome.decided and outcome.status.value == "approved"
    view = decided_view(outcome, links)
    assert view == await load_view(store, approval_id, links)
    assert view.changes is not None and view.changes.subject is None
    assert [(x.kind, x.text) for h in view.changes.hunks for x in h.lines if x.kind != "equal"] == [
        ("removed", "Your refund was issued today."), ("added", "Your refund of EUR 40 was issued today."),
        ("removed", "Support"), ("added", "Support!")]


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

    from service.approval_views import pending_view
    from service.decisions import _approval_from_row

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


async def test_a_known_email_is_read_inside_the_decision_only_where_it_is_needed(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """`DecisionRequest.known_email` (Teams: the stored member) decides a reviewer met before
    in one op; it is read only where the email matters, and it is checked like any email."""
    service = await start_service(smtp_server, worker_concurrency=0, policies={"refunds": {"reviewers": "anyone"}})
    decisions = service.app[SERVICES].decisions
    asked: list[str] = []

    def known(email: str | None, upn: str | None = None) -> Any:
        async def lookup(tx: Tx) -> tuple[str | None, str | None] | None:
            assert isinstance(tx, Tx)  # in the decision's own transaction
            asked.append(email or "-")
            return (email, upn) if email or upn else None
        return lookup

    async def pending(**fields: Any) -> tuple[str, str]:
        accepted = await service.create_run({"action": email_action(), **fields})
        return accepted["id"], (await service.run(accepted["id"]))["approvals"][0]["id"]

    def click(approval_id: str, who: str, lookup: Any) -> DecisionRequest:
        return DecisionRequest(approval_id, DecisionKind.APPROVE, Reviewer(id=f"aad-{who}"), Channel.TEAMS,
                               can_resolve_email=True, known_email=lookup)

    # Needed (a requester to tell apart): one call decides, with the stored email.
    run_id, approval_id = await pending(requested_by="ops@example.com", policy="refunds")
    taken = await decisions.decide(click(approval_id, "kim", known("kim@example.com")))
    assert taken.decided and taken.decision is not None and taken.decision.reviewer.email == "kim@example.com"
    assert (await service.run(run_id))["decisions"][0]["reviewer"]["email"] == "kim@example.com"
    # A UPN alone serves as the email, as the member lookup's would.
    _, approval_id = await pending(requested_by="ops@example.com", policy="refunds")
    taken = await decisions.decide(click(approval_id, "lee", known(None, "lee@corp.example.com")))
    assert taken.decided and taken.decision is not None
    assert (taken.decision.reviewer.email, taken.decision.reviewer.upn) == ("lee@corp.example.com",) * 2
    # The stored email of the requester refuses, as a looked-up one does.
    run_id, approval_id = await pending(requested_by="ops@example.com", policy="refunds")
    refused = await decisions.decide(click(approval_id, "ops", known("OPS@example.com")))
    assert not refused.decided and refused.detail["reason"] == "not_allowed"
    assert "requested this action" in refused.detail["message"]
    assert (await service.run(run_id))["decisions"] == []
    # Nothing stored: the channel is asked to look the email up, nothing decided.
    asked_for = await decisions.decide(click(approval_id, "sam", known(None)))
    assert not asked_for.decided and asked_for.detail == {"reason": EMAIL_NEEDED}
    assert asked == ["kim@example.com", "-", "OPS@example.com", "-"]
    # Not needed (no requester, reviewers by id): never read, and no email is recorded.
    run_id, approval_id = await pending(policy="refunds")
    taken = await decisions.decide(click(approval_id, "kim", known("kim@example.com")))
    assert taken.decided and taken.decision is not None and taken.decision.reviewer.email is None
    assert len(asked) == 4


async def test_the_card_fit_verdict_is_remembered_per_approval_and_revision(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """`CardFit` judges a stored approval once (when its card is posted, or at the first
    Approve) and gives the same answer as building the card: a short email fits, a long one
    does not, and a verdict for one approval or revision never serves another."""
    import sqlalchemy as sa

    from adaptive_cards import approvable_on_card, pending_card_and_fit
    from service.approval_views import pending_view
    from service.decisions import _approval_from_row
    from service.teams.card_fit import CardFit, card_refusal

    service = await start_service(smtp_server, worker_concurrency=0)
    store = service.app[SERVICES].store
    links = ApiLinks("http://countersign.test")

    async def stored(body: str) -> Any:
        accepted = await service.create_run({"action": email_action(body=body)})
        approval_id = (await service.run(accepted["id"]))["approvals"][0]["id"]

        async def q(conn: Any) -> Any:
            return (await conn.execute(sa.select(t.approvals).where(t.approvals.c.id == approval_id))).first()
        return _approval_from_row(await store.read(q))

    short, long = await stored("Dear Ann,\n\nDone."), await stored("A long paragraph. " * 3000)
    fit = CardFit(links)
    for approval, fits in ((short, True), (long, False)):
        view = await load_view(store, approval.id, links)
        assert pending_card_and_fit(view)[1] is fits is approvable_on_card(pending_view(approval, links))
        assert fit.fits(approval) is fits
    refusal = card_refusal(links, fit)
    assert refusal(short) is None and "longer than a Teams card can show" in (refusal(long) or "")
    # What posting remembered is what the click is judged by; keyed by id AND revision.
    fit.remember(short.id, short.revision, False)
    assert refusal(short) is not None
    from dataclasses import replace
    assert fit.fits(replace(short, revision=short.revision + 1)) is True
    small = CardFit(links, max_entries=2)
    for approval in (short, long, replace(short, revision=9)):
        small.fits(approval)
    assert len(small._verdicts) == 2 and (short.id, short.revision) not in small._verdicts
