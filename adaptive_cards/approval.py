"""Approval cards (Adaptive Cards 1.5): pending, final, and "not allowed".

Public functions take an `ApprovalView` and return the card as a JSON-ready dict:

* `build_pending_card(view)`: the draft with Approve, Edit and approve, Reject.
* `build_final_card(view)`: who decided what and when, the delivery outcome; no actions.
  An "already decided" answer is this card.
* `build_not_allowed_card(view, message=None)`: for someone who clicked but may not decide;
  the pending content stays visible, no actions.
* `build_card(view)`: the pending card while pending, the final card otherwise.

Actions. Every `Action.Execute` carries ``data = {"approval_id", "revision"}`` and nothing
else: who decides is always taken from the authenticated activity, never from the card.
Each has an `Action.Submit` fallback with the same data plus ``"verb"`` for clients
without Universal Actions. Input values (`INPUT_SUBJECT`, `INPUT_BODY`, `INPUT_REASON`)
are merged into the data by the client.

Teams-only properties. The Adaptive Cards 1.5 JSON schema has ``additionalProperties:
false``, so ``"msteams": {"width": "Full"}`` fails it while the renderer ignores it. The
cards therefore carry no Teams-only property at all: what the tests validate against both
the schema and the official renderer is exactly what is sent. (Full width is cosmetic.)

Size. A card never exceeds `CARD_BUDGET_BYTES` (see `size.py`). When it would, in order:
sources are compacted; the "Edit and approve" form (which repeats the whole draft as a
prefilled input, and must never be cut, or an edit would silently drop the end of the
email) is replaced by a note "too long to edit in Teams; edit it via the API"; sources are
reduced to titles; then the shown body is cut with a marker "… (truncated, N more
characters)", dropping sources entirely before showing less than `MIN_BODY_CHARS`.
A card that cuts anything that would be approved (body, recipients, subject) offers
Reject only, with a notice saying where the whole text can be read and decided
(`approvable_on_card` tells the server the same from the stored approval).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import size
from .elements import Element, adaptive_card, execute_action, input_text, show_card_action, text_block
from .sections import (
    changes_section,
    content_sections,
    decision_banner,
    notice,
    reference_line,
    shows_action_in_full,
)
from .size import CARD_BUDGET_BYTES, MIN_BODY_CHARS, Limits, fits
from .text import clip, escape_inline
from .view import ApprovalView

__all__ = [
    "INPUT_BODY",
    "INPUT_REASON",
    "INPUT_SUBJECT",
    "VERB_APPROVE",
    "VERB_EDIT",
    "VERB_REJECT",
    "CardTooLarge",
    "action_data",
    "approvable_on_card",
    "build_card",
    "build_final_card",
    "build_not_allowed_card",
    "build_pending_card",
]

VERB_APPROVE = "countersign.approve"
VERB_EDIT = "countersign.edit"
VERB_REJECT = "countersign.reject"
VERB_DELEGATE = "countersign.delegate"

INPUT_SUBJECT = "subject"
INPUT_BODY = "body"
INPUT_REASON = "reason"
INPUT_DELEGATE_TO = "delegate_to"
# The votes notice is bounded, so that whether a card can show a whole email can be judged
# without knowing the votes (views.CardFit assumes the largest notice).
PROGRESS_LINES = 3
PROGRESS_LINE_CHARS = 300

# Some text that is not only whitespace; the same under "search" (JavaScript renderer) and
# "full match" regex semantics.
NOT_BLANK = r"^[\s\S]*\S[\s\S]*$"

DEFAULT_NOT_ALLOWED = "You are not one of the reviewers who may decide on this request."


class CardTooLarge(Exception):
    """No card within the budget could be built (cannot happen for a validated view)."""


def action_data(view: ApprovalView) -> dict[str, Any]:
    """The data every action of the pending card carries."""
    data: dict[str, Any] = {"approval_id": view.approval_id, "revision": view.revision}
    if view.draft_version > 1:  # absent: the first text (cards posted before versions existed too)
        data["draft_version"] = view.draft_version
    return data


def _fallback_text(view: ApprovalView) -> str:
    return escape_inline(f"Countersign approval {view.approval_id}: this Teams client cannot show the card.")


def _pending_actions(view: ApprovalView, editable: bool, approvable: bool = True) -> list[Element]:
    data = action_data(view)
    actions = [execute_action("Approve", VERB_APPROVE, data, style="positive")] if approvable else []
    if editable and approvable:
        actions.append(
            show_card_action(
                "Edit and approve",
                [
                    input_text(
                        INPUT_SUBJECT,
                        label="Subject",
                        value=view.subject,
                        required=True,
                        error_message="Enter a subject.",
                        regex=NOT_BLANK,
                    ),
                    input_text(
                        INPUT_BODY,
                        label="Body",
                        value=view.body,
                        multiline=True,
                        required=True,
                        error_message="Enter the email body.",
                        regex=NOT_BLANK,
                    ),
                ],
                [execute_action("Approve edited email", VERB_EDIT, data, style="positive")],
            )
        )
    if view.delegable:
        actions.append(
            show_card_action(
                "Hand over my vote",
                [
                    input_text(
                        INPUT_DELEGATE_TO,
                        label="Who votes instead of you (email)",
                        required=True,
                        error_message="Enter the email of the person.",
                        regex=NOT_BLANK,
                    )
                ],
                [execute_action("Hand over", VERB_DELEGATE, data)],
            )
        )
    actions.append(
        show_card_action(
            "Reject",
            [
                input_text(
                    INPUT_REASON,
                    label="Reason for rejecting",
                    multiline=True,
                    required=True,
                    error_message="Say why this email should not be sent.",
                    placeholder="What is wrong with this draft?",
                    regex=NOT_BLANK,
                )
            ],
            [execute_action("Reject", VERB_REJECT, data, style="destructive")],
            style="destructive",
        )
    )
    return actions


def too_long_lines(view: ApprovalView) -> list[str]:
    """Where a request too long for a card can be read whole and decided (escaped)."""
    lines = ["This card cannot show the whole email, so it cannot be approved in Teams: only rejected."]
    if view.read_at and view.decide_at:
        lines.append(escape_inline(f"Read the whole text with GET {view.read_at} and decide with "
                                   f"POST {view.decide_at} (the Countersign API)."))
    else:
        lines.append("Read the whole text and decide through the Countersign API.")
    return lines


def _pending(view: ApprovalView, limits: Limits, editable: bool, approvable: bool = True) -> Element:
    body: list[Element] = [
        text_block("Approval needed: send an email", heading=True, weight="Bolder", size="Medium"),
    ]
    if not approvable:
        body.append(notice("Too long to approve here", too_long_lines(view), style="warning"))
    body += _progress(view, limits)
    body += [
        *content_sections(view, limits, draft_title="Draft", with_request=True,
                          edit_unavailable=not editable and approvable),
        reference_line(view),
    ]
    return adaptive_card(body, _pending_actions(view, editable, approvable), fallback_text=_fallback_text(view))


_DRAFT_TITLES = {
    "approved": "Approved email",
    "rejected": "Rejected draft",
    "cancelled": "Draft",
    "expired": "Draft",
}


def _progress(view: ApprovalView, limits: Limits) -> list[Element]:
    if not view.progress:
        return []
    lines = [escape_inline(clip(line, min(limits.field_chars, PROGRESS_LINE_CHARS))[0])
             for line in view.progress[:PROGRESS_LINES]]
    return [notice("Votes", lines, style="emphasis")]


def _final(view: ApprovalView, limits: Limits) -> Element:
    body: list[Element] = [
        *decision_banner(view, limits),
        *_progress(view, limits),
        *(changes_section(view, limits) if view.status == "approved" else ()),
        *content_sections(view, limits, draft_title=_DRAFT_TITLES[view.status], with_request=False),
        reference_line(view),
    ]
    return adaptive_card(body, None, fallback_text=_fallback_text(view))


def _not_allowed(view: ApprovalView, limits: Limits, message: str) -> Element:
    shown, omitted = clip(message, limits.text_chars)
    text = escape_inline(shown) + (" …" if omitted else "")
    body: list[Element] = [
        notice(
            "You can't decide on this request",
            [text, "Nothing was changed: the request is still waiting for a reviewer who may decide."],
            style="attention",
        ),
        *content_sections(view, limits, draft_title="Draft", with_request=True),
        reference_line(view),
    ]
    return adaptive_card(body, None, fallback_text=_fallback_text(view))


def _largest_body(build: Callable[[Limits], Element], limits: Limits, body_length: int) -> tuple[int, Element] | None:
    """The most body characters that fit with `limits`, and that card; None if even 0 does not."""
    best = build(replace(limits, body_chars=0))
    if not fits(best):
        return None
    # Every shown character costs at least one byte: no need to try more than the budget.
    lo, hi, best_n = 1, min(body_length, CARD_BUDGET_BYTES), 0
    while lo <= hi:
        mid = (lo + hi) // 2
        card = build(replace(limits, body_chars=mid))
        if fits(card):
            best, best_n, lo = card, mid, mid + 1
        else:
            hi = mid - 1
    return best_n, best


def _fit(full_steps: list[Callable[[], Element]], build_cut: Callable[[Limits], Element], body_length: int) -> Element:
    """The first of `full_steps` within the budget, else the draft body cut to fit."""
    if body_length <= CARD_BUDGET_BYTES:  # otherwise the whole body cannot fit: skip the attempts
        for step in full_steps:
            card = step()
            if fits(card):
                return card
    for limits in (size.COMPACT_SOURCES, size.NO_SOURCES, size.MINIMAL):
        found = _largest_body(build_cut, limits, body_length)
        if found is None:
            continue
        shown, card = found
        if shown >= min(MIN_BODY_CHARS, body_length) or limits is size.MINIMAL:
            return card
    raise CardTooLarge(f"no card within {CARD_BUDGET_BYTES} bytes")


def _complete_pending_card(view: ApprovalView) -> Element | None:
    """The pending card showing the whole action (recipients, subject, body), with
    Approve; None when no such card fits the budget."""
    if len(view.body) > CARD_BUDGET_BYTES or not shows_action_in_full(view, size.FULL):
        return None
    for limits, editable in ((size.FULL, True), (size.COMPACT_SOURCES, True), (size.FULL, False),
                             (size.COMPACT_SOURCES, False), (size.SOURCE_TITLES, False)):
        card = _pending(view, limits, editable)
        if fits(card):
            return card
    return None


def approvable_on_card(view: ApprovalView) -> bool:
    """Whether the pending card shows everything that would be approved, and so offers
    Approve. The server asks this of the stored approval before taking an Approve or Edit
    from a card: what the card's payload claims is never trusted."""
    return _complete_pending_card(view) is not None


