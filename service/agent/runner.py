"""The `agent.step` job: start an agent run, or resume it from its snapshot with an outcome.

One job drives the workflow until it is idle (a gated call waits for a human) or stopped,
then commits, in the transaction that finishes the job: the new snapshot (compare-and-set
on its version), the approval the agent asked for, or the end of the run. Nothing of a
paused run stays in memory. A job that fails before that commit changed nothing, so its
retry starts from the same snapshot; once committed, no LLM call and no email is repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy as sa
from workflows import Context
from workflows.context.serializers import JsonSerializer
from workflows.events import StopEvent, WorkflowIdleEvent
from workflows.handler import WorkflowHandler

from .. import metrics
from ..domain import EmailAction, RunStatus
from ..jobs import Job, JobHandler, PermanentError
from ..policy import Policy
from ..policy_routes import RouteMatch, RunFacts
from ..runs import Runs, lock_run
from ..store import tables as t
from ..store.db import Op, Store, Tx
from .events import AgentStart, AgentState, AgentStopped, ApprovalRequested, ToolOutcome
from .hooks import AgentHooks
from .llm import job_error
from .workflow import AgentWorkflow

log = logging.getLogger(__name__)

# The policy of the first [[routes]] table matching a run, and the route; None: no match.
Router = Callable[[RunFacts], tuple[Policy, RouteMatch] | None]


class StaleSnapshot(Exception):
    """Another worker resumed this run first; this step's result is dropped."""


@dataclass(slots=True)
class StepResult:
    """What one drive of the workflow produced."""

    requests: list[ApprovalRequested] = field(default_factory=list)
    snapshot: dict[str, Any] | None = None  # set when the run went idle
    state: AgentState | None = None
    stopped: AgentStopped | None = None


