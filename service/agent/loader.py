"""The agent, loaded when the first agent step needs it, in a thread.

LlamaIndex, its workflow engine and the OpenAI client take seconds to import and tens of
MiB (bench/startup.py); imported by `serve` before it listens, they made start-up to ready
4-5 s for every process, agent runs or not. Now `serve` checks the agent's settings
(`AgentConfig`: tools, plugins, knowledge) without them, registers `LazyAgent` as the
`agent.step` job, and the first step builds the workflow and the LLM client in a thread;
every step awaits that one build. The imports never run on the event loop, where job
leases are renewed (ARCHITECTURE.md, "Jobs"): a loop blocked for seconds would lose them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..jobs import Job, JobHandler, PermanentError
from ..runs import Runs
from ..store.db import Op, Store
from .hooks import AgentHooks
from .knowledge import Retriever
from .llm import LlmSettings
from .tools import ToolRegistry

if TYPE_CHECKING:
    from .runner import AgentRunner, Router
    from .workflow import AgentWorkflow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the agent is built from, checked at start; importing this imports no LlamaIndex."""

    tools: ToolRegistry
    llm: LlmSettings
    knowledge: Retriever
    max_revisions: int
    max_llm_calls: int
    llm_concurrency: int

    def build_workflow(self) -> AgentWorkflow:
        """Blocking (seconds of imports): in a thread, or before the event loop runs."""
        from .llm import build_llm
        from .workflow import AgentWorkflow

        self.tools.llm_tools()  # LlamaIndex's tool schemas, built here rather than in the first step
        return AgentWorkflow(build_llm(self.llm), self.tools, self.knowledge, max_revisions=self.max_revisions,
                             max_llm_calls=self.max_llm_calls, llm_concurrency=self.llm_concurrency)


class LazyAgent(AgentHooks):
    """The `agent.step` job as `serve` registers it: the store hooks at once, the agent itself
    (service/agent/runner.py) built in a thread by the first step, shared by all."""

    def __init__(self, store: Store, runs: Runs, config: AgentConfig, *, timeout_seconds: float,
                 route: Router | None = None) -> None:
        super().__init__(runs)
        self.store = store
        self.route = route
        self.config = config
        self.timeout_seconds = timeout_seconds
        self._runner: AgentRunner | None = None
        self._loading: asyncio.Future[AgentRunner] | None = None

    def handler(self) -> JobHandler:
        # The timeout covers the load too (seconds, once) on top of the run's LLM budget.
        return JobHandler(run=self.run, on_dead=self.on_dead, on_retry=self.on_retry,
                          timeout_seconds=self.timeout_seconds)

    async def run(self, job: Job) -> Op[None] | None:
        runner = await self.runner()
        return await runner.run(job)

    def load(self) -> asyncio.Future[AgentRunner]:
        """Start loading the agent (once) without waiting for it."""
        if self._loading is None:
            self._loading = asyncio.ensure_future(asyncio.to_thread(self._build))
            self._loading.add_done_callback(self._loaded)
        return self._loading

    async def runner(self) -> AgentRunner:
        if self._runner is not None:
            return self._runner
        try:
            # Shielded: a step cancelled while waiting (its lease lost, a shutdown) leaves
            # the load running for the others.
            return await asyncio.shield(self.load())
        except Exception as exc:  # settings the build refused (an unknown model): every step fails alike
            raise PermanentError(f"the agent could not be loaded: {type(exc).__name__}: {exc}") from exc

    def _build(self) -> AgentRunner:
        from .runner import AgentRunner

        started = time.monotonic()
        runner = AgentRunner(self.store, self.runs, self.config.build_workflow(), timeout_seconds=self.timeout_seconds,
                             route=self.route)
        log.info("agent loaded in %.1f s (in a thread)", time.monotonic() - started)
        return runner

    def _loaded(self, future: asyncio.Future[AgentRunner]) -> None:
        if future.cancelled():
            self._loading = None  # the loop is closing; nothing to keep
            return
        exc = future.exception()
        if exc is None:
            self._runner = future.result()
        else:
            log.error("the agent could not be loaded: %s: %s; agent runs fail until the settings are fixed",
                      type(exc).__name__, exc, exc_info=exc)
