"""`POST /api/messages`: the Bot Framework endpoint, written around `process_activity`.

The SDK's `CloudAdapter.process()` answers 500 to every invoke that returns a body (it
serialises an already serialised dict), so invoke answers are serialised here, once.
Every authentication failure is a 401; bad bodies are 400/415 problems.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from aiohttp import web
from botbuilder.core import Bot, BotAdapter
from botbuilder.schema import Activity

from ..api import json_input
from ..api.errors import ApiError
from ..foreground import Foreground

log = logging.getLogger(__name__)


class MessagesEndpoint:
    def __init__(self, adapter: BotAdapter, bot: Bot, *, insecure: bool, foreground: Foreground) -> None:
        self.adapter = adapter
        self.bot = bot
        self.insecure = insecure
        self.foreground = foreground

    async def handle(self, request: web.Request) -> web.Response:
        if self.insecure:
            log.warning("Bot Framework authentication is OFF (COUNTERSIGN_BOT_INSECURE_NO_AUTH): "
                        "anyone can post activities; never run this way in production")
        if request.content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "the Bot Framework sends application/json")
        activity = _activity(await request.read())
        try:
            # An invoke (a card click) has a person waiting, within Teams' deadline.
            with self.foreground.request() if activity.type == "invoke" else nullcontext():
                invoke = await self.adapter.process_activity(request.headers.get("Authorization", ""), activity,
                                                             self.bot.on_turn)
        except PermissionError as exc:
            raise ApiError(401, "unauthorized", f"Bot Framework token rejected: {exc}") from None
        if invoke is None:
            return web.Response(status=200)
        return web.json_response(_json_ready(invoke.body), status=invoke.status)


def _activity(body: bytes) -> Activity:
    data = json_input.loads(body)  # 400 for bad or too deeply nested JSON, never a RecursionError
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_activity", "an activity is a JSON object")
    try:
        activity = Activity().deserialize(data)
    except Exception as exc:  # msrest raises several types for ill-typed fields
        raise ApiError(400, "invalid_activity", f"the activity cannot be read: {exc}") from None
    missing = [name for name, value in (("type", activity.type), ("serviceUrl", activity.service_url),
                                        ("conversation", activity.conversation)) if not value]
    if missing:
        raise ApiError(400, "invalid_activity", f"the activity lacks {', '.join(missing)}",
                       [{"field": name, "message": "required"} for name in missing])
    return activity


def _json_ready(body: Any) -> Any:
    """An invoke body may be an SDK model or already a dict: serialise it exactly once."""
    return body.serialize() if hasattr(body, "serialize") else body
