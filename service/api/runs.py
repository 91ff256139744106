"""`/api/runs`: trigger a run, read it, list runs, cancel one."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from ..callback_policy import CallbackRefused
from ..domain import EmailAction, RunStatus
from ..policy import DEFAULT_POLICY, Narrowing, NarrowingRefused, Policy, PolicyMode, narrow
from ..policy_routes import RouteMatch, RunFacts
from ..redact import redact_url
from ..runs import Customer, NewRun, RunDetail, RunSummary
from ..scopes import Scope
from .body import parse, read_authenticated
from .deps import SERVICES, Services
from .errors import ApiError
from .params import path_id, valid_id
from .schemas import CancelIn, PolicyIn, RunCreate

IDEMPOTENCY_HEADER = "Idempotency-Key"


def run_facts(data: RunCreate) -> RunFacts:
    """What routes look at: the run as it is created (an agent run has no action yet)."""
    return RunFacts(
        metadata=data.metadata,
        recipients=(*data.action.to, *data.action.cc) if data.action is not None else None,
        requested_by=data.requested_by,
        customer_email=data.customer.email if data.customer is not None else None,
    )


def _resolve_policy(services: Services, data: RunCreate) -> tuple[Policy, RouteMatch | None]:
    """The policy a run gets, and the route that chose it. The first matching route's
    policy wins over the one the run names (a requester cannot pick a weaker policy than
    its route); without one, a configured policy by name (default: "default"). An inline
    policy narrows the route's policy, else its `base`. Anything that would widen the
    policy it narrows is a 422."""
    settings, given = services.settings, data.policy
    routed = settings.routed_policy(run_facts(data))
    route: RouteMatch | None = None
    if routed is not None:
        base, route = routed
    else:
        if given is None or isinstance(given, str):
            name, field = given or DEFAULT_POLICY.name, "policy"
        else:
            name, field = given.base or DEFAULT_POLICY.name, "policy.base"
        named = settings.configured_policy(name)
        if named is None:
            known = ", ".join(sorted({*settings.policies, DEFAULT_POLICY.name}))
            raise ApiError(422, "validation_error", f"unknown policy {name!r}",
                           [{"field": field, "message": f"no policy named {name!r} (known: {known})"}])
        base = named
    if not isinstance(given, PolicyIn):
        return base, route
    try:
        return narrow(base, Narrowing(
            reviewers=tuple(given.reviewers) if given.reviewers is not None else None,
            allow_self_approval=given.allow_self_approval,
            mode=PolicyMode(given.mode) if given.mode is not None else None,
            teams_channel=given.teams_channel, teams_chat=tuple(given.teams_chat))), route
    except NarrowingRefused as refused:
        raise ApiError(422, "policy_not_narrowed", f"the inline policy would widen policy {base.name!r}",
                       [{"field": f"policy.{v.field}", "message": v.message} for v in refused.violations]) from None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > 255 or not key.isprintable():
        raise ApiError(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1-255 printable characters",
                       [{"field": IDEMPOTENCY_HEADER, "message": "must be 1-255 printable characters"}])
    return key


def _check_callback_url(services: Services, url: str | None) -> None:
    """What the URL alone says (scheme, credentials, an address, the allow-list); a host
    name is judged again, on its addresses, when the callback is sent."""
    if url is None:
        return
    try:
        services.callback_policy.check_url(url)
    except CallbackRefused as exc:
        raise ApiError(422, "validation_error", "the callback URL is not allowed",
                       [{"field": "callback_url", "message": str(exc)}]) from None


def run_url(services: Services, run_id: str) -> str:
    return f"{services.settings.effective_public_url}/api/runs/{run_id}"


async def create_run(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, Scope.RUNS_CREATE)
    key = _idempotency_key(request)
    data = parse(RunCreate, body, request)
    callback_url = str(data.callback_url) if data.callback_url else None
    _check_callback_url(services, callback_url)
    policy, route = _resolve_policy(services, data)
    action = None
    if data.action is not None:
        a = data.action
        action = EmailAction(to=tuple(a.to), cc=tuple(a.cc), subject=a.subject, body=a.body,
                             in_reply_to=a.in_reply_to, references=tuple(a.references))
    created = await services.runs.create(NewRun(
        policy=policy, action=action, request=data.request,
        customer=Customer(data.customer.email, data.customer.name) if data.customer else None,
        requested_by=data.requested_by, callback_url=callback_url,
        metadata=data.metadata, idempotency_key=key, created_by=principal.actor,
        request_sha256=hashlib.sha256(data.model_dump_json().encode()).hexdigest() if key else None,
        route=route.index if route is not None else None,
    ))
    status = RunStatus.AWAITING_APPROVAL if action else RunStatus.DRAFTING
    if created.replayed:
        status = (await services.runs.get(created.run_id)).run.status
    url = run_url(services, created.run_id)
    headers = {"Location": url}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.json_response({"id": created.run_id, "status": status.value, "url": url}, status=202, headers=headers)


def summary_json(services: Services, run: RunSummary) -> dict[str, Any]:
    return {
        "id": run.id, "kind": run.kind, "status": run.status.value, "requested_by": run.requested_by,
        "created_at": run.created_at.isoformat(), "updated_at": run.updated_at.isoformat(),
        "metadata": run.metadata, "summary": run.summary, "failure_reason": run.failure_reason,
        "url": run_url(services, run.id),
    }


def detail_json(services: Services, detail: RunDetail) -> dict[str, Any]:
    return {
        **summary_json(services, detail.run), "request": detail.request, "customer": detail.customer,
        # Never in full: a query may hold the receiver's token, and runs stored before
        # user names and passwords were refused may hold those.
        "callback_url": redact_url(detail.callback_url) if detail.callback_url else None,
        "policy": detail.policy, "approvals": detail.approvals,
        "decisions": detail.decisions, "deliveries": detail.deliveries,
        "jobs": [j.to_dict() for j in detail.jobs], "timeline": detail.timeline,
    }


async def _authenticate_read(request: web.Request) -> Services:
    await read_authenticated(request, Scope.RUNS_READ)
    return request.app[SERVICES]


async def get_run(request: web.Request) -> web.Response:
    services = await _authenticate_read(request)
    detail = await services.runs.get(path_id(request, "run_id", "run"))
    return web.json_response(detail_json(services, detail))


def decode_cursor(value: str) -> tuple[datetime, str]:
    try:
        created, sep, run_id = base64.urlsafe_b64decode(value.encode()).decode().partition("|")
        at = datetime.fromisoformat(created)
        if not sep or not valid_id(run_id) or at.tzinfo is None:
            raise ValueError("not a cursor this service made")
        return at.astimezone(timezone.utc), run_id
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "validation_error", "the cursor is not valid",
                       [{"field": "cursor", "message": "use the next_cursor value of a previous page"}]) from None


def encode_cursor(cursor: tuple[datetime, str]) -> str:
    return base64.urlsafe_b64encode(f"{cursor[0].isoformat()}|{cursor[1]}".encode()).decode()


async def list_runs(request: web.Request) -> web.Response:
    services = await _authenticate_read(request)
    query = request.query
    status = None
    if "status" in query:
        try:
            status = RunStatus(query["status"])
        except ValueError:
            allowed = ", ".join(s.value for s in RunStatus)
            raise ApiError(422, "validation_error", "unknown status",
                           [{"field": "status", "message": f"must be one of {allowed}"}]) from None
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 200:
            raise ValueError
    except ValueError:
        raise ApiError(422, "validation_error", "invalid limit",
                       [{"field": "limit", "message": "must be an integer from 1 to 200"}]) from None
    cursor = decode_cursor(query["cursor"]) if "cursor" in query else None
    page, next_cursor = await services.runs.list(status=status, limit=limit, cursor=cursor)
    return web.json_response({
        "items": [summary_json(services, r) for r in page],
        "next_cursor": encode_cursor(next_cursor) if next_cursor else None,
    })


async def cancel_run(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, principal = await read_authenticated(request, Scope.RUNS_CANCEL)
    data = parse(CancelIn, body, request, allow_empty=True)
    run = await services.runs.cancel(path_id(request, "run_id", "run"), actor=principal.actor, reason=data.reason)
    return web.json_response(summary_json(services, run))
