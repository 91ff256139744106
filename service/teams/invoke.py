"""Invoke answers sent as the JSON they already are.

The SDK's `ActivityHandler.on_invoke_activity` passes an Adaptive Card action's answer
through msrest's serializer, which walks every element of the card object by object: about
a third of the CPU of a click on the bare SDK (bench/RESULTS.md, "SDK floor"). Our cards are
built as JSON-ready dicts, so that walk changes nothing but the time it takes.

The answer is also handed to the adapter directly rather than through
`TurnContext.send_activity`, which deep-copies it (card included) for middleware that
might watch sends; when such middleware is registered, or the caller expects buffered
replies, the SDK's path is kept.

The action's value is read here too: the SDK's own checks answer a malformed one with an
error whose value is an `Exception`, which nothing can serialise (a 500 instead of a 400).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from botbuilder.core import ActivityHandler, InvokeResponse, TurnContext
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    AdaptiveCardInvokeResponse,
    AdaptiveCardInvokeValue,
    DeliveryModes,
)

ADAPTIVE_CARD_ACTION = "adaptiveCard/action"
ERROR_CONTENT_TYPE = "application/vnd.microsoft.error"


class BadCardAction(ValueError):
    """An `adaptiveCard/action` invoke whose value is not an `Action.Execute` action."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def card_action_value(value: Any) -> AdaptiveCardInvokeValue:
    """The SDK's checks (`ActivityHandler._get_adaptive_card_invoke_value`), with errors we can send."""
    if value is None:
        raise BadCardAction("BadRequest", "Missing value property")
    if not isinstance(value, dict):
        raise BadCardAction("BadRequest", "Value property is not properly formed")
    # Only the model's own keys: msrest logs a warning for every other one (Teams sends
    # `trigger` with each click).
    invoke_value = AdaptiveCardInvokeValue(action=value.get("action"), authentication=value.get("authentication"),
                                           state=value.get("state"))
    action = invoke_value.action
    if action is None:
        raise BadCardAction("BadRequest", "Missing action property")
    if not isinstance(action, dict) or action.get("type") != "Action.Execute":
        kind = action.get("type") if isinstance(action, dict) else type(action).__name__
        raise BadCardAction("NotSupported", f"The action '{kind}' is not supported.")
    return invoke_value


def invoke_body(answer: AdaptiveCardInvokeResponse) -> dict[str, object]:
    """The wire form of an `AdaptiveCardInvokeResponse` (its msrest attribute map)."""
    return {"statusCode": answer.status_code, "type": answer.type, "value": answer.value}


class JsonInvokeHandler(ActivityHandler):
    """`on_adaptive_card_invoke` as the SDK dispatches it, answered without the msrest walk;
    every other invoke goes to the SDK unchanged."""

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse | None:
        if turn_context.activity.name != ADAPTIVE_CARD_ACTION:
            return await super().on_invoke_activity(turn_context)
        try:
            invoke_value = card_action_value(turn_context.activity.value)
        except BadCardAction as exc:
            return InvokeResponse(status=int(HTTPStatus.BAD_REQUEST), body={
                "statusCode": int(HTTPStatus.BAD_REQUEST), "type": ERROR_CONTENT_TYPE,
                "value": {"code": exc.code, "message": exc.message}})
        answer = await self.on_adaptive_card_invoke(turn_context, invoke_value)
        response = InvokeResponse(status=int(HTTPStatus.OK), body=invoke_body(answer))
        if not turn_context._on_send_activities and turn_context.activity.delivery_mode != DeliveryModes.expect_replies:
            # What the adapter's send_activities does with an invoke response, minus the copy;
            # ActivityHandler.on_turn sees it stored and sends nothing more.
            turn_context.turn_state[TurnContext._INVOKE_RESPONSE_KEY] = Activity(
                type=ActivityTypes.invoke_response, value=response)
            turn_context.responded = True
        return response
