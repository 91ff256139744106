"""The agent's tools, declared in one registry.

A tool is a name, a description, a pydantic model of its arguments and either `run`
(ungated: runs at once, its answer goes back to the LLM) or `propose` (gated: turns the
arguments into the action a reviewer approves; the service carries it out once approved).
Which tools are offered and which need a human are configuration
(`[agent] tools`, `tools_requiring_human_confirmation`); plugins add tools with a
`module:attribute` that names a list of `ToolSpec` or a function returning one.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..domain import EmailAction
from ..mail.fields import BodyText, HeaderText
from .knowledge import Retriever

if TYPE_CHECKING:  # LlamaIndex loads with the agent, not with the service (service/agent/loader.py)
    from llama_index.core.tools import FunctionTool


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the run it serves."""

    run_id: str
    customer_email: str
    customer_name: str | None
    knowledge: Retriever


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    content: str
    sources: tuple[dict[str, Any], ...] = ()


RunTool = Callable[[ToolContext, Any], Awaitable[ToolAnswer]]
ProposeTool = Callable[[ToolContext, Any], EmailAction]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: type[BaseModel]
    run: RunTool | None = None
    propose: ProposeTool | None = None


class ToolArgumentError(ValueError):
    """The LLM called a tool badly; the message goes back to it as the tool's answer."""


class ToolConfigError(ValueError):
    """The configured tools do not make sense (an unknown name, a gated tool that cannot propose)."""


class _Args(BaseModel):
    # Unknown arguments are errors, so that the model cannot smuggle in a recipient.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SearchArgs(_Args):
    query: str = Field(min_length=1, max_length=1000, description="What to look for, in plain words")


class EmailArgs(_Args):
    # The ops API's own checks: one line, no control characters, line endings as delivered.
    subject: HeaderText = Field(description="The email's subject line")
    body: BodyText = Field(description="The email's plain-text body, with greeting and sign-off")


SEARCH_TOP_K = 4


async def search_knowledge_base(ctx: ToolContext, args: SearchArgs) -> ToolAnswer:
    passages = await ctx.knowledge.search(args.query, SEARCH_TOP_K)
    if not passages:
        return ToolAnswer("No passage of the knowledge base matches this query.")
    text = "\n\n".join(f"[{i}] {p.title} ({p.location})\n{p.text}" for i, p in enumerate(passages, 1))
    return ToolAnswer(text, tuple(p.source() for p in passages))


def propose_customer_email(ctx: ToolContext, args: EmailArgs) -> EmailAction:
    # The recipient is the run's customer, fixed by the operator's request, never the model's.
    # A bare address, as approvals hash them (service.domain.EmailAction.content_sha256).
    return EmailAction(to=(ctx.customer_email,), subject=args.subject, body=args.body)


BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="search_knowledge_base",
        description="Search the company's knowledge base (policies, FAQs) and return the most relevant passages.",
        parameters=SearchArgs,
        run=search_knowledge_base,
    ),
    ToolSpec(
        name="send_customer_email",
        description=("Propose the reply email to the customer of this request. A human reviews it before it is "
                     "sent; the answer says whether it was sent (and exactly what) or rejected (and why)."),
        parameters=EmailArgs,
        propose=propose_customer_email,
    ),
)


@dataclass
class ToolRegistry:
    specs: dict[str, ToolSpec]
    gated: frozenset[str]
    _llm_tools: list[FunctionTool] = field(default_factory=list)

    @classmethod
    def build(
        cls, extra: Iterable[ToolSpec] = (), *, enabled: Sequence[str] | None = None,
        requiring_confirmation: Sequence[str] = ("send_customer_email",),
    ) -> ToolRegistry:
        available = {spec.name: spec for spec in (*BUILTIN_TOOLS, *extra)}
        names = list(enabled) if enabled else list(available)
        unknown = [n for n in (*names, *requiring_confirmation) if n not in available]
        if unknown:
            raise ToolConfigError(f"unknown tools {unknown}; available: {sorted(available)}")
        gated = frozenset(requiring_confirmation) & set(names)
        for name in names:
            spec = available[name]
            if name in gated and spec.propose is None:
                raise ToolConfigError(f"tool {name!r} requires confirmation but cannot propose an action for review")
            if name not in gated and spec.run is None:
                raise ToolConfigError(f"tool {name!r} can only be proposed for review: list it in "
                                      "tools_requiring_human_confirmation")
        return cls({n: available[n] for n in names}, gated)

    def llm_tools(self) -> list[FunctionTool]:
        """The tools as the LLM sees them (name, description, JSON schema). Built once, by the
        agent's loader in its thread (this imports LlamaIndex), before any step asks for them."""
        if not self._llm_tools:
            from llama_index.core.tools import FunctionTool, ToolMetadata

            self._llm_tools = [
                FunctionTool(fn=_never_called,
                             metadata=ToolMetadata(name=s.name, description=s.description, fn_schema=s.parameters))
                for s in self.specs.values()
            ]
        return self._llm_tools

    def is_gated(self, name: str) -> bool:
        return name in self.gated

    def parse(self, name: str, arguments: dict[str, Any]) -> tuple[ToolSpec, BaseModel]:
        spec = self.specs.get(name)
        if spec is None:
            raise ToolArgumentError(f"there is no tool named {name!r}; the tools are {sorted(self.specs)}")
        try:
            return spec, spec.parameters.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            raise ToolArgumentError(f"invalid arguments for {name}: {problems}") from None


def _never_called(**kwargs: Any) -> None:
    raise RuntimeError("the agent workflow runs tools itself; FunctionTool only describes them to the LLM")


def load_plugins(paths: Sequence[str]) -> list[ToolSpec]:
    """`package.module:attribute` -> the ToolSpecs it names (a list, or a function returning one)."""
    specs: list[ToolSpec] = []
    for path in paths:
        module_name, _, attribute = path.partition(":")
        if not attribute:
            raise ToolConfigError(f"agent plugin {path!r} must look like 'package.module:attribute'")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise ToolConfigError(f"cannot load agent plugin {path!r}: {exc}") from exc
        found = target() if callable(target) else target
        for spec in found:
            if not isinstance(spec, ToolSpec):
                raise ToolConfigError(f"agent plugin {path!r} gave {type(spec).__name__}, not ToolSpec")
            specs.append(spec)
    return specs
