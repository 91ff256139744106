"""The review page's HTML (pure). What it shows follows from the link and the approval:
the request with its forms while the reviewer may still decide; otherwise the outcome, who
decided and where, and why this link no longer acts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from adaptive_cards import ApprovalView

from .message import environment


class PageState(str, enum.Enum):
    OPEN = "open"  # the forms
    CONFIRM = "confirm"  # a code was sent: enter it to confirm the decision
    DONE = "done"  # this link's decision was taken: the outcome
    CLOSED = "closed"  # the approval ended (or this reviewer voted) elsewhere: the outcome
    EXPIRED = "expired"
    INVALID = "invalid"  # no such link, or not for this approval
    REFUSED = "refused"  # the decision path said no (why is in `message`)


@dataclass(frozen=True, slots=True)
class VoteLine:
    who: str
    what: str  # approved | rejected | edited and approved | handed the vote to X
    channel: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ReviewPage:
    state: PageState
    title: str
    message: str | None = None
    view: ApprovalView | None = None
    reviewer: str | None = None  # who the link is for
    csrf: str | None = None
    votes: tuple[VoteLine, ...] = ()
    confirm_with_code: bool = False
    delegates: tuple[str, ...] = ()  # who a vote may be handed to
    kept: dict[str, str] = field(default_factory=dict)  # the decision's fields, while a code is asked for

    @property
    def forms(self) -> bool:
        return self.state in (PageState.OPEN, PageState.REFUSED) and self.csrf is not None and self.view is not None \
            and self.view.is_pending


def render(page: ReviewPage) -> str:
    return environment().get_template("page.html.j2").render(p=page, v=page.view)
