"""Who may decide on an approval. Pure: checked on the server against the stored policy.

A policy is stored with each approval when it is created, so changing the configured
policies later never changes the rules of a request already waiting.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .domain import NotAllowed, Reviewer


class PolicyMode(str, enum.Enum):
    # The first valid decision settles the approval. Further modes (all, quorum, stages)
    # count the decisions table's votes; see architecture notes.
    FIRST_RESPONDER = "first_responder"


@dataclass(frozen=True, slots=True)
class Policy:
    name: str = "default"
    mode: PolicyMode = PolicyMode.FIRST_RESPONDER
    # Identities (AAD object ids or email addresses, compared case-insensitively) allowed to
    # decide. Empty: anyone the channel authenticates as a reviewer.
    reviewers: tuple[str, ...] = ()
    allow_self_approval: bool = False
    # Where Teams shows the approval: a channel (a new thread each) and/or reviewers in
    # personal chat (AAD object ids or emails of people the bot knows).
    teams_channel: str | None = None
    teams_chat: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names_reviewers_by_email(self) -> bool:
        return any("@" in r for r in self.reviewers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode.value,
            "reviewers": list(self.reviewers),
            "allow_self_approval": self.allow_self_approval,
            "teams_channel": self.teams_channel,
            "teams_chat": list(self.teams_chat),
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls(
            name=data.get("name", "default"),
            mode=PolicyMode(data.get("mode", PolicyMode.FIRST_RESPONDER.value)),
            reviewers=tuple(data.get("reviewers") or ()),
            allow_self_approval=bool(data.get("allow_self_approval", False)),
            teams_channel=data.get("teams_channel") or None,
            teams_chat=tuple(data.get("teams_chat") or ()),
            extra=dict(data.get("extra") or {}),
        )


def check_reviewer(policy: Policy, reviewer: Reviewer, requested_by: str | None) -> None:
    """Raise `NotAllowed` unless `reviewer` may decide under `policy`. Every identity the
    reviewer has (id, email, UPN) is compared, with the reviewers and with the requester."""
    identities = reviewer.identities()
    if policy.reviewers and not identities & {r.casefold() for r in policy.reviewers}:
        raise NotAllowed(
            f"reviewer {reviewer.id!r} is not among the reviewers of policy {policy.name!r}",
            reviewer=reviewer.id,
            policy=policy.name,
        )
    if not policy.allow_self_approval and requested_by and requested_by.casefold() in identities:
        raise NotAllowed(
            f"reviewer {reviewer.id!r} requested this action and policy {policy.name!r} forbids self-approval",
            reviewer=reviewer.id,
            policy=policy.name,
        )


def needs_email(policy: Policy, requested_by: str | None) -> bool:
    """Whether deciding needs the reviewer's email (or UPN), not only a channel's id: to
    match reviewers named by email, and to tell the requester apart from a reviewer
    (`requested_by` is usually an email; an AAD object id alone could never match it)."""
    return policy.names_reviewers_by_email or (bool(requested_by) and not policy.allow_self_approval)
