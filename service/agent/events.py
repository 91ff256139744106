"""The agent workflow's events and state: plain data only, at stable import paths.

Snapshots name these classes by import path and hold their fields as JSON, so nothing here
may reference an LLM, a tool object, a client or a secret (shared/notes/llamaindex-hitl.md).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from workflows.events import Event, HumanResponseEvent, InputRequiredEvent, StartEvent, StopEvent


class AgentStart(StartEvent):
    run_id: str
    request: str
    customer_email: str
    customer_name: str | None = None


class LlmTurn(Event):
    """Time for the LLM to look at the conversation so far."""


class ToolCall(Event):
    tool_call_id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResult(Event):
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False


class ApprovalRequested(InputRequiredEvent):
    """A gated call, drafted and waiting for a human: the service turns it into an approval."""

    tool_call_id: str
    tool: str
    revision: int
    action: dict[str, Any]
    sources: list[dict[str, Any]] = Field(default_factory=list)


class ToolOutcome(HumanResponseEvent):
    """What became of a gated call: sent (as approved, maybe edited) or rejected with a reason.

    Built by the service from its own records (the delivery, the decision), never from a
    reviewer's payload; the call that runs is the one stored in the agent's state."""

    tool_call_id: str
    approval_id: str
    status: Literal["sent", "rejected"]
    reason: str | None = None
    sent_action: dict[str, Any] | None = None
    message_id: str | None = None
    decided_by: str | None = None


class AgentStopped(StopEvent):
    outcome: Literal["completed", "rejected", "failed"]
    summary: str


class PendingCall(BaseModel):
    """A gated call waiting for its outcome: the action built from it is what gets approved."""

    tool_call_id: str
    name: str
    action: dict[str, Any]
    revision: int


class AgentState(BaseModel):
    """Everything the agent remembers between steps; it is what a snapshot stores."""

    run_id: str = ""
    customer_email: str = ""
    customer_name: str | None = None
    # The conversation as plain dicts (service.agent.messages converts them for the LLM).
    messages: list[dict[str, Any]] = Field(default_factory=list)
    outstanding: int = 0  # tool results the current turn still waits for
    pending: dict[str, PendingCall] = Field(default_factory=dict)  # gated calls awaiting an outcome
    revision: int = 0  # drafts proposed so far
    llm_calls: int = 0
    sources: list[dict[str, Any]] = Field(default_factory=list)  # passages retrieved so far
    sent: bool = False
    last_rejection: str | None = None
