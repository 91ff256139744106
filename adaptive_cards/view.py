"""What an approval card shows: frozen, validated descriptions built by the Teams adapter.

The card builders take only these views, never the store's rows, so they stay pure and
can be tested without a database. Status strings equal the values of
`service.domain.ApprovalStatus` and `DeliveryStatus` (their str enums may be passed as is).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "APPROVAL_STATUSES",
    "CHANGE_KINDS",
    "DELIVERY_STATUSES",
    "MAX_ID_LENGTH",
    "ApprovalView",
    "ChangeHunk",
    "ChangeLine",
    "ChangesView",
    "DeliveryView",
    "SourceView",
]

APPROVAL_STATUSES = ("pending", "approved", "rejected", "cancelled", "expired")
DELIVERY_STATUSES = ("queued", "sending", "sent", "failed")
CHANGE_KINDS = ("equal", "added", "removed")
# Identifiers travel in every action's data and cannot be shortened to fit a card.
MAX_ID_LENGTH = 200


def _status(value: Any, allowed: tuple[str, ...], what: str) -> str:
    text = value.value if hasattr(value, "value") else value
    if not isinstance(text, str) or text not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    return text


def _aware(value: datetime | None, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime or None, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"{what} must be a sequence of strings, not a single string")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must contain strings, got {type(item).__name__}")
    return items


def _items(value: Any, kind: type, what: str) -> tuple[Any, ...]:
    items = tuple(value)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{what} must contain {kind.__name__}, got {type(item).__name__}")
    return items


def _optional_text(value: Any, what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class SourceView:
    """Something the agent used to write the draft."""

    title: str
    location: str | None = None  # a URL, a file path, a ticket or message id
    snippet: str | None = None  # the passage that was used

    def __post_init__(self) -> None:
        if not isinstance(self.title, str):
            raise TypeError("source title must be a string")
        _optional_text(self.location, "source location")
        _optional_text(self.snippet, "source snippet")


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """Outcome of carrying out an approved action."""

    status: str  # queued | sending | sent | failed
    detail: str | None = None  # e.g. the SMTP reply or the error
    at: datetime | None = None  # when it reached this status (aware)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _status(self.status, DELIVERY_STATUSES, "delivery status"))
        _optional_text(self.detail, "delivery detail")
        _aware(self.at, "delivery at")


@dataclass(frozen=True, slots=True)
class ChangeLine:
    """A line of an edit's diff: in both texts (`equal`, context), only in the draft
    (`removed`) or only in what was approved (`added`). Plain text, no line end."""

    kind: str
    text: str

    def __post_init__(self) -> None:
        if self.kind not in CHANGE_KINDS:
            raise ValueError(f"change kind must be one of {', '.join(CHANGE_KINDS)}; got {self.kind!r}")
        if not isinstance(self.text, str) or "\n" in self.text or "\r" in self.text:
            raise ValueError("a change line must be a string without line ends")


@dataclass(frozen=True, slots=True)
class ChangeHunk:
    """Changed lines of the body with a little context; `draft_line`: the draft's line the
    hunk starts at (1-based; 0 when the draft had no line there)."""

    draft_line: int
    lines: tuple[ChangeLine, ...]

    def __post_init__(self) -> None:
        if isinstance(self.draft_line, bool) or not isinstance(self.draft_line, int) or self.draft_line < 0:
            raise ValueError(f"draft_line must be a non-negative integer, got {self.draft_line!r}")
        object.__setattr__(self, "lines", _items(self.lines, ChangeLine, "hunk lines"))


@dataclass(frozen=True, slots=True)
class ChangesView:
    """What the reviewers' edits changed before the text was approved, against the draft:
    the subject (draft, approved) when it changed, and the body's hunks."""

    subject: tuple[str, str] | None = None
    hunks: tuple[ChangeHunk, ...] = ()

    def __post_init__(self) -> None:
        if self.subject is not None:
            subject = tuple(self.subject)
            if len(subject) != 2 or not all(isinstance(s, str) for s in subject):
                raise TypeError("subject must be a (draft, approved) pair of strings or None")
            object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "hunks", _items(self.hunks, ChangeHunk, "hunks"))

    @property
    def added(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "added")

    @property
    def removed(self) -> int:
        return sum(1 for h in self.hunks for line in h.lines if line.kind == "removed")


