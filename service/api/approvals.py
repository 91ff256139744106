"""`POST /api/approvals/{id}/decisions`: deciding through the API, with a key that may.

A `decide` key is bound to one reviewer and decides as that reviewer (a `reviewer` in the
body must be absent or the same). A `decide:on-behalf` key names the reviewer; it is
recorded as the actor, on behalf of the reviewer. Either way the decision goes through the
same path and policy checks as a Teams click, with channel `api`.
"""

from __future__ import annotations

from aiohttp import web

from ..domain import Channel, DecisionKind, DecisionRequest, DelegationRequest, Reviewer
from ..scopes import Principal, Scope
from .auth import missing_scope
from .body import parse, read_authenticated
from .deps import SERVICES
from .errors import ApiError
from .params import path_id
from .schemas import DecisionIn, DelegationIn


def _reviewer(principal: Principal, data: DecisionIn | DelegationIn) -> tuple[Reviewer, str | None]:
    """(who decides, the key deciding on their behalf or None)."""
    given = data.reviewer
    if principal.has(Scope.DECIDE) and principal.reviewer:
        bound = principal.reviewer
        if given is not None and given.name is not None:
            raise ApiError(422, "validation_error", "a decide key decides as its own reviewer, under that name",
                           [{"field": "reviewer.name", "message": "leave it out: the key names its reviewer"}])
        if given is None or (given.id.casefold() == bound.casefold()
                             and (given.email is None or given.email.casefold() == bound.casefold())):
            return Reviewer(id=bound, email=bound if "@" in bound else None), None
        if not principal.has(Scope.DECIDE_ON_BEHALF):
            raise ApiError(403, "reviewer_mismatch",
                           f"this key decides as {bound!r} only; leave `reviewer` out or name that reviewer",
                           [{"field": "reviewer", "message": f"must be absent or {bound!r}"}])
    if principal.has(Scope.DECIDE_ON_BEHALF):
        if given is None:
            raise ApiError(422, "validation_error", "a decide:on-behalf key must name the reviewer",
                           [{"field": "reviewer", "message": "required: the reviewer this decision is for"}])
        return Reviewer(id=given.id, name=given.name, email=given.email), principal.actor
    raise missing_scope(principal, Scope.DECIDE)


async def decide(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, (Scope.DECIDE, Scope.DECIDE_ON_BEHALF))
    data = parse(DecisionIn, body, request)
    reviewer, on_behalf_by = _reviewer(principal, data)
    with services.foreground.request():
        outcome = await services.decisions.decide(DecisionRequest(
            approval_id=path_id(request, "approval_id", "approval"), kind=DecisionKind(data.decision),
            reviewer=reviewer, channel=Channel.API, reason=data.reason, subject=data.subject, body=data.body,
            on_behalf_by=on_behalf_by, credential=None if on_behalf_by else principal.actor,
            draft_version=data.draft_version,
        ))
    if not outcome.decided:
        reason = outcome.detail.get("reason")
        if reason == "not_allowed":
            raise ApiError(403, "not_allowed", outcome.detail["message"])
        if reason == "draft_changed":
            raise ApiError(409, "draft_changed", outcome.detail["message"])
        if reason == "already_voted":
            raise ApiError(409, "already_voted", outcome.detail["message"],
                           extensions={"first_vote": outcome.detail["first_vote"]})
        raise ApiError(409, "already_decided", outcome.detail["message"])
    assert outcome.decision is not None
    return web.json_response({"approval_id": outcome.approval_id, "run_id": outcome.run_id,
                              "status": outcome.status.value, "decision_id": outcome.decision.id,
                              **({"progress": outcome.tally.to_dict()} if outcome.tally is not None else {})})


_DELEGATION_STATUS = {"already_decided": 409, "already_voted": 409, "not_allowed": 403, "invalid_delegate": 422}


async def delegate(request: web.Request) -> web.Response:
    """`POST /api/approvals/{id}/delegations`: hand one's vote to another person the policy allows."""
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, (Scope.DECIDE, Scope.DECIDE_ON_BEHALF))
    data = parse(DelegationIn, body, request)
    reviewer, on_behalf_by = _reviewer(principal, data)
    with services.foreground.request():
        outcome = await services.decisions.delegate(DelegationRequest(
            approval_id=path_id(request, "approval_id", "approval"), reviewer=reviewer, to=data.to,
            channel=Channel.API, on_behalf_by=on_behalf_by, credential=None if on_behalf_by else principal.actor))
    if not outcome.delegated:
        reason = outcome.detail["reason"]
        errors = [{"field": "to", "message": outcome.detail["message"]}] if reason == "invalid_delegate" else None
        raise ApiError(_DELEGATION_STATUS[reason], reason, outcome.detail["message"], errors)
    return web.json_response({"approval_id": outcome.approval_id, "run_id": outcome.run_id, "delegate_to": data.to.strip(),
                              "slot": outcome.slot}, status=201)
