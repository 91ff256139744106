"""Runs, approvals, decisions and deliveries: their states and the rules that move them.

Pure: no I/O, no framework. The store persists these shapes; the API and the channels
(Teams, email) only ever change state through the transitions defined here.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .votes import Tally


class RunStatus(str, enum.Enum):
    DRAFTING = "drafting"  # the agent is working on a draft
    AWAITING_APPROVAL = "awaiting_approval"
    DELIVERING = "delivering"  # approved; the action is being carried out
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


TERMINAL_RUN_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.REJECTED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.EXPIRED}
)


class ApprovalStatus(str, enum.Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class DecisionKind(str, enum.Enum):
    APPROVE = "approve"
    REJECT = "reject"
    EDIT = "edit"  # edit and approve
    DELEGATE = "delegate"  # the reviewer handed their vote to someone else (not a vote)


class DeliveryStatus(str, enum.Enum):
    QUEUED = "queued"
    # Committed before the SMTP DATA command: on restart a delivery found here is sent
    # again with the same bytes and Message-ID (see README, "Exactly once").
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class AttemptOutcome(str, enum.Enum):
    """One SMTP attempt of a delivery (the delivery_attempts table)."""

    SENDING = "sending"  # `sending` committed, the content going out (or its process died)
    ACCEPTED = "accepted"  # the server's 250 to the content
    FAILED = "failed"  # an SMTP reply refused it, or the connection failed
    INTERRUPTED = "interrupted"  # a later attempt found it still `sending`: it may have been delivered


class Channel(str, enum.Enum):
    API = "api"
    TEAMS = "teams"
    EMAIL = "email"
    SYSTEM = "system"  # an automatic decision (on_expiry = "approve")


class ActionType(str, enum.Enum):
    SEND_EMAIL = "send_email"


class DomainError(Exception):
    """A request that the current state does not allow; carries an HTTP-friendly code."""

    code = "conflict"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class NotFound(LookupError):
    """No such run, approval or job."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(f"{what} {ident} not found")
        self.what = what
        self.ident = ident


class Contended(Exception):
    """The approval kept changing under a vote, delegation or expiry (each compare-and-set
    lost to another writer, `_CAS_ATTEMPTS` times in a row): nothing was recorded, and the
    same request can simply be sent again. Not a `DomainError` (a 409 says the request
    conflicts with the state and must change; this one needs no change, only a retry)."""

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_seconds = retry_after_seconds


class NotAllowed(DomainError):
    code = "not_allowed"


class AlreadyDecided(DomainError):
    code = "already_decided"


class InvalidTransition(DomainError):
    code = "invalid_transition"


class DraftChanged(DomainError):
    """An Approve or Edit for a text that an edit has since replaced (context: the current version)."""

    code = "draft_changed"


class AlreadyVoted(DomainError):
    """A reviewer voted on this text already (context: the first vote)."""

    code = "already_voted"