class AgentRunner(AgentHooks):
    def __init__(self, store: Store, runs: Runs, workflow: AgentWorkflow, *, timeout_seconds: float,
                 route: Router | None = None) -> None:
        super().__init__(runs)
        self.store = store
        self.route = route
        self.workflow = workflow
        self.serializer = JsonSerializer()
        self.timeout_seconds = timeout_seconds

    def handler(self) -> JobHandler:
        return JobHandler(run=self.run, on_dead=self.on_dead, on_retry=self.on_retry,
                          timeout_seconds=self.timeout_seconds)

    async def _load(self, run_id: str) -> tuple[Any, Any]:
        async def q(conn: Any) -> tuple[Any, Any]:
            run = (await conn.execute(sa.select(t.runs).where(t.runs.c.id == run_id))).first()
            snap = (await conn.execute(
                sa.select(t.agent_snapshots).where(t.agent_snapshots.c.run_id == run_id))).first()
            return run, snap

        return await self.store.read(q)

    async def run(self, job: Job) -> Op[None] | None:
        run_id: str = job.payload["run_id"]
        outcome: dict[str, Any] | None = job.payload.get("outcome")
        run, snap = await self._load(run_id)
        if run is None:
            raise PermanentError(f"run {run_id} does not exist")
        if RunStatus(run.status).is_terminal:
            return None  # cancelled or expired while this job waited
        if outcome is None:
            if snap is not None:
                return None  # this run has started already
            customer = run.customer or {}
            handler = self.workflow.run(start_event=AgentStart(
                run_id=run_id, request=run.request or "", customer_email=customer.get("email", ""),
                customer_name=customer.get("name")))
        else:
            if snap is None or snap.waiting_for != outcome["tool_call_id"]:
                return None  # a duplicate: this outcome was taken already
            handler = self.workflow.run(ctx=Context.from_dict(self.workflow, snap.snapshot, serializer=self.serializer))
            # Queued before the restored run can go idle, so it is seen on this drive.
            handler.ctx.send_event(ToolOutcome(**outcome))
        result = await self._drive(handler)
        return self._record(run_id, snap.version if snap is not None else None, result)

    async def _drive(self, handler: WorkflowHandler) -> StepResult:
        result = StepResult()
        try:
            async for event in handler.stream_events(expose_internal=True):
                if isinstance(event, ApprovalRequested):
                    result.requests.append(event)
                elif isinstance(event, WorkflowIdleEvent):
                    # WorkflowHandler.ctx is typed as a bare Context; every step of this workflow
                    # takes Context[AgentState], so that is the state its store holds.
                    result.state = await cast("Context[AgentState]", handler.ctx).store.get_state()
                    result.snapshot = handler.ctx.to_dict(serializer=self.serializer)
                    return result
                elif isinstance(event, StopEvent):
                    break
            try:
                stop = await handler
            except Exception as exc:
                raise job_error(exc) from exc
            if not isinstance(stop, AgentStopped):
                raise PermanentError(f"the agent workflow ended without a result ({type(stop).__name__})")
            result.stopped = stop
            return result
        finally:
            if not handler.is_done():
                await handler.cancel_run()

    def _record(self, run_id: str, version: int | None, result: StepResult) -> Op[None]:
        async def op(tx: Tx) -> None:
            run = (await tx.execute(lock_run(tx, run_id))).one()
            if RunStatus(run.status).is_terminal:
                return  # cancelled while the agent worked: its result is dropped
            await self._save_snapshot(tx, run_id, version, result)
            if result.stopped is not None:
                await self._finish(tx, run, result.stopped)
                return
            if len(result.requests) != 1:
                raise PermanentError(f"the agent paused with {len(result.requests)} approval requests; expected one")
            request = result.requests[0]
            assert result.state is not None
            action = EmailAction.from_dict(request.action)
            policy = await self._routed(tx, run, action, request.revision)
            await self.runs.add_approval(
                tx, run_id, request.revision, action, policy,
                run.requested_by, sources=request.sources, tool_call_id=request.tool_call_id)
            await self.runs.set_status(tx, run_id, RunStatus.AWAITING_APPROVAL, actor="agent",
                                       revision=request.revision, llm_calls=result.state.llm_calls)
            tx.after_commit(metrics.AGENT_DRAFTS.inc)

        return op

    async def _routed(self, tx: Tx, run: Any, action: EmailAction, revision: int) -> Policy:
        """The policy the draft is asked under. When the run was created the email did not
        exist, so routes on `action.*` could not match; now it does: the first route that
        matches the whole run wins over the policy the run got (named, inline or routed on
        less), as it would have for a run created with this action."""
        policy = Policy.from_dict(run.policy)
        routed = self.route(RunFacts(
            metadata=run.metadata or {}, recipients=(*action.to, *action.cc), requested_by=run.requested_by,
            customer_email=(run.customer or {}).get("email"))) if self.route is not None else None
        if routed is None or routed[0].name == policy.name:
            return policy  # kept as it is, an inline narrowing of the routed policy included
        routed_policy, match = routed
        await tx.execute(t.runs.update().where(t.runs.c.id == run.id).values(
            policy=routed_policy.to_dict(), updated_at=tx.now))
        tx.audit("run.routed", run_id=run.id, actor="system", data={
            "route": match.index, "policy": routed_policy.name, "previous_policy": policy.name,
            "revision": revision, "because": "the drafted action matched the route"})
        return routed_policy

    async def _save_snapshot(self, tx: Tx, run_id: str, version: int | None, result: StepResult) -> None:
        if result.snapshot is None:
            condition = [t.agent_snapshots.c.run_id == run_id]
            if version is not None:
                condition.append(t.agent_snapshots.c.version == version)
            await tx.execute(t.agent_snapshots.delete().where(*condition))
            return
        assert result.state is not None
        waiting_for = next(iter(result.state.pending), None)
        values = dict(snapshot=result.snapshot, waiting_for=waiting_for, revision=result.state.revision,
                      llm_calls=result.state.llm_calls, updated_at=tx.now)
        if version is None:
            exists = (await tx.execute(
                sa.select(t.agent_snapshots.c.run_id).where(t.agent_snapshots.c.run_id == run_id))).first()
            if exists is not None:
                raise StaleSnapshot(f"run {run_id} was started by another worker")
            tx.insert(t.agent_snapshots, dict(run_id=run_id, version=1, created_at=tx.now, **values))
            return
        won = await tx.execute(
            t.agent_snapshots.update()
            .where(t.agent_snapshots.c.run_id == run_id, t.agent_snapshots.c.version == version)
            .values(version=version + 1, **values))
        if won.rowcount != 1:
            raise StaleSnapshot(f"run {run_id} was resumed by another worker")

    async def _finish(self, tx: Tx, run: Any, stopped: AgentStopped) -> None:
        tx.audit("agent.finished", run_id=run.id, actor="agent",
                 data={"outcome": stopped.outcome, "summary": stopped.summary})
        tx.after_commit(metrics.AGENT_FINISHED.labels(outcome=stopped.outcome).inc)
        if stopped.outcome == "completed":
            await self.runs.finish(tx, run.id, RunStatus.COMPLETED, actor="agent", summary=stopped.summary)
        elif stopped.outcome == "rejected":
            await self.runs.finish(tx, run.id, RunStatus.REJECTED, actor="agent", summary=stopped.summary,
                                   failure_reason="rejected by the reviewer")
        else:
            await self.runs.finish(tx, run.id, RunStatus.FAILED, actor="agent", failure_reason=stopped.summary)
