"""`POST /api/messages`: the Bot Framework endpoint, written around `process_activity`.

The SDK's `CloudAdapter.process()` answers 500 to every invoke that returns a body (it
serialises an already serialised dict), so invoke answers are serialised here, once.

Order of checks, cheapest and most restrictive first, so that unauthenticated traffic
costs almost nothing: the token (header only: signature, issuer, audience, lifetime), then
the body size (`bot_max_body_bytes`), then parsing, then the tenant; only then does the
activity count as foreground work (a person waiting) and reach the bot. The checks that
need the activity (channel endorsement, serviceUrl) run in `process_activity`.
Every authentication failure is a 401, a foreign tenant a 403, bad bodies 400/413/415.
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
from .tenants import AllowedTenants, TenantNotAllowed
from .tokens import ChannelTokenValidator

log = logging.getLogger(__name__)


class MessagesEndpoint:
    def __init__(self, adapter: BotAdapter, bot: Bot, *, validator: ChannelTokenValidator | None,
                 foreground: Foreground, tenants: AllowedTenants, max_body_bytes: int) -> None:
        self.adapter = adapter
        self.bot = bot
        self.validator = validator  # None: the explicit insecure development mode
        self.insecure = validator is None
        self.foreground = foreground
        self.tenants = tenants
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: web.Request) -> web.Response:
        auth_header = request.headers.get("Authorization", "")
        if self.validator is None:
            log.warning("Bot Framework authentication is OFF (COUNTERSIGN_BOT_INSECURE_NO_AUTH): "
                        "anyone can post activities; never run this way in production")
        else:
            try:
                await self.validator.verify_token(auth_header)
            except PermissionError as exc:
                raise ApiError(401, "unauthorized", f"Bot Framework token rejected: {exc}") from None
        if request.content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "the Bot Framework sends application/json")
        data = _json_object(await _read_body(request, self.max_body_bytes))
        activity = _activity(data)
        try:
            tenant = self.tenants.check_activity(data)
        except TenantNotAllowed as exc:
            log.warning("Teams activity refused: %s", exc)
            raise ApiError(403, "tenant_not_allowed", str(exc)) from None
        if not activity.conversation.tenant_id:  # the SDK's model reads only `tenantID`
            activity.conversation.tenant_id = tenant
        try:
            # An invoke (a card click) has a person waiting, within Teams' deadline.
            with self.foreground.request() if activity.type == "invoke" else nullcontext():
                invoke = await self.adapter.process_activity(auth_header, activity, self.bot.on_turn)
        except TenantNotAllowed as exc:  # a member record or card routing refused further in
            log.warning("Teams activity from tenant %s refused: %s", tenant, exc)
            raise ApiError(403, "tenant_not_allowed", str(exc)) from None
        except PermissionError as exc:
            raise ApiError(401, "unauthorized", f"Bot Framework token rejected: {exc}") from None
        if invoke is None:
            return web.Response(status=200)
        return web.json_response(_json_ready(invoke.body), status=invoke.status)


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = ApiError(413, "payload_too_large",
                         f"the activity is larger than the {limit} bytes allowed (COUNTERSIGN_BOT_MAX_BODY_BYTES)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _json_object(body: bytes) -> dict[str, Any]:
    data = json_input.loads(body)  # 400 for bad or too deeply nested JSON, never a RecursionError
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_activity", "an activity is a JSON object")
    return data


def _activity(data: dict[str, Any]) -> Activity:
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
