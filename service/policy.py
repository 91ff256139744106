"""Who may decide on an approval, and how a run may narrow the policy it gets. Pure: checked
on the server against the stored policy.

A policy is stored with each approval when it is created, so changing the configured
policies later never changes the rules of a request already waiting.

A policy always says who may decide: a list of identities, or explicitly "anyone" (any
person the channel authenticates as a reviewer). The configuration refuses an empty or
missing list (service/policy_config.py); only approvals stored before that rule existed
carry `"reviewers": []`, which meant anyone then and is still read so (changing it would
strand requests already waiting).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Final

from .business_hours import Calendar
from .domain import NotAllowed, Reviewer

ANYONE: Final = "anyone"  # the value of `reviewers` that lets anyone decide, in the settings file and stored JSON


class PolicyMode(str, enum.Enum):
    """How the votes of a policy (or of one of its stages) settle an approval (service/votes.py)."""

    FIRST = "first"  # the first valid vote settles it
    ALL = "all"  # every reviewer asked must approve
    QUORUM = "quorum"  # `required` approvals
    SEQUENTIAL = "sequential"  # `stages`, one after the other, each with its own mode

    @classmethod
    def _missing_(cls, value: object) -> PolicyMode | None:
        # The name of `first` until issue 12, in settings files and in stored approvals.
        return cls.FIRST if value == "first_responder" else None


class RejectRule(str, enum.Enum):
    ANY = "any"  # one rejection rejects (fail closed)
    MAJORITY = "majority"  # rejected once more than half of the reviewers asked reject


class ExpiryOutcome(str, enum.Enum):
    REJECT = "reject"  # fail closed
    APPROVE = "approve"  # explicit, and audited as automatic


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a sequential policy: asked only once the stages before it approved."""

    reviewers: tuple[str, ...]
    mode: PolicyMode = PolicyMode.FIRST  # first, all or quorum
    required: int | None = None  # quorum only

    def to_dict(self) -> dict[str, Any]:
        return {"reviewers": list(self.reviewers), "mode": self.mode.value, "required": self.required}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        return cls(reviewers=tuple(data["reviewers"]), mode=PolicyMode(data.get("mode", "first")),
                   required=data.get("required"))


