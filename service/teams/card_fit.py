"""Whether a Teams card can show a stored approval whole, so that it may be approved on it."""

from __future__ import annotations

import threading

from adaptive_cards import approvable_on_card

from ..approval_views import ApiLinks, pending_view
from ..domain import Approval, ApprovalRefusal


class CardFit:
    """Whether the pending card of a stored approval shows all of it (`approvable_on_card`),
    judged once per approval in this process: when its card is built for posting, or at its
    first Approve. The verdict is a function of the approval as stored (action, policy,
    sources, revision, draft_version): a stored approval changes its text only with a new
    draft_version (an edit under a multi-vote policy), so it is remembered by (id, revision,
    draft_version). Used from the event
    loop (posting) and from the store's writer thread (inside a decision): hence the lock."""

    def __init__(self, links: ApiLinks, max_entries: int = 10_000) -> None:
        self.links = links
        self.max_entries = max_entries
        self._verdicts: dict[tuple[str, int, int], bool] = {}
        self._lock = threading.Lock()

    def remember(self, approval_id: str, revision: int, fits: bool, draft_version: int = 1) -> None:
        with self._lock:
            self._verdicts[(approval_id, revision, draft_version)] = fits
            while len(self._verdicts) > self.max_entries:  # oldest first (dicts keep insertion order)
                del self._verdicts[next(iter(self._verdicts))]

    def fits(self, approval: Approval) -> bool:
        with self._lock:
            known = self._verdicts.get((approval.id, approval.revision, approval.draft_version))
        if known is None:
            known = approvable_on_card(pending_view(approval, self.links))
            self.remember(approval.id, approval.revision, known, approval.draft_version)
        return known


def card_refusal(links: ApiLinks, fit: CardFit | None = None) -> ApprovalRefusal:
    """For `DecisionRequest.approval_refusal`: an Approve or Edit from a card is refused when
    the card of the STORED approval could not show all of it (decided on the server, never
    from what the click's payload says)."""
    judge = fit or CardFit(links)

    def refusal(approval: Approval) -> str | None:
        if judge.fits(approval):
            return None
        return ("This email is longer than a Teams card can show, so it cannot be approved in Teams. "
                f"Read the whole text with GET {links.run(approval.run_id)} and decide with "
                f"POST {links.decisions(approval.id)} (the Countersign API); it can still be rejected here.")
    return refusal
