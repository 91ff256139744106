"""What the `agent.step` job does in the store around the agent: queue a resume when a gated
action is decided or delivered, end the run when the agent gives up, reopen it on a retry.

No LlamaIndex here: these run inside other transactions (a decision, a delivery, a dead
job), from the start of `serve`, before the agent itself is loaded (service/agent/loader.py).
"""

from __future__ import annotations

import sqlalchemy as sa

from ..domain import DeliveryStatus, RunStatus
from ..jobs import Job
from ..runs import AGENT_JOB, GatedOutcome, Runs
from ..store import tables as t
from ..store.db import Tx


class AgentHooks:
    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    async def on_gated_outcome(self, tx: Tx, outcome: GatedOutcome) -> None:
        """Called in the transaction that decided (rejected) or delivered (sent): queue the resume."""
        await self.runs.jobs.enqueue(tx, AGENT_JOB, {"run_id": outcome.run_id, "outcome": outcome.to_dict()},
                                     run_id=outcome.run_id)
        if outcome.status == "rejected":
            await self.runs.set_status(tx, outcome.run_id, RunStatus.DRAFTING, actor="system",
                                       approval_id=outcome.approval_id, reason="the agent may draft again")


    async def on_dead(self, tx: Tx, job: Job, error: str) -> None:
        """The agent gave up (LLM refused, or retries ran out): end the run with the reason."""
        run_id = job.payload["run_id"]
        status = RunStatus((await tx.execute(sa.select(t.runs.c.status).where(t.runs.c.id == run_id))).scalar_one())
        if status.is_terminal:
            return
        sent = (await tx.execute(sa.select(t.deliveries.c.id).where(
            t.deliveries.c.run_id == run_id, t.deliveries.c.status == DeliveryStatus.SENT.value))).first()
        if sent is not None:  # the email went out; only the agent's closing summary failed
            await self.runs.finish(tx, run_id, RunStatus.COMPLETED, actor="system",
                                   summary=f"The approved email was sent; the agent could not summarise it: {error}")
        else:
            await self.runs.finish(tx, run_id, RunStatus.FAILED, actor="system", failure_reason=f"drafting failed: {error}")

    async def on_retry(self, tx: Tx, job: Job) -> None:
        """An operator retries a dead agent step: the run is open again until it settles."""
        run_id = job.payload["run_id"]
        status = (await tx.execute(sa.select(t.runs.c.status).where(t.runs.c.id == run_id))).scalar_one()
        if status == RunStatus.FAILED.value:
            await self.runs.set_status(tx, run_id, RunStatus.DRAFTING, actor="system", job_id=job.id)
