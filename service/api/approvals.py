"""`POST /api/approvals/{id}/decisions`: deciding through the API, with a key that may.

A `decide` key is bound to one reviewer and decides as that reviewer (a `reviewer` in the
body must be absent or the same). A `decide:on-behalf` key names the reviewer; it is
recorded as the actor, on behalf of the reviewer. Either way the decision goes through the
same path and policy checks as a Teams click, with channel `api`.
`POST /api/approvals/{id}/delegations` hands the reviewer's vote over, read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiohttp import web

from ..domain import Channel, DecisionKind, DecisionRequest, DelegationRequest, Reviewer
from ..scopes import Principal, Scope
from .auth import missing_scope
from .body import parse, read_authenticated
from .deps import SERVICES, Services
from .errors import ApiError
from .params import path_id
from .schemas import DecisionIn, DelegationIn

M = TypeVar("M", DecisionIn, DelegationIn)


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


@dataclass(frozen=True, slots=True)
class _Asked(Generic[M]):
    """A reviewer's request about one approval, as both routes read it."""

    services: Services
    data: M
    approval_id: str
    reviewer: Reviewer
    on_behalf_by: str | None  # the decide:on-behalf key, or None
    credential: str | None  # the decide key a reviewer used, or None


async def _asked(request: web.Request, schema: type[M]) -> _Asked[M]:
    """The body (parsed as `schema`), the credential, the reviewer it speaks for and the
    approval's id, checked in that order (the first error found is the answer)."""
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, (Scope.DECIDE, Scope.DECIDE_ON_BEHALF))
    data = parse(schema, body, request)
    reviewer, on_behalf_by = _reviewer(principal, data)
    return _Asked(services, data, path_id(request, "approval_id", "approval"), reviewer, on_behalf_by,
                  None if on_behalf_by else principal.actor)


# Why the decision path refused a decision or a delegation -> the answer's status.
_REFUSED = {"not_allowed": 403, "already_decided": 409, "already_voted": 409, "draft_changed": 409,
            "invalid_delegate": 422}


def _refused(detail: dict[str, Any]) -> ApiError:
    reason = detail.get("reason")
    code = reason if isinstance(reason, str) and reason in _REFUSED else "already_decided"
    errors = [{"field": "to", "message": detail["message"]}] if code == "invalid_delegate" else None
    extensions = {"first_vote": detail["first_vote"]} if "first_vote" in detail else None
    return ApiError(_REFUSED[code], code, detail["message"], errors, extensions=extensions)


async def decide(request: web.Request) -> web.Response:
    asked = await _asked(request, DecisionIn)
    data = asked.data
    with asked.services.foreground.request():
        outcome = await asked.services.decisions.decide(DecisionRequest(
            approval_id=asked.approval_id, kind=DecisionKind(data.decision), reviewer=asked.reviewer,
            channel=Channel.API, reason=data.reason, subject=data.subject, body=data.body,
            on_behalf_by=asked.on_behalf_by, credential=asked.credential, draft_version=data.draft_version,
        ))
    if not outcome.decided:
        raise _refused(outcome.detail)
    assert outcome.decision is not None
    return web.json_response({"approval_id": outcome.approval_id, "run_id": outcome.run_id,
                              "status": outcome.status.value, "decision_id": outcome.decision.id,
                              **({"progress": outcome.tally.to_dict()} if outcome.tally is not None else {})})


async def delegate(request: web.Request) -> web.Response:
    """`POST /api/approvals/{id}/delegations`: hand one's vote to another person the policy allows."""
    asked = await _asked(request, DelegationIn)
    with asked.services.foreground.request():
        outcome = await asked.services.decisions.delegate(DelegationRequest(
            approval_id=asked.approval_id, reviewer=asked.reviewer, to=asked.data.to, channel=Channel.API,
            on_behalf_by=asked.on_behalf_by, credential=asked.credential))
    if not outcome.delegated:
        raise _refused(outcome.detail)
    return web.json_response({"approval_id": outcome.approval_id, "run_id": outcome.run_id,
                              "delegate_to": asked.data.to.strip(), "slot": outcome.slot}, status=201)
