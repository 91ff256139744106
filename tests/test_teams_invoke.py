"""Invoke answers: `JsonInvokeHandler` sends the same JSON the SDK's msrest walk would."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from botbuilder.core import TurnContext
from botbuilder.core.adapters import TestAdapter
from botbuilder.core.serializer_helper import serializer_helper
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse, ChannelAccount, ConversationAccount

from adaptive_cards import build_card
from adaptive_cards.view import ApprovalView
from service.teams.bot import ClickResult
from service.teams.invoke import JsonInvokeHandler, invoke_body


def test_invoke_body_is_what_the_sdks_serializer_makes() -> None:
    """`JsonInvokeHandler` skips msrest's walk; the answer on the wire must not change."""
    view = ApprovalView(approval_id="a-1", run_id="r-1", revision=2, status="approved", to=("c@example.com",),
                        cc=("d@example.com",), subject="Re: Ünïcode <b>", body="Line *one*\n\nLine [two](x)",
                        decided_by="Rita", decided_at=datetime(2026, 11, 21, 10, tzinfo=timezone.utc), edited=True)
    for answer in (ClickResult.card(build_card(view)).response,
                   ClickResult.error(403, "not_allowed", "You may not decide this one").response):
        assert invoke_body(answer) == serializer_helper(answer)


CARD = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approved"}]}


class _CardBot(JsonInvokeHandler):
    async def on_adaptive_card_invoke(self, turn_context: TurnContext, invoke_value: Any) -> AdaptiveCardInvokeResponse:
        return AdaptiveCardInvokeResponse(status_code=200, type="application/vnd.microsoft.card.adaptive", value=CARD)


def _click() -> TurnContext:
    activity = Activity(type="invoke", name="adaptiveCard/action", channel_id="msteams", service_url="http://x",
                        conversation=ConversationAccount(id="c-1"), from_property=ChannelAccount(id="u-1"),
                        recipient=ChannelAccount(id="bot"),
                        value={"action": {"type": "Action.Execute", "verb": "approve", "data": {}}})
    return TurnContext(TestAdapter(), activity)


async def test_card_answer_is_stored_for_the_adapter_without_a_copy() -> None:
    context = _click()
    await _CardBot().on_turn(context)
    stored = context.turn_state[TurnContext._INVOKE_RESPONSE_KEY]
    assert stored.type == "invokeResponse" and stored.value.status == 200
    assert stored.value.body == {"statusCode": 200, "type": "application/vnd.microsoft.card.adaptive", "value": CARD}
    assert stored.value.body["value"] is CARD and context.responded


async def test_middleware_watching_sends_still_sees_the_answer() -> None:
    context = _click()
    seen: list[Activity] = []

    async def watch(ctx: TurnContext, activities: list[Activity], send: Any) -> Any:
        seen.extend(activities)
        return await send()

    context.on_send_activities(watch)
    await _CardBot().on_turn(context)
    # The SDK's own path (TestAdapter records the send instead of storing it for an HTTP answer).
    assert [a.type for a in seen] == ["invokeResponse"] and seen[0].value.status == 200
    assert seen[0].value.body["value"] == CARD and seen[0].value.body["value"] is not CARD  # the SDK's copy
