"""A local OpenAI-compatible HTTP server: `POST /v1/chat/completions` answers from a script,
`POST /v1/embeddings` with deterministic bag-of-words vectors.

The service talks to it with the real OpenAI client (llama-index-llms-openai), exactly as it
would talk to OpenAI, vLLM or Ollama. Every request body is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass(frozen=True)
class Call:
    """The assistant calls tools."""

    calls: tuple[tuple[str, dict[str, Any]], ...]  # (name, arguments)
    ids: tuple[str, ...] | None = None  # as the server sends them; default: unique per call


@dataclass(frozen=True)
class Say:
    """The assistant answers in text, with no tool call."""

    text: str


@dataclass(frozen=True)
class Fail:
    """An HTTP error, as OpenAI sends it."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def call(name: str, **arguments: Any) -> Call:
    return Call(((name, arguments),))


@dataclass(frozen=True)
class Stall:
    """No answer for `seconds` (longer than the client's timeout), then a 500 if still connected."""

    seconds: float


Step = Call | Say | Fail | Stall


class ScriptedLLM:
    """Answers chat completions with the next step of its script; records every request."""

    def __init__(self, script: list[Step] | None = None) -> None:
        self.script: list[Step] = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each chat request
        self.embedding_requests = 0
        self._lock = threading.Lock()
        self._ids = 0
        self.server: TestServer | None = None
        self.delay = 0.0  # seconds before every answer
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if "messages" in r]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return str(self.server.make_url("/v1"))

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _chat(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "").split(" ")[0] != "Bearer":
            return web.json_response({"error": {"message": "no API key"}}, status=401)
        body = await request.json()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._answer(body)
        finally:
            self.in_flight -= 1

    async def _answer(self, body: dict[str, Any]) -> web.Response:
        with self._lock:
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            if not self.script:
                return web.json_response({"error": {"message": "the test script has no step left",
                                                    "type": "server_error"}}, status=400)
            step = self.script.pop(0)
            self._ids += 1
            n = self._ids
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(step, Stall):
            await asyncio.sleep(step.seconds)
            return web.json_response({"error": {"message": "stalled"}}, status=500)
        if isinstance(step, Fail):
            return web.json_response({"error": {"message": step.message, "type": "error", "code": None}},
                                     status=step.status, headers=step.headers)
        if isinstance(step, Say):
            message: dict[str, Any] = {"role": "assistant", "content": step.text}
            finish = "stop"
        else:
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": step.ids[i] if step.ids else f"call_{n}_{i}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(args)}}
                for i, (name, args) in enumerate(step.calls)]}
            finish = "tool_calls"
        return web.json_response({
            "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "test"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with self._lock:
            self.embedding_requests += 1
        return web.json_response({
            "object": "list", "model": body.get("model", "test"),
            "data": [{"object": "embedding", "index": i, "embedding": embed(text)} for i, text in enumerate(inputs)],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        })


DIMENSIONS = 256
_WORD = re.compile(r"[a-z]{3,}")


def embed(text: str) -> list[float]:
    """Hashed bag of word stems: texts sharing words point the same way."""
    vector = [0.0] * DIMENSIONS
    for word in _WORD.findall(text.lower()):
        stem = word[:5]
        vector[int(hashlib.md5(stem.encode()).hexdigest(), 16) % DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