def build_pending_card(view: ApprovalView) -> dict[str, Any]:
    """The card reviewers act on. `view.status` must be pending.

    A card that cannot show the whole action offers Reject only, and says where the whole
    text can be read and decided (`view.read_at`, `view.decide_at`)."""
    return pending_card_and_fit(view)[0]


def pending_card_and_fit(view: ApprovalView) -> tuple[dict[str, Any], bool]:
    """`build_pending_card`, and whether that card offers Approve (`approvable_on_card`),
    found by the same work: a caller posting the card can remember the verdict."""
    if not view.is_pending:
        raise ValueError(f"approval {view.approval_id} is {view.status}, not pending")
    card = _complete_pending_card(view)
    if card is not None:
        return card, True
    return _fit([], lambda limits: _pending(view, limits, False, approvable=False), len(view.body)), False


def build_final_card(view: ApprovalView) -> dict[str, Any]:
    """The card once decided, cancelled or expired (also the "already decided" answer)."""
    if view.is_pending:
        raise ValueError(f"approval {view.approval_id} is still pending")
    return _fit(
        [
            lambda: _final(view, size.FULL),
            lambda: _final(view, size.COMPACT_SOURCES),
            lambda: _final(view, size.SOURCE_TITLES),
        ],
        lambda limits: _final(view, limits),
        len(view.body),
    )


def build_not_allowed_card(view: ApprovalView, message: str | None = None) -> dict[str, Any]:
    """For someone who may not decide: says so, shows the request, offers no action.

    `message` is shown escaped (default: `DEFAULT_NOT_ALLOWED`); pass a sentence meant for
    the person, not an internal error. A view that is no longer pending gets the final
    card: that the request is decided is what matters to them.
    """
    if not view.is_pending:
        return build_final_card(view)
    text = message if message and message.strip() else DEFAULT_NOT_ALLOWED
    return _fit(
        [
            lambda: _not_allowed(view, size.FULL, text),
            lambda: _not_allowed(view, size.COMPACT_SOURCES, text),
            lambda: _not_allowed(view, size.SOURCE_TITLES, text),
        ],
        lambda limits: _not_allowed(view, limits, text),
        len(view.body),
    )


def build_card(view: ApprovalView) -> dict[str, Any]:
    """The card for the approval's current state."""
    return build_pending_card(view) if view.is_pending else build_final_card(view)
