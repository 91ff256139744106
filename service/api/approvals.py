"""`POST /api/approvals/{id}/decisions`: an operator integration decides through the API.

The API token holder vouches for the reviewer named in the body; the decision is
recorded with channel `api` and goes through the same path as a Teams click.
"""

from __future__ import annotations

from aiohttp import web

from ..domain import Channel, DecisionKind, DecisionRequest, Reviewer
from .body import parse, read_authenticated
from .deps import SERVICES
from .errors import ApiError
from .params import path_id
from .schemas import DecisionIn


async def decide(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, _principal = await read_authenticated(request)
    data = parse(DecisionIn, body, request)
    with services.foreground.request():
        outcome = await services.decisions.decide(DecisionRequest(
            approval_id=path_id(request, "approval_id", "approval"), kind=DecisionKind(data.decision),
            reviewer=Reviewer(id=data.reviewer.id, name=data.reviewer.name, email=data.reviewer.email),
            channel=Channel.API, reason=data.reason, subject=data.subject, body=data.body,
        ))
    if not outcome.decided:
        reason = outcome.detail.get("reason")
        if reason == "not_allowed":
            raise ApiError(403, "not_allowed", outcome.detail["message"])
        raise ApiError(409, "already_decided", outcome.detail["message"])
    assert outcome.decision is not None
    return web.json_response({"approval_id": outcome.approval_id, "run_id": outcome.run_id,
                              "status": outcome.status.value, "decision_id": outcome.decision.id})
