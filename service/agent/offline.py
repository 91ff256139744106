"""The offline drafter: a LlamaIndex function-calling LLM that needs no key and no network.

It follows the same tool protocol as a real model, so the whole workflow (search, gated
email, decision, summary) runs unchanged: search the knowledge base for the customer's
message, propose a plain reply quoting the best passages, and after the outcome summarise
it. It cannot revise a rejected draft; it stops and says so. Its drafts say they were
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


def _call(name: str, arguments: dict[str, Any]) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=[
        ToolCallBlock(tool_call_id=f"call_{uuid.uuid4().hex[:24]}", tool_name=name, tool_kwargs=arguments)])


def _answer(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def next_message(messages: list[ChatMessage], tools: set[str]) -> ChatMessage:
    """What the drafter says next, from the conversation so far."""
    prompt = next((m.content or "" for m in messages if m.role == MessageRole.USER), "")
    fenced = _MESSAGE.search(prompt)
    request = (fenced.group(1).split("\n\n", 1)[-1] if fenced else prompt).strip()
    last = messages[-1] if messages else None
    if last is None or last.role != MessageRole.TOOL:
        if "search_knowledge_base" in tools:
            return _call("search_knowledge_base", {"query": request[:1000] or "customer question"})
        return _call("send_customer_email", _draft(prompt, request, []))
    tool = last.additional_kwargs.get("name")
    content = last.content or ""
    if tool == "search_knowledge_base":
        passages = [] if content.startswith("Error") else _PASSAGE.findall(content)
        return _call("send_customer_email", _draft(prompt, request, passages))
    if content.startswith("The email was approved"):
        subject = re.search(r"^Subject as sent: (.*)$", content, re.M)
        return _answer(f"Sent the reply{f' “{subject.group(1)}”' if subject else ''} to the customer; it was "
                       "drafted offline from the knowledge base.")
    if content.startswith("The reviewer rejected"):
        reason = content.split("Reason: ", 1)[-1].split("\n", 1)[0]
        return _answer(f"The offline drafter cannot revise a rejected draft, so it stops here. Reviewer's reason: {reason}")
    return _answer(f"Stopped: the {tool} tool answered with an error: {content[:300]}")


def _draft(prompt: str, request: str, passages: list[tuple[str, str, str]]) -> dict[str, str]:
    customer = _CUSTOMER.search(prompt)
    name = customer.group(1) if customer and customer.group(1) else None
    first_line = request.splitlines()[0] if request else ""
    subject = f"Re: {first_line[:70]}" if 0 < len(first_line) <= 70 else "Re: your message"
    lines = [f"Hello {name}," if name else "Hello,", "", "Thank you for your message."]
    if passages:
        lines += ["", "Here is what our policies say about it:", ""]
        for title, _location, text in passages[:2]:
            lines.append(f"{title}: {_sentences(text, 3)}")
            lines.append("")
        lines.append("If this does not fully answer your question, just reply to this email and a colleague "
                     "will follow up.")
    else:
        lines += ["", "A colleague will look into your question and get back to you shortly."]
    lines += ["", "Kind regards,", "Customer support", "", "--", LABEL]
    return {"subject": subject, "body": "\n".join(lines)}


def _sentences(text: str, count: int) -> str:
    flat = " ".join(line.strip("# ").strip() for line in text.splitlines() if line.strip())
    parts = re.split(r"(?<=[.!?])\s+", flat)
    return " ".join(parts[:count])
