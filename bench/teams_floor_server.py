"""The Teams click floor: what any bot built on the SDK pays for a card click, and no more.

    POST /api/messages  the service's own endpoint and Bot Framework hosting: the SDK's
                        `CloudAdapter` with the service's JWT validation (signature against
                        the published keys, issuer, audience, endorsement, serviceUrl), the
                        activity read by msrest, one turn through `ActivityHandler` (the
                        service bot's `JsonInvokeHandler`); the bot answers every
                        `adaptiveCard/action` with the final card of a fixed approval, built
                        by `adaptive_cards` for each click
    GET  /healthz       200

No store, no decision, no jobs, no email, no card updates: those are the service's. The
issue asks for the SDK's `CloudAdapter` on this endpoint, so this is the least a click can
cost under that requirement; `bench/teams_invoke.py` sends it the same waves as the service.

Settings come from the environment like the service's (`MicrosoftAppId`,
`MicrosoftAppPassword`, `COUNTERSIGN_BOT_OPENID_METADATA_URL`, `COUNTERSIGN_BOT_TOKEN_URL`).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from aiohttp import web
from botbuilder.core import TurnContext
from botbuilder.schema import AdaptiveCardInvokeResponse, AdaptiveCardInvokeValue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from adaptive_cards.approval import build_card  # noqa: E402
from adaptive_cards.view import ApprovalView  # noqa: E402
from service.api.errors import error_middleware  # noqa: E402
from service.config import Settings  # noqa: E402
from service.foreground import Foreground  # noqa: E402
from service.teams.channel import build_adapter  # noqa: E402 (importing it applies the msrest fix too)
from service.teams.endpoint import MessagesEndpoint  # noqa: E402
from service.teams.invoke import JsonInvokeHandler  # noqa: E402
from service.teams.tenants import AllowedTenants


class FloorBot(JsonInvokeHandler):  # the service bot's base: the same invoke answer path
    async def on_adaptive_card_invoke(self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
                                      ) -> AdaptiveCardInvokeResponse:
        action = invoke_value.action if isinstance(invoke_value.action, dict) else {}
        data = action.get("data") if isinstance(action.get("data"), dict) else {}
        approve = action.get("verb") == "countersign.approve"
        view = ApprovalView(
            approval_id=str(data.get("approval_id") or "unknown"), run_id="run-1", revision=1,
            status="approved" if approve else "rejected", to=("customer@example.com",),
            subject="Re: your order", body="Hello,\n\nThank you for your message.\n" * 5,
            requested_by="ops", policy="default", decided_by=turn_context.activity.from_property.name,
            decided_at=datetime.now(timezone.utc), reason=None if approve else data.get("reason"),
        )
        return AdaptiveCardInvokeResponse(status_code=200, type="application/vnd.microsoft.card.adaptive",
                                          value=build_card(view))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings()
    endpoints: list[MessagesEndpoint] = []  # built at start-up, when the loop runs

    async def hosting(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            validator, _, adapter = build_adapter(settings, http)  # the service's own hosting
            assert validator is not None, "the floor validates tokens: set MicrosoftAppId"
            endpoints.append(MessagesEndpoint(adapter, FloorBot(), validator=validator, foreground=Foreground(),
                                              tenants=AllowedTenants(settings.effective_teams_allowed_tenants),
                                              max_body_bytes=settings.bot_max_body_bytes))
            gc.freeze()  # as the service does after start-up
            yield
            await validator.keys.aclose()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def messages(request: web.Request) -> web.Response:
        return await endpoints[0].handle(request)

    app = web.Application(middlewares=[error_middleware])  # the service's, for the same per-request work
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/messages", messages)
    app.cleanup_ctx.append(hosting)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
