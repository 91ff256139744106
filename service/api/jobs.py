"""`/api/jobs`: the dead letters an operator looks at, and the retry action."""

from __future__ import annotations

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from ..jobs import Job, JobStatus
from ..scopes import Scope
from ..store import tables as t
from .body import read_authenticated
from .deps import SERVICES
from .errors import ApiError
from .params import path_id, query_id


async def list_jobs(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    await read_authenticated(request, Scope.RUNS_READ)
    try:
        status = JobStatus(request.query.get("status", JobStatus.DEAD.value))
    except ValueError:
        raise ApiError(422, "validation_error", "unknown status", [{"field": "status", "message":
                       f"must be one of {', '.join(s.value for s in JobStatus)}"}]) from None
    query = sa.select(t.jobs).where(t.jobs.c.status == status.value).order_by(t.jobs.c.created_at.desc()).limit(200)
    run_id = query_id(request, "run_id")
    if run_id is not None:
        query = query.where(t.jobs.c.run_id == run_id)

    async def q(conn: AsyncConnection) -> list[Job]:
        return [Job.from_row(r) for r in await conn.execute(query)]

    jobs = await services.store.read(q)
    return web.json_response({"items": [j.to_dict() for j in jobs]})


async def retry_job(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    _body, principal = await read_authenticated(request, Scope.JOBS_RETRY)
    job_id = path_id(request, "job_id", "job")
    job = await services.jobs.retry_dead(job_id, actor=principal.actor)
    return web.json_response(job.to_dict())
