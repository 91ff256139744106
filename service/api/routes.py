"""The ops API's routes, as data: registered on the app and described in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ..domain import RunStatus
from ..jobs import JobStatus
from ..scopes import Scope
from . import approvals, audit, health, jobs, keys, runs
from .schemas import (
    AuditPage,
    CancelIn,
    DecisionIn,
    DecisionOut,
    DelegationIn,
    DelegationOut,
    Health,
    JobOut,
    JobPage,
    KeyCreated,
    KeyCreateIn,
    KeyOut,
    KeyPage,
    RunAccepted,
    RunCreate,
    RunDetailOut,
    RunOut,
    RunPage,
)


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, object]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    ok_status: int = 200
    ok_model: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_optional: bool = False
    authenticated: bool = True
    errors: tuple[int, ...] = ()
    query: tuple[QueryParam, ...] = field(default=())
    headers: tuple[str, ...] = ()
    # An answer that is not a JSON model (metrics, the document itself): media type and schema.
    ok_media_type: str = "application/json"
    ok_schema: dict[str, Any] | None = None
    ok_headers: tuple[str, ...] = ()
    # The scope a credential needs (any one of several); the handler enforces it, the
    # document shows it, and tests/test_scopes.py checks the two agree.
    scopes: tuple[Scope, ...] = ()


async def openapi_json(request: web.Request) -> web.Response:
    from .openapi import openapi_handler  # the document is built from this module's ROUTES

    return await openapi_handler(request)


RUN_STATUSES = [s.value for s in RunStatus]
JOB_STATUSES = [s.value for s in JobStatus]

ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/runs", runs.create_run, "Trigger a run", 202, RunAccepted, RunCreate,
          errors=(400, 401, 403, 409, 413, 415, 422), headers=("Idempotency-Key",),
          ok_headers=("Location", "Idempotent-Replayed"), scopes=(Scope.RUNS_CREATE,)),
    Route("GET", "/api/runs", runs.list_runs, "List runs, newest first", ok_model=RunPage, errors=(401, 403, 422),
          query=(QueryParam("status", "Only runs in this status", {"type": "string", "enum": RUN_STATUSES}),
                 QueryParam("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
                 QueryParam("cursor", "next_cursor of the previous page", {"type": "string"})),
          scopes=(Scope.RUNS_READ,)),
    Route("GET", "/api/runs/{run_id}", runs.get_run, "A run with its approvals, deliveries, jobs and timeline",
          ok_model=RunDetailOut, errors=(401, 403, 404), scopes=(Scope.RUNS_READ,)),
    Route("POST", "/api/runs/{run_id}/cancel", runs.cancel_run, "Cancel a run that is not yet approved",
          ok_model=RunOut, body=CancelIn, body_optional=True, errors=(400, 401, 403, 404, 409, 413, 415, 422),
          scopes=(Scope.RUNS_CANCEL,)),
    Route("POST", "/api/approvals/{approval_id}/decisions", approvals.decide,
          "Approve, edit and approve, or reject an approval", ok_model=DecisionOut, body=DecisionIn,
          errors=(400, 401, 403, 404, 409, 413, 415, 422), scopes=(Scope.DECIDE, Scope.DECIDE_ON_BEHALF)),
    Route("POST", "/api/approvals/{approval_id}/delegations", approvals.delegate,
          "Hand your vote on an approval to another person the policy allows", ok_status=201,
          ok_model=DelegationOut, body=DelegationIn,
          errors=(400, 401, 403, 404, 409, 413, 415, 422), scopes=(Scope.DECIDE, Scope.DECIDE_ON_BEHALF)),
    Route("GET", "/api/jobs", jobs.list_jobs, "List jobs by status (dead letters by default)", ok_model=JobPage,
          errors=(401, 403, 422),
          query=(QueryParam("status", "Job status", {"type": "string", "enum": JOB_STATUSES, "default": "dead"}),
                 QueryParam("run_id", "Only this run's jobs", {"type": "string"})),
          scopes=(Scope.RUNS_READ,)),
    Route("POST", "/api/jobs/{job_id}/retry", jobs.retry_job, "Retry a dead job", ok_model=JobOut,
          errors=(401, 403, 404, 409, 413), scopes=(Scope.JOBS_RETRY,)),
    Route("GET", "/api/audit", audit.list_audit, "The audit log in chain order, a page at a time", ok_model=AuditPage,
          errors=(401, 403, 422),
          query=(QueryParam("after", "Events after this seq (next_after of the previous page)",
                            {"type": "integer", "minimum": 0, "default": 0}),
                 QueryParam("limit", "Page size", {"type": "integer", "minimum": 1, "maximum": 5000, "default": 500})),
          scopes=(Scope.AUDIT_READ,)),
    Route("GET", "/api/keys", keys.list_keys, "List API keys (never the keys themselves)", ok_model=KeyPage,
          errors=(401, 403), scopes=(Scope.KEYS_ADMIN,)),
    Route("POST", "/api/keys", keys.create_key, "Create an API key with scopes the caller holds itself", 201,
          KeyCreated, KeyCreateIn, errors=(400, 401, 403, 409, 413, 415, 422), scopes=(Scope.KEYS_ADMIN,)),
    Route("POST", "/api/keys/{name}/revoke", keys.revoke_key, "Revoke an API key, at once on every replica",
          ok_model=KeyOut, errors=(401, 403, 404, 413), scopes=(Scope.KEYS_ADMIN,)),
    Route("GET", "/healthz", health.healthz, "Liveness", ok_model=Health, authenticated=False),
    Route("GET", "/readyz", health.readyz, "Readiness: database reachable and migrated", ok_model=Health,
          authenticated=False, errors=(503,)),
    Route("GET", "/metrics", health.metrics, "Prometheus metrics", authenticated=False,
          ok_media_type="text/plain", ok_schema={"type": "string"}),
    Route("GET", "/api/openapi.json", openapi_json, "This OpenAPI document", authenticated=False,
          ok_schema={"type": "object", "description": "An OpenAPI 3.1 document"}),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
