"""The agent loop as a LlamaIndex workflow, after the "human-in-the-loop agent loop" pattern.

start -> think (LLM with tools) -> one ToolCall per call -> run_tool:
  ungated: runs at once -> ToolResult
  gated:   the drafted call is kept in state and ApprovalRequested is written to the stream;
           the run goes idle and the service snapshots it. ToolOutcome (built by the service
           from its own records) resumes it in whatever process -> ToolResult
gather collects a turn's results -> think again, until the LLM answers without tool calls.

The LLM, the tools and the retriever are injected through the constructor and never enter
state or events, so a snapshot is plain JSON with no clients and no secrets.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from llama_index.core.llms.function_calling import FunctionCallingLLM
from workflows import Context, Workflow, step

from ..text_diff import diff_edit
from . import messages as m
from .events import (
    AgentStart,
    AgentState,
    AgentStopped,
    ApprovalRequested,
    LlmTurn,
    PendingCall,
    ToolCall,
    ToolOutcome,
    ToolResult,
)
from .knowledge import Retriever
from .tools import ToolArgumentError, ToolContext, ToolRegistry

log = logging.getLogger(__name__)


class AgentWorkflow(Workflow):
    def __init__(self, llm: FunctionCallingLLM, tools: ToolRegistry, knowledge: Retriever, *,
                 max_revisions: int = 3, max_llm_calls: int = 20, llm_concurrency: int = 4,
                 system_prompt: str = m.SYSTEM_PROMPT) -> None:
        # Deadlines belong to the approval policy and the service's timers, not to the workflow.
        super().__init__(timeout=None)
        self.llm = llm
        self.tools = tools
        self.knowledge = knowledge
        self.max_revisions = max_revisions
        self.max_llm_calls = max_llm_calls
        self.llm_slots = asyncio.Semaphore(llm_concurrency)  # LLM calls at once, across all runs
        self.system_prompt = system_prompt

    @step
    async def start(self, ctx: Context[AgentState], ev: AgentStart) -> LlmTurn:
        async with ctx.store.edit_state() as state:
            state.run_id = ev.run_id
            state.customer_email = ev.customer_email
            state.customer_name = ev.customer_name
            state.messages = [m.system(self.system_prompt),
                              m.user(m.user_prompt(ev.request, ev.customer_email, ev.customer_name))]
        return LlmTurn()

    @step
    async def think(self, ctx: Context[AgentState], ev: LlmTurn) -> ToolCall | AgentStopped | None:
        state = await ctx.store.get_state()
        if state.llm_calls >= self.max_llm_calls:  # a model going round in circles costs money
            if state.sent:  # the email went out: that is the run's outcome, whatever the model does now
                return AgentStopped(outcome="completed", summary=(
                    "The approved email was sent; the agent reached its LLM-call budget before summarising."))
            return AgentStopped(outcome="failed", summary=(
                f"the agent made {state.llm_calls} LLM calls without finishing (COUNTERSIGN_AGENT_MAX_LLM_CALLS)"))
        async with self.llm_slots:
            response = await self.llm.achat_with_tools(
                self.tools.llm_tools(), chat_history=m.to_chat(state.messages), allow_parallel_tool_calls=True)
        calls = self.llm.get_tool_calls_from_response(response, error_on_no_tool_call=False)
        content = m.text_of(response.message)
        # Some OpenAI-compatible servers send no call ids, or the same ones every turn; an
        # approval and its outcome are matched by this id, so it must be unique in the run.
        seen = {c["id"] for msg in state.messages for c in msg.get("tool_calls") or ()}
        for call in calls:
            if not call.tool_id or call.tool_id in seen:
                call.tool_id = f"call_{uuid.uuid4().hex[:24]}"
            seen.add(call.tool_id)
        async with ctx.store.edit_state() as state:
            state.llm_calls += 1
            state.messages.append(m.assistant(content, calls))
            state.outstanding = len(calls)
            sent, rejection = state.sent, state.last_rejection
        if not calls:
            if sent:
                return AgentStopped(outcome="completed", summary=content or "The email was sent.")
            if rejection is not None:
                return AgentStopped(outcome="rejected", summary=content or f"The draft was rejected: {rejection}")
            return AgentStopped(outcome="failed", summary="the agent finished without proposing an email"
                                + (f": {content}" if content else ""))
        for call in calls:
            ctx.send_event(ToolCall(tool_call_id=call.tool_id, name=call.tool_name, arguments=dict(call.tool_kwargs)))
        return None

    @step(num_workers=4)
    async def run_tool(self, ctx: Context[AgentState], ev: ToolCall) -> ToolResult | ApprovalRequested:
        state = await ctx.store.get_state()
        tool_ctx = ToolContext(run_id=state.run_id, customer_email=state.customer_email,
                               customer_name=state.customer_name, knowledge=self.knowledge)
        try:
            spec, args = self.tools.parse(ev.name, ev.arguments)
            if self.tools.is_gated(ev.name):
                assert spec.propose is not None
                action = spec.propose(tool_ctx, args).to_dict()
            else:
                assert spec.run is not None
                answer = await spec.run(tool_ctx, args)
        except ToolArgumentError as exc:
            return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name, content=f"Error: {exc}", is_error=True)
        except Exception as exc:  # a broken tool is an answer the LLM can work with, not a dead run
            # The details (paths, hosts) stay in our log, not with the LLM provider.
            log.warning("tool %s failed in run %s", ev.name, state.run_id, exc_info=True)
            return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name,
                              content=f"Error: the tool failed ({type(exc).__name__})", is_error=True)

        if not self.tools.is_gated(ev.name):
            if answer.sources:
                async with ctx.store.edit_state() as state:
                    known = {s["location"] for s in state.sources}
                    state.sources.extend(s for s in answer.sources if s["location"] not in known)
            return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name, content=answer.content)

        async with ctx.store.edit_state() as state:
            if state.sent:
                return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name, is_error=True, content=(
                    "Error: the reply has been sent already; answer with a short summary instead."))
            if state.pending:
                return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name, is_error=True, content=(
                    "Error: another draft is already waiting for review; propose one email at a time."))
            if state.revision >= self.max_revisions:
                return ToolResult(tool_call_id=ev.tool_call_id, name=ev.name, is_error=True, content=(
                    f"Error: the limit of {self.max_revisions} drafts is reached; do not propose another."))
            state.revision += 1
            state.pending[ev.tool_call_id] = PendingCall(
                tool_call_id=ev.tool_call_id, name=ev.name, action=action,
                revision=state.revision)
            revision, sources = state.revision, list(state.sources)
        return ApprovalRequested(tool_call_id=ev.tool_call_id, tool=ev.name, revision=revision, action=action,
                                 sources=sources)

    @step
    async def tool_outcome(self, ctx: Context[AgentState], ev: ToolOutcome) -> ToolResult | AgentStopped | None:
        async with ctx.store.edit_state() as state:
            call = state.pending.pop(ev.tool_call_id, None)
            if call is None:  # not (or no longer) waiting for this call: a duplicate resumes nothing
                return None
            if ev.status == "sent":
                state.sent = True
                state.last_rejection = None
                sent = ev.sent_action or call.action
                # What the reviewers changed, not only the new text: a unified diff of what was
                # sent against this call's draft (the same diff the run's JSON and the card show).
                edit = diff_edit(call.action, sent)
                content = (
                    f"The email was approved{' after a reviewer edited it' if edit else ''} and sent to "
                    f"{', '.join(sent['to'])} (Message-ID {ev.message_id}).\n"
                )
                if edit:
                    content += ("The reviewer's changes to your draft, as a unified diff (lines starting with - "
                                f"were yours and were removed, lines starting with + were put in):\n{edit.unified()}\n")
                content += f"Subject as sent: {sent['subject']}\nBody as sent:\n{sent['body']}"
                return ToolResult(tool_call_id=call.tool_call_id, name=call.name, content=content)
            state.last_rejection = ev.reason or "no reason given"
            if state.revision >= self.max_revisions:
                return AgentStopped(outcome="rejected", summary=(
                    f"Draft {call.revision} was rejected ({state.last_rejection}); the limit of "
                    f"{self.max_revisions} drafts is reached."))
            content = (f"The reviewer rejected draft {call.revision}; nothing was sent. Reason: "
                       f"{state.last_rejection}\nYou may propose a revised email, or answer without a tool call "
                       "to stop.")
        return ToolResult(tool_call_id=call.tool_call_id, name=call.name, content=content, is_error=True)

    @step
    async def gather(self, ctx: Context[AgentState], ev: ToolResult) -> LlmTurn | None:
        state = await ctx.store.get_state()
        results: Any = ctx.collect_events(ev, [ToolResult] * max(state.outstanding, 1))
        if results is None:
            return None
        async with ctx.store.edit_state() as state:
            for r in results:
                state.messages.append(m.tool(r.tool_call_id, r.name, r.content))
            state.outstanding = 0
        return LlmTurn()
