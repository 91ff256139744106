"""Adaptive Card builders for approvals (pure: standard library only, no I/O).

The Teams adapter builds an `ApprovalView` and calls one of the builders; see
`approval.py` for the cards and their actions, `text.py` for how untrusted text is
escaped and `size.py` for the size budget.
"""

from .approval import (
    INPUT_BODY,
    INPUT_DELEGATE_TO,
    INPUT_REASON,
    INPUT_SUBJECT,
    PROGRESS_LINE_CHARS,
    PROGRESS_LINES,
    VERB_APPROVE,
    VERB_DELEGATE,
    VERB_EDIT,
    VERB_REJECT,
    CardTooLarge,
    action_data,
    approvable_on_card,
    build_card,
    build_final_card,
    build_not_allowed_card,
    build_pending_card,
    pending_card_and_fit,
)
from .elements import CARD_VERSION
from .size import CARD_BUDGET_BYTES, card_size
from .view import ApprovalView, ChangeHunk, ChangeLine, ChangesView, DeliveryView, SourceView

__all__ = [
    "CARD_BUDGET_BYTES",
    "CARD_VERSION",
    "INPUT_BODY",
    "INPUT_DELEGATE_TO",
    "INPUT_REASON",
    "INPUT_SUBJECT",
    "PROGRESS_LINES",
    "PROGRESS_LINE_CHARS",
    "VERB_APPROVE",
    "VERB_DELEGATE",
    "VERB_EDIT",
    "VERB_REJECT",
    "ApprovalView",
    "CardTooLarge",
    "ChangeHunk",
    "ChangeLine",
    "ChangesView",
    "DeliveryView",
    "SourceView",
    "action_data",
    "approvable_on_card",
    "build_card",
    "build_final_card",
    "build_not_allowed_card",
    "build_pending_card",
    "card_size",
    "pending_card_and_fit",
]