@dataclass(frozen=True, slots=True)
class EmailAction:
    """A drafted email: what a reviewer sees and, once approved, exactly what is sent."""

    to: tuple[str, ...]
    subject: str
    body: str
    cc: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    type: ActionType = ActionType.SEND_EMAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "to": list(self.to),
            "cc": list(self.cc),
            "subject": self.subject,
            "body": self.body,
            "in_reply_to": self.in_reply_to,
            "references": list(self.references),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmailAction:
        return cls(
            to=tuple(data["to"]),
            cc=tuple(data.get("cc") or ()),
            subject=data["subject"],
            body=data["body"],
            in_reply_to=data.get("in_reply_to"),
            references=tuple(data.get("references") or ()),
        )

    def with_edit(self, subject: str | None, body: str | None) -> EmailAction:
        return EmailAction(
            to=self.to,
            cc=self.cc,
            subject=self.subject if subject is None else subject,
            body=self.body if body is None else body,
            in_reply_to=self.in_reply_to,
            references=self.references,
        )

    def content_sha256(self) -> str:
        """Hash of what a reviewer approves: recipients, subject, body and threading.

        The delivery recomputes it from the MIME message it actually sends; the two must match.
        """
        canonical = json.dumps(
            {
                "to": list(self.to),
                "cc": list(self.cc),
                "subject": self.subject,
                "body": self.body,
                "in_reply_to": self.in_reply_to,
                "references": list(self.references),
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Reviewer:
    """Whoever takes a decision. `id` is the stable identity (an AAD object id, an email)."""

    id: str
    name: str | None = None
    email: str | None = None
    upn: str | None = None  # Teams: the user principal name, often but not always the email
    # Other ids a channel knows for the same person (their AAD object id, for one named by
    # email): so that one person is one voter whichever id they come with.
    aliases: frozenset[str] = frozenset()

    def identities(self) -> set[str]:
        return {v.casefold() for v in (self.id, self.email, self.upn, *self.aliases) if v}


ApprovalRefusal = Callable[["Approval"], "str | None"]
# The one person a channel knows by an identity (Teams: the member record of an AAD object
# id, email or UPN), read in the decision's transaction (its first argument, the store's
# `Tx`): their ids as a Reviewer (id = the object id); None for nobody, or more than one.
PersonLookup = Callable[[Any, str], Awaitable["Reviewer | None"]]
# Reads, in the decision's own transaction (its argument: the store's `Tx`), the email and
# UPN a channel already learnt for the reviewer; None when it knows neither.
KnownEmail = Callable[[Any], Awaitable["tuple[str | None, str | None] | None"]]


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    approval_id: str
    kind: DecisionKind
    reviewer: Reviewer
    channel: Channel
    reason: str | None = None
    subject: str | None = None  # edit only
    body: str | None = None  # edit only
    # The channel can look the reviewer's email up (Teams' member API) when the policy
    # names reviewers by email or the run has `requested_by`: `decide` then answers
    # EMAIL_NEEDED instead of deciding.
    can_resolve_email: bool = False
    # The channel tried and could not learn the reviewer's email or UPN: where they are
    # needed, `decide` refuses (it cannot rule out self-approval).
    email_unresolved: bool = False
    # Where the email is needed and the reviewer carries none: the channel's stored record
    # of it (Teams: the member an earlier lookup saved), read inside the decision, so that a
    # reviewer met before is decided in one op; EMAIL_NEEDED only when it knows nothing.
    known_email: KnownEmail | None = None
    # A channel's own reason to refuse an Approve or Edit of the stored approval (Teams: its
    # card cannot show all of it); the message, or None.
    approval_refusal: ApprovalRefusal | None = None
    # An API key deciding for `reviewer` (scope decide:on-behalf): recorded as the actor.
    on_behalf_by: str | None = None
    # The credential a reviewer decided with, when not the channel's own (a `decide` key).
    credential: str | None = None
    # The text version the reviewer saw (a card's action data, the API's `draft_version`):
    # an Approve or Edit of a text an edit has replaced is refused. None: not said (API).
    draft_version: int | None = None

    @property
    def actor(self) -> str:
        return self.on_behalf_by or self.reviewer.id


@dataclass(frozen=True, slots=True)
class DelegationRequest:
    """A reviewer hands their vote on an approval to `to` (an identity the policy allows)."""

    approval_id: str
    reviewer: Reviewer
    to: str
    channel: Channel
    on_behalf_by: str | None = None  # an API key (decide:on-behalf) acting for `reviewer`
    credential: str | None = None

    @property
    def actor(self) -> str:
        return self.on_behalf_by or self.reviewer.id


@dataclass(frozen=True, slots=True)
class DelegationOutcome:
    approval_id: str
    run_id: str
    delegated: bool
    slot: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # when refused: reason, message


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    run_id: str
    revision: int
    status: ApprovalStatus
    action: EmailAction
    policy: dict[str, Any]
    requested_by: str | None
    created_at: datetime
    version: int = 0
    decided_at: datetime | None = None
    decided_by: str | None = None
    approved_sha256: str | None = None
    tool_call_id: str | None = None  # set when the approval gates an agent's tool call
    sources: tuple[dict[str, Any], ...] = ()  # what the agent drew the draft from
    # Multi-vote policies: the text's version (an edit makes a new one), the current stage,
    # and who escalation or delegation added (service.votes.Added as stored).
    draft_version: int = 1
    stage: int = 0
    added_reviewers: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where the delivery of an approved action stands."""

    id: str
    status: DeliveryStatus
    at: datetime
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    id: str
    approval_id: str
    kind: DecisionKind
    reviewer: Reviewer
    channel: Channel
    created_at: datetime
    reason: str | None = None
    final_action: EmailAction | None = None  # what was approved (after edit), None on reject
    on_behalf_by: str | None = None  # the API key that decided for `reviewer`


# DecisionOutcome.detail["reason"] when a request with `can_resolve_email` needs the email.
EMAIL_NEEDED = "email_needed"


@dataclass(slots=True)
class DecisionOutcome:
    """What `decide` did: `decided` is False when the approval was already decided."""

    approval_id: str
    run_id: str
    decided: bool
    status: ApprovalStatus
    decision: Decision | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # When decided: the approval and its delivery as the decision left them, so that a
    # channel can show the new state without reading it back.
    approval: Approval | None = None
    delivery: DeliveryState | None = None
    tally: Tally | None = None  # where the votes stand after it (service.votes)
    # When it approved: the text first drafted (before any edit), so that a channel can show
    # what the edits changed (service.text_diff) without reading it back.
    drafted: EmailAction | None = None


def apply_decision(approval: Approval, request: DecisionRequest) -> tuple[ApprovalStatus, EmailAction | None]:
    """The approval status a decision leads to and the action that will be carried out.

    Raises `AlreadyDecided` when the approval is no longer pending and `InvalidTransition`
    for a decision that lacks what its kind needs.
    """
    if approval.status is not ApprovalStatus.PENDING:
        raise AlreadyDecided(
            f"approval {approval.id} is already {approval.status.value}",
            approval_id=approval.id,
            status=approval.status.value,
        )
    if request.kind is DecisionKind.APPROVE:
        return ApprovalStatus.APPROVED, approval.action
    if request.kind is DecisionKind.EDIT:
        if request.subject is None and request.body is None:
            raise InvalidTransition("an edit must change the subject or the body", field="subject")
        return ApprovalStatus.APPROVED, approval.action.with_edit(request.subject, request.body)
    if not (request.reason or "").strip():
        raise InvalidTransition("a rejection needs a reason", field="reason")
    return ApprovalStatus.REJECTED, None
