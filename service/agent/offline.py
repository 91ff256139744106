"""The offline drafter: a LlamaIndex function-calling LLM that needs no key and no network.

It follows the same tool protocol as a real model, so the whole workflow (search, gated
email, decision, summary) runs unchanged: search the knowledge base once per question the
customer asks (parallel calls in one turn), propose a plain reply that answers each with a
sentence or two of the passage that fits it (service/agent/offline_reply.py), and after
the outcome summarise it. It cannot revise a rejected draft; it stops and says so. Its drafts say they were
assembled automatically, so neither reviewer nor customer mistakes them for a person's.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from . import offline_reply as reply

MODEL_NAME = "countersign-offline-drafter"
LABEL = ("This reply was assembled automatically from our help articles and checked by a member of our "
         "support team before it was sent.")

_MESSAGE = re.compile(r"<<<CUSTOMER MESSAGE\n(.*)\nCUSTOMER MESSAGE>>>", re.S)
_CUSTOMER = re.compile(r"^From: (?:(.+?) <)?[^<>\n]+>?$", re.M)
_PASSAGE = re.compile(r"^\[\d+\] (.+?) \((.+?)\)\n(.*?)(?=\n\n\[\d+\] |\Z)", re.S | re.M)


class OfflineDrafter(FunctionCallingLLM):
    @classmethod
    def class_name(cls) -> str:
        return "CountersignOfflineDrafter"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=MODEL_NAME, is_chat_model=True, is_function_calling_model=True,
                           context_window=32768, num_output=2048)

    def _prepare_chat_with_tools(
        self, tools: Sequence[Any], user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None, verbose: bool = False,
        allow_parallel_tool_calls: bool = False, tool_required: bool = False, **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(user_msg if isinstance(user_msg, ChatMessage) else ChatMessage(role="user", content=user_msg))
        return {"messages": messages, "tools": [t.metadata.name for t in tools]}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = [ToolSelection(tool_id=b.tool_call_id or "", tool_name=b.tool_name,
                               tool_kwargs=b.tool_kwargs if isinstance(b.tool_kwargs, dict) else {})
                 for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if not calls and error_on_no_tool_call:
            raise ValueError("the offline drafter answered without a tool call")
        return calls

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=next_message(list(messages), set(kwargs.get("tools") or ())))

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        response = self.chat(messages, **kwargs)
        yield ChatResponse(message=response.message, delta=response.message.content or "")

    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        response = self.chat(messages, **kwargs)

        async def gen() -> ChatResponseAsyncGen:
            yield ChatResponse(message=response.message, delta=response.message.content or "")

        return gen()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text = self.chat([ChatMessage(role="user", content=prompt)]).message.content or ""
        return CompletionResponse(text=text)

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self.complete(prompt)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        yield self.complete(prompt)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        response = self.complete(prompt)

        async def gen() -> CompletionResponseAsyncGen:
            yield response

        return gen()


def _block(name: str, arguments: dict[str, Any]) -> ToolCallBlock:
    return ToolCallBlock(tool_call_id=f"call_{uuid.uuid4().hex[:24]}", tool_name=name, tool_kwargs=arguments)


def _call(name: str, arguments: dict[str, Any]) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=[_block(name, arguments)])


def _answer(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def next_message(messages: list[ChatMessage], tools: set[str]) -> ChatMessage:
    """What the drafter says next, from the conversation so far."""
    prompt = next((m.content or "" for m in messages if m.role == MessageRole.USER), "")
    fenced = _MESSAGE.search(prompt)
    request = (fenced.group(1).split("\n\n", 1)[-1] if fenced else prompt).strip()
    asked = reply.questions(request)
    last_call = max((i for i, m in enumerate(messages) if m.role == MessageRole.ASSISTANT), default=-1)
    results = [m for m in messages[last_call + 1:] if m.role == MessageRole.TOOL]
    if not results:
        if "search_knowledge_base" in tools:
            # One search per question, as parallel calls in one turn: the workflow runs them
            # and hands back one TOOL message per call, matched by its call id.
            return ChatMessage(role=MessageRole.ASSISTANT, blocks=[
                _block("search_knowledge_base", {"query": _query(q)}) for q in asked or [reply.Question("customer question")]])
        return _call("send_customer_email", _draft(prompt, request, asked, []))
    outcome = next((m for m in results if m.additional_kwargs.get("name") != "search_knowledge_base"), None)
    if outcome is None:
        return _call("send_customer_email", _draft(prompt, request, asked, _found(messages[last_call], results)))
    tool = outcome.additional_kwargs.get("name")
    content = outcome.content or ""
    if content.startswith("The email was approved"):
        subject = re.search(r"^Subject as sent: (.*)$", content, re.M)
        return _answer(f"Sent the reply{f' “{subject.group(1)}”' if subject else ''} to the customer; it was "
                       "drafted offline from the knowledge base.")
    if content.startswith("The reviewer rejected"):
        reason = content.split("Reason: ", 1)[-1].split("\n", 1)[0]
        return _answer(f"The offline drafter cannot revise a rejected draft, so it stops here. Reviewer's reason: {reason}")
    return _answer(f"Stopped: the {tool} tool answered with an error: {content[:300]}")


def _query(question: reply.Question) -> str:
    # "How do I reset it?" finds nothing alone; the sentence before says what "it" is.
    text = f"{question.before} {question.text}" if question.context() else question.text
    return text.strip()[:1000]


def _found(call: ChatMessage, results: list[ChatMessage]) -> list[list[reply.Found]]:
    """What each of the turn's searches found, in the order they were called."""
    by_id = {m.additional_kwargs.get("tool_call_id"): m.content or "" for m in results}
    found: list[list[reply.Found]] = []
    for block in (b for b in call.blocks if isinstance(b, ToolCallBlock)):
        content = by_id.get(block.tool_call_id, "")
        passages = [] if content.startswith("Error") else _PASSAGE.findall(content)
        found.append([reply.Found(title, location, text, rank) for rank, (title, location, text)
                      in enumerate(passages, 1)])
    return found


def _draft(prompt: str, request: str, asked: list[reply.Question], found: list[list[reply.Found]]) -> dict[str, str]:
    customer = _CUSTOMER.search(prompt)
    name = customer.group(1) if customer and customer.group(1) else None
    first_line = request.splitlines()[0] if request else ""
    subject = f"Re: {first_line[:70]}" if 0 < len(first_line) <= 70 else "Re: your message"
    answers = reply.answer(request, found, asked) if found else [reply.Answer(q.text, None) for q in asked]
    return {"subject": subject, "body": reply.body(name, answers, LABEL)}
