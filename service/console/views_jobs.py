"""`/console/jobs`: dead-lettered jobs with their reason, and the retry button (`jobs:retry`)."""

from __future__ import annotations

from aiohttp import web

from ..api.params import valid_id
from ..domain import DomainError, NotFound
from ..scopes import Scope
from . import queries
from .pages import CONSOLE, action, error_page, page, redirect, render
from .sessions import Session


@page(Scope.RUNS_READ)
async def dead_letters(request: web.Request, session: Session) -> web.StreamResponse:
    jobs = await queries.dead_jobs(request.app[CONSOLE].services.store)
    retried = request.query.get("retried")
    # Only a job id is named back: free text in the URL would be a notice on our own origin.
    return render(request, "jobs.html.j2", jobs=[j.to_dict() for j in jobs],
                  notice=retried if retried and valid_id(retried) else None)


@action(Scope.JOBS_RETRY)
async def retry(request: web.Request, session: Session) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    try:
        if not valid_id(job_id):
            raise NotFound("job", job_id)
        await request.app[CONSOLE].services.jobs.retry_dead(job_id, actor=session.actor, via="console")
    except NotFound:
        return error_page(request, 404, "No such job", "There is no job with this id. Nothing was changed.")
    except DomainError as exc:
        return error_page(request, 409, "Cannot retry", f"{exc.message}. Nothing was changed.")
    return redirect(f"/console/jobs?retried={job_id}")