@dataclass(frozen=True, slots=True)
class ApprovalView:
    """Everything an approval card can show.

    `to`, `cc`, `subject`, `body` and `in_reply_to` are the action as it stands: the draft
    while pending, and what was approved (after an edit) once approved. Lists are accepted
    for the tuple fields and stored as tuples.
    """

    approval_id: str
    run_id: str
    revision: int
    status: str  # pending | approved | rejected | cancelled | expired
    to: tuple[str, ...]
    subject: str
    body: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    sources: tuple[SourceView, ...] = ()
    requested_by: str | None = None
    policy: str | None = None  # the policy's name
    reviewers: tuple[str, ...] = ()  # who may decide
    anyone: bool = False  # the policy lets anyone the channel accepts decide (shown as such)
    deadline: datetime | None = None
    decided_by: str | None = None  # a display name or identity
    decided_at: datetime | None = None
    reason: str | None = None  # rejection (or cancellation) reason
    edited: bool = False  # approved after an edit
    delivery: DeliveryView | None = None
    # Where the whole request can be read and decided when the card cannot show it all.
    read_at: str | None = None
    decide_at: str | None = None
    # Multi-vote policies: the text's version (Approve answers for this one only), and
    # lines saying where the votes stand ("1 of 2 approvals: Rita at 10:42 UTC", who is
    # still asked, when the next reminder, escalation and expiry are due). Plain text.
    draft_version: int = 1
    progress: tuple[str, ...] = ()
    delegable: bool = False  # the policy lets a reviewer hand their vote over (a Delegate action)
    # Approved after an edit: what it changed against the draft (shown on the final card).
    changes: ChangesView | None = None

    def __post_init__(self) -> None:
        for name in ("approval_id", "run_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
            if len(value) > MAX_ID_LENGTH:
                raise ValueError(f"{name} is longer than {MAX_ID_LENGTH} characters")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int) or self.revision < 0:
            raise ValueError(f"revision must be a non-negative integer, got {self.revision!r}")
        object.__setattr__(self, "status", _status(self.status, APPROVAL_STATUSES, "status"))
        object.__setattr__(self, "to", _strings(self.to, "to"))
        object.__setattr__(self, "cc", _strings(self.cc, "cc"))
        object.__setattr__(self, "reviewers", _strings(self.reviewers, "reviewers"))
        object.__setattr__(self, "progress", _strings(self.progress, "progress"))
        if isinstance(self.draft_version, bool) or not isinstance(self.draft_version, int) or self.draft_version < 1:
            raise ValueError(f"draft_version must be a positive integer, got {self.draft_version!r}")
        object.__setattr__(self, "sources", _items(self.sources, SourceView, "sources"))
        if not isinstance(self.subject, str) or not isinstance(self.body, str):
            raise TypeError("subject and body must be strings")
        for name in ("in_reply_to", "requested_by", "policy", "decided_by", "reason", "read_at", "decide_at"):
            _optional_text(getattr(self, name), name)
        _aware(self.deadline, "deadline")
        _aware(self.decided_at, "decided_at")
        if not isinstance(self.edited, bool):
            raise TypeError("edited must be a bool")
        if not isinstance(self.anyone, bool):
            raise TypeError("anyone must be a bool")
        if self.delivery is not None and not isinstance(self.delivery, DeliveryView):
            raise TypeError("delivery must be a DeliveryView or None")
        if self.changes is not None and not isinstance(self.changes, ChangesView):
            raise TypeError("changes must be a ChangesView or None")

    @property
    def is_pending(self) -> bool:
        return self.status == "pending"
