"""Adaptive Card 1.5 elements as plain dicts: one place that decides their exact shape.

Texts given to these helpers are shown as they are: callers escape untrusted text first
(`adaptive_cards.text`). Only properties defined by the Adaptive Cards 1.5 schema are
emitted; in particular no Teams-only `msteams` property (see `approval.py`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CARD_SCHEMA",
    "CARD_VERSION",
    "adaptive_card",
    "container",
    "execute_action",
    "fact_set",
    "input_text",
    "show_card_action",
    "text_block",
]

CARD_VERSION = "1.5"  # the highest version Teams renders
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"

Element = dict[str, Any]


def text_block(
    text: str,
    *,
    weight: str | None = None,
    size: str | None = None,
    color: str | None = None,
    subtle: bool = False,
    heading: bool = False,
    spacing: str | None = None,
    separator: bool = False,
) -> Element:
    block: Element = {"type": "TextBlock", "text": text, "wrap": True}
    if heading:
        block["style"] = "heading"
    if weight:
        block["weight"] = weight
    if size:
        block["size"] = size
    if color:
        block["color"] = color
    if subtle:
        block["isSubtle"] = True
    if spacing:
        block["spacing"] = spacing
    if separator:
        block["separator"] = True
    return block


def fact_set(facts: list[tuple[str, str]], *, spacing: str | None = None) -> Element:
    element: Element = {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in facts]}
    if spacing:
        element["spacing"] = spacing
    return element


def container(
    items: list[Element], *, style: str | None = None, spacing: str | None = None, separator: bool = False
) -> Element:
    element: Element = {"type": "Container", "items": items}
    if style:
        element["style"] = style
    if spacing:
        element["spacing"] = spacing
    if separator:
        element["separator"] = True
    return element


def input_text(
    input_id: str,
    *,
    label: str,
    value: str | None = None,
    multiline: bool = False,
    required: bool = False,
    error_message: str | None = None,
    placeholder: str | None = None,
    regex: str | None = None,
) -> Element:
    """An `Input.Text`. `value` is a raw prefill (inputs do not render markdown).

    No `maxLength` is set: a client could cut a prefilled draft to it without saying so.
    """
    element: Element = {"type": "Input.Text", "id": input_id, "label": label}
    if value is not None:
        element["value"] = value
    if multiline:
        element["isMultiline"] = True
    if placeholder:
        element["placeholder"] = placeholder
    if required:
        element["isRequired"] = True
    if error_message:
        element["errorMessage"] = error_message
    if regex:
        element["regex"] = regex
    return element


def execute_action(title: str, verb: str, data: dict[str, Any], *, style: str | None = None) -> Element:
    """`Action.Execute` (Universal Actions, 1.4+) with an equivalent `Action.Submit` fallback.

    The fallback carries the same data plus the verb, for clients without Action.Execute.
    """
    fallback: Element = {"type": "Action.Submit", "title": title, "data": {**data, "verb": verb}}
    action: Element = {"type": "Action.Execute", "title": title, "verb": verb, "data": dict(data)}
    if style:
        action["style"] = style
        fallback["style"] = style
    action["fallback"] = fallback
    return action


def show_card_action(title: str, body: list[Element], actions: list[Element], *, style: str | None = None) -> Element:
    """`Action.ShowCard`; the inline card needs no version of its own."""
    action: Element = {
        "type": "Action.ShowCard",
        "title": title,
        "card": {"type": "AdaptiveCard", "body": body, "actions": actions},
    }
    if style:
        action["style"] = style
    return action


def adaptive_card(body: list[Element], actions: list[Element] | None, *, fallback_text: str) -> Element:
    """A top-level card. `actions=None` (or empty) emits no `actions` key at all."""
    card: Element = {
        "type": "AdaptiveCard",
        "$schema": CARD_SCHEMA,
        "version": CARD_VERSION,
        "fallbackText": fallback_text,
        "body": body,
    }
    if actions:
        card["actions"] = actions
    return card