@dataclass(frozen=True, slots=True)
class Timers:
    """What happens when nobody decides. Durations count working time when `calendar` is set."""

    remind_after: timedelta | None = None  # then again every remind_after, at most max_reminders
    max_reminders: int = 3
    escalate_after: timedelta | None = None
    escalate_to: tuple[str, ...] = ()  # added as reviewers of the current stage, and notified
    expire_after: timedelta | None = None
    on_expiry: ExpiryOutcome = ExpiryOutcome.REJECT
    calendar: Calendar | None = None

    @property
    def any(self) -> bool:
        return bool(self.remind_after or self.escalate_after or self.expire_after)

    def to_dict(self) -> dict[str, Any]:
        def seconds(d: timedelta | None) -> float | None:
            return d.total_seconds() if d is not None else None

        return {
            "remind_after": seconds(self.remind_after), "max_reminders": self.max_reminders,
            "escalate_after": seconds(self.escalate_after), "escalate_to": list(self.escalate_to),
            "expire_after": seconds(self.expire_after), "on_expiry": self.on_expiry.value,
            "calendar": self.calendar.to_dict() if self.calendar else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timers:
        def duration(key: str) -> timedelta | None:
            value = data.get(key)
            return timedelta(seconds=value) if value is not None else None

        return cls(
            remind_after=duration("remind_after"), max_reminders=int(data.get("max_reminders", 3)),
            escalate_after=duration("escalate_after"), escalate_to=tuple(data.get("escalate_to") or ()),
            expire_after=duration("expire_after"), on_expiry=ExpiryOutcome(data.get("on_expiry", "reject")),
            calendar=Calendar.from_dict(data["calendar"]) if data.get("calendar") else None,
        )


class EmailConfirm(str, enum.Enum):
    NONE = "none"  # the link alone: whoever holds the email decides as its reviewer
    CODE = "code"  # and a one-time code sent to the reviewer's address when they decide


@dataclass(frozen=True, slots=True)
class EmailReview:
    """Reviewers asked by email (service/email_review/): each gets a personal link."""

    reviewers: tuple[str, ...] = ()  # email addresses
    fallback: bool = False  # the policy's email reviewers get the request when a Teams post fails for good
    link_ttl: timedelta | None = None  # a link expires then, or with the approval, whichever is first
    confirm: EmailConfirm = EmailConfirm.NONE

    @property
    def configured(self) -> bool:
        return bool(self.reviewers) or self.fallback

    def to_dict(self) -> dict[str, Any]:
        return {"reviewers": list(self.reviewers), "fallback": self.fallback, "confirm": self.confirm.value,
                **({"link_ttl": self.link_ttl.total_seconds()} if self.link_ttl is not None else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmailReview:
        ttl = data.get("link_ttl")
        return cls(reviewers=tuple(data.get("reviewers") or ()), fallback=bool(data.get("fallback", False)),
                   link_ttl=timedelta(seconds=ttl) if ttl is not None else None,
                   confirm=EmailConfirm(data.get("confirm", EmailConfirm.NONE.value)))


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules of one approval.

    Exactly one of `anyone` (True: anyone the channel authenticates may decide) and
    `reviewers` (the identities allowed to decide, AAD object ids or emails, compared
    case-insensitively) says who may decide; constructing a policy with both or neither
    is an error, so no code path can arrive at "nobody named, so everybody" by accident.
    """

    name: str
    reviewers: tuple[str, ...] = ()  # sequential: every stage's reviewers
    anyone: bool = False
    mode: PolicyMode = PolicyMode.FIRST
    required: int | None = None  # quorum only
    reject: RejectRule = RejectRule.ANY
    stages: tuple[Stage, ...] = ()  # sequential only
    allow_self_approval: bool = False
    timers: Timers = field(default_factory=Timers)
    # Who may be handed a vote (besides `escalate_to`); with `anyone`, anyone.
    delegates: tuple[str, ...] = ()
    # Where Teams shows the approval: a channel (a new thread each) and/or reviewers in
    # personal chat (AAD object ids or emails of people the bot knows).
    teams_channel: str | None = None
    teams_chat: tuple[str, ...] = ()
    email: EmailReview = field(default_factory=EmailReview)
    # True when a run narrowed the configured policy `name` with an inline policy.
    inline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.anyone and self.reviewers:
            raise ValueError(f"policy {self.name!r}: reviewers are named, so it cannot also let anyone decide")
        if not self.anyone and not self.reviewers:
            raise ValueError(f"policy {self.name!r} names no reviewers; say anyone=True to let anyone decide")

    def may_be_decided_by(self, identities: set[str]) -> bool:
        """Whether one of a person's identities (casefolded) is among the reviewers."""
        return self.anyone or bool(identities & {r.casefold() for r in self.reviewers})

    def to_dict(self) -> dict[str, Any]:
        # Keys added after the first stored policies are written only when they differ
        # from what a policy without them meant, so older readers and tests see the same.
        return {
            "name": self.name,
            "mode": self.mode.value,
            "reviewers": ANYONE if self.anyone else list(self.reviewers),
            "allow_self_approval": self.allow_self_approval,
            "teams_channel": self.teams_channel,
            "teams_chat": list(self.teams_chat),
            **({"email": self.email.to_dict()} if self.email.configured else {}),
            **({"required": self.required} if self.required is not None else {}),
            **({"reject": self.reject.value} if self.reject is not RejectRule.ANY else {}),
            **({"stages": [s.to_dict() for s in self.stages]} if self.stages else {}),
            **({"timers": self.timers.to_dict()} if self.timers != Timers() else {}),
            **({"delegates": list(self.delegates)} if self.delegates else {}),
            **({"inline": True} if self.inline else {}),
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """A stored policy. `"reviewers": []` (or missing) is an approval stored before
        policies had to say "anyone": it meant anyone then, and still does."""
        reviewers = data.get("reviewers")
        anyone = reviewers == ANYONE or not reviewers
        return cls(
            name=data.get("name", "default"),
            mode=PolicyMode(data.get("mode", PolicyMode.FIRST.value)),
            reviewers=() if anyone else tuple(reviewers or ()),
            anyone=anyone,
            required=data.get("required"),
            reject=RejectRule(data.get("reject", RejectRule.ANY.value)),
            stages=tuple(Stage.from_dict(s) for s in data.get("stages") or ()),
            allow_self_approval=bool(data.get("allow_self_approval", False)),
            timers=Timers.from_dict(data["timers"]) if data.get("timers") else Timers(),
            delegates=tuple(data.get("delegates") or ()),
            teams_channel=data.get("teams_channel") or None,
            teams_chat=tuple(data.get("teams_chat") or ()),
            email=EmailReview.from_dict(data["email"]) if data.get("email") else EmailReview(),
            inline=bool(data.get("inline", False)),
            extra=dict(data.get("extra") or {}),
        )


# What a run gets when it names no policy and none called "default" is configured.
DEFAULT_POLICY = Policy(name="default", anyone=True)


def check_reviewer(policy: Policy, reviewer: Reviewer, requested_by: str | None) -> None:
    """Raise `NotAllowed` unless `reviewer` may decide under `policy`. Every identity the
    reviewer has (id, email, UPN) is compared, with the reviewers and with the requester."""
    identities = reviewer.identities()
    if not policy.may_be_decided_by(identities):
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


# ---- narrowing: what a run may ask for on top of the policy it gets ---------------------


@dataclass(frozen=True, slots=True)
class Narrowing:
    """An inline policy: changes a run asks for on top of its configured (base) policy.
    None / empty: keep the base's value. Further fields (more approvals, shorter timers)
    join here, each with its rule in `narrow`."""

    reviewers: tuple[str, ...] | None = None
    allow_self_approval: bool | None = None
    mode: PolicyMode | None = None
    teams_channel: str | None = None
    teams_chat: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Violation:
    field: str  # the inline policy's field, e.g. "reviewers"
    message: str


class NarrowingRefused(Exception):
    """An inline policy asked for more than its base policy allows."""

    def __init__(self, base: Policy, violations: list[Violation]) -> None:
        super().__init__(f"the inline policy does not narrow policy {base.name!r}: "
                         + "; ".join(f"{v.field}: {v.message}" for v in violations))
        self.base = base
        self.violations = violations


def narrow(base: Policy, ask: Narrowing) -> Policy:
    """The policy `base` narrowed by `ask`, or `NarrowingRefused` naming every field that
    would widen it: an inline policy may only make fewer people able to decide, never
    grant self-approval, and may add where cards are shown only when the resulting policy
    names its reviewers (with "anyone", where a card appears would decide who decides)."""
    violations: list[Violation] = []
    reviewers, anyone = base.reviewers, base.anyone
    if ask.reviewers is not None and (base.mode is not PolicyMode.FIRST or base.stages):
        violations.append(Violation("reviewers", (
            f"policy {base.name!r} counts the votes of its reviewers ({base.mode.value}); an inline policy cannot "
            "change who they are")))
    elif ask.reviewers is not None:
        if not base.anyone:
            allowed = {r.casefold() for r in base.reviewers}
            outside = [r for r in ask.reviewers if r.casefold() not in allowed]
            if outside:
                violations.append(Violation("reviewers", (
                    f"{', '.join(repr(r) for r in outside)} {'is' if len(outside) == 1 else 'are'} not among the "
                    f"reviewers of policy {base.name!r}; an inline policy may only name some of them")))
        reviewers, anyone = tuple(dict.fromkeys(ask.reviewers)), False
    if ask.allow_self_approval and not base.allow_self_approval:
        violations.append(Violation("allow_self_approval", (
            f"policy {base.name!r} forbids self-approval, and an inline policy cannot grant it")))
    if ask.mode is not None and ask.mode is not base.mode:
        violations.append(Violation("mode", f"policy {base.name!r} decides {base.mode.value}; an inline policy "
                                            "cannot change that"))
    adds_channel = ask.teams_channel is not None and ask.teams_channel != base.teams_channel
    adds_chat = any(c not in base.teams_chat for c in ask.teams_chat)
    if (adds_channel or adds_chat) and anyone:
        violations.extend(Violation(f, (
            f"policy {base.name!r} lets anyone decide, so where its cards appear decides who decides: an inline "
            "policy may add Teams destinations only together with the reviewers who may decide"))
            for f, adds in (("teams_channel", adds_channel), ("teams_chat", adds_chat)) if adds)
    elif adds_channel and base.teams_channel is not None:
        violations.append(Violation("teams_channel", (
            f"policy {base.name!r} posts to its own channel; an inline policy may add personal chats "
            "but not move the card to another channel")))
    if violations:
        raise NarrowingRefused(base, violations)
    return replace(
        base, reviewers=reviewers, anyone=anyone,
        allow_self_approval=base.allow_self_approval if ask.allow_self_approval is None else ask.allow_self_approval,
        teams_channel=ask.teams_channel or base.teams_channel,
        teams_chat=tuple(dict.fromkeys((*base.teams_chat, *ask.teams_chat))),
        # Only those still allowed to decide get a review link.
        email=replace(base.email, reviewers=tuple(
            r for r in base.email.reviewers if anyone or r.casefold() in {x.casefold() for x in reviewers})),
        inline=True,
    )


def requester_unmatched(policy: Policy, requested_by: str | None, reviewer: Reviewer) -> bool:
    """Whether self-approval cannot be ruled out: the run was requested by an email address
    and the reviewer (an AAD object id alone, say a key bound to one) carries no email or
    UPN to compare it with. Then nothing may be decided or handed over in their name."""
    return (not policy.allow_self_approval and bool(requested_by) and "@" in (requested_by or "")
            and not (reviewer.email or reviewer.upn) and "@" not in reviewer.id)


def needs_email(policy: Policy, requested_by: str | None, added: Iterable[str] = ()) -> bool:
    """Whether deciding needs the reviewer's email (or UPN), not only a channel's id: to
    match reviewers named by email, to know one person under both their ids (so a vote by
    object id and one by email are one vote), and to tell the requester apart from a
    reviewer (`requested_by` is usually an email; an AAD object id alone never matches it).
    Named by email means anywhere a vote may come from: the reviewers, `escalate_to`,
    `delegates` and the people `added` since (escalations, delegations)."""
    named = (*policy.reviewers, *policy.timers.escalate_to, *policy.delegates, *added)
    return any("@" in r for r in named) or (bool(requested_by) and not policy.allow_self_approval)
