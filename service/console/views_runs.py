"""`/console` (runs, filtered and paged), `/console/runs/{id}` (a run as a timeline) and its cancel."""

from __future__ import annotations

import re

from aiohttp import web

from ..api.errors import ApiError
from ..api.params import valid_id
from ..api.runs import decode_cursor, encode_cursor
from ..domain import DomainError, NotFound, RunStatus
from ..redact import redact_url
from ..scopes import Scope
from . import queries, timeline
from .filters import FilterError, parse_filter
from .filters import conditions as filter_conditions
from .pages import CONSOLE, action, error_page, form_text, page, read_form, redirect, render
from .sessions import Session

PAGE_SIZE = 50

_NUMBER = re.compile(r"[0-9]{1,18}", re.ASCII)  # str.isdigit() also takes "²", which int() refuses


@page(Scope.RUNS_READ)
async def runs_list(request: web.Request, session: Session) -> web.StreamResponse:
    services = request.app[CONSOLE].services
    try:
        chosen = parse_filter(request.query)
    except FilterError as exc:
        return error_page(request, 422, "Filter not valid", f"The filter {exc.field} {exc.message}.")
    limit_text = request.query.get("limit") or str(PAGE_SIZE)
    if not _NUMBER.fullmatch(limit_text) or not 1 <= int(limit_text) <= 200:
        return error_page(request, 422, "Filter not valid", "The filter limit must be a number from 1 to 200.")
    limit = int(limit_text)
    cursor = None
    if request.query.get("cursor"):
        try:
            cursor = decode_cursor(request.query["cursor"])
        except ApiError:
            return error_page(request, 422, "Page not valid", "The cursor is not one this console made; "
                              "start from the first page.")
    runs, next_cursor = await services.runs.list(status=chosen.status, limit=limit, cursor=cursor,
                                                 where=filter_conditions(chosen))
    rows = await queries.run_rows(services.store, [r.id for r in runs])
    paging = {"limit": str(limit)} if limit != PAGE_SIZE else {}
    next_query = {**chosen.query(), **paging, "cursor": encode_cursor(next_cursor)} if next_cursor else None
    policies = sorted({"default", *services.settings.policies})
    return render(request, "runs.html.j2", runs=runs, rows=rows, filter=chosen, next_query=next_query,
                  statuses=[s.value for s in RunStatus], policies=policies, first_page=cursor is None)


def _run_id(request: web.Request) -> str | None:
    value = request.match_info["run_id"]
    return value if valid_id(value) else None


@page(Scope.RUNS_READ)
async def run_page(request: web.Request, session: Session) -> web.StreamResponse:
    services = request.app[CONSOLE].services
    run_id = _run_id(request)
    try:
        if run_id is None:
            raise NotFound("run", request.match_info["run_id"])
        detail = await services.runs.get(run_id)
    except NotFound:
        return error_page(request, 404, "No such run", "There is no run with this id.")
    cancellable = detail.run.status in (RunStatus.DRAFTING, RunStatus.AWAITING_APPROVAL)
    return render(request, "run.html.j2", detail=detail, entries=timeline.build(detail),
                  short_time=timeline.short_time, cancellable=cancellable,
                  callback_url=redact_url(detail.callback_url) if detail.callback_url else None,
                  notice=request.query.get("done"))


@action(Scope.RUNS_CANCEL)
async def cancel(request: web.Request, session: Session) -> web.StreamResponse:
    services = request.app[CONSOLE].services
    run_id = _run_id(request)
    if run_id is None:
        return error_page(request, 404, "No such run", "There is no run with this id. Nothing was changed.")
    reason = form_text(await read_form(request), "reason", 1000)  # read (and checked) by @action already
    try:
        await services.runs.cancel(run_id, actor=session.actor, reason=reason, via="console")
    except NotFound:
        return error_page(request, 404, "No such run", "There is no run with this id. Nothing was changed.")
    except DomainError as exc:
        return error_page(request, 409, "Cannot cancel", f"{exc.message}. Nothing was changed.")
    return redirect(f"/console/runs/{run_id}?done=cancelled")
