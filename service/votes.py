"""Counting the votes of an approval under its policy. Pure: no I/O.

A *slot* is one entry of the policy's reviewers (casefolded), or one person escalation
added; a vote fills the slot its voter holds, so one person counts once whichever identity
(object id, email, UPN) and channel they use. A delegation hands a slot to someone else,
who then holds it instead. With `reviewers = "anyone"` (first mode only) a voter's slot is
their email, or their id.

Only votes on the current text count: an edit under a multi-vote mode makes a new
`draft_version`, and votes cast for an older one stay on the record without counting.
Sequential policies count stage by stage: a stage's votes count once every stage before it
approved the same text; a rejection in any stage rejects.

Per stage (or for the whole policy when it has no stages):
- first: the first vote settles it.
- quorum: `required` approvals approve; a rejection rejects under `reject = "any"`, more
  than half of the slots rejecting under `majority`; and once `required` approvals are out of
  reach, it is rejected (the outcome is certain).
- all: every reviewer named by the policy must approve, so one rejection rejects whatever
  `reject` says; people escalation added may vote (an approval of theirs replaces nobody,
  a rejection counts like anyone's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .domain import ApprovalStatus, NotAllowed, Reviewer
from .policy import Policy, PolicyMode, RejectRule, Stage


@dataclass(frozen=True, slots=True)
class Vote:
    slot: str
    approve: bool
    stage: int
    draft_version: int
    reviewer_id: str
    reviewer_name: str | None
    at: datetime
    reviewer_email: str | None = None  # with reviewer_id: who voted, to know them under another slot
    reviewer_upn: str | None = None

    def cast_by(self, identities: set[str]) -> bool:
        """Whether this vote was cast by someone with one of `identities` (casefolded)."""
        return bool({i.casefold() for i in (self.reviewer_id, self.reviewer_email, self.reviewer_upn) if i}
                    & identities)


def votes_of(rows: Sequence[Any]) -> list[Vote]:
    """Votes from decisions rows (any objects with their columns); a decision older than
    migration 0007 (no slot) was a first-responder vote on the first text."""
    return [Vote(slot=r.slot or (r.reviewer_email or r.reviewer_id).casefold(), approve=r.kind != "reject",
                 stage=r.stage or 0, draft_version=r.draft_version or 1, reviewer_id=r.reviewer_id,
                 reviewer_name=r.reviewer_name or r.reviewer_email, at=r.created_at, reviewer_email=r.reviewer_email,
                 reviewer_upn=r.reviewer_upn)
            for r in rows if r.kind != "delegate"]


@dataclass(frozen=True, slots=True)
class Added:
    """Someone escalation or delegation added to an approval (approvals.added_reviewers)."""

    identity: str
    slot: str  # escalation: a slot of its own; delegation: the slot handed over
    via: str  # "escalation" | "delegation"
    stage: int
    at: datetime
    by: str | None = None  # delegation: who handed the slot over
    # delegation: every id (casefolded) the one who handed it over was known by then; older
    # entries have only `by`.
    by_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "slot": self.slot, "via": self.via, "stage": self.stage,
                "at": self.at.isoformat(), **({"by": self.by} if self.by else {}),
                **({"by_ids": list(self.by_ids)} if self.by_ids else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Added:
        return cls(identity=data["identity"], slot=data["slot"], via=data["via"], stage=int(data.get("stage", 0)),
                   at=datetime.fromisoformat(data["at"]), by=data.get("by"), by_ids=tuple(data.get("by_ids") or ()))

    def handed_by(self, identities: set[str]) -> bool:
        """Whether this is a delegation by someone with one of `identities` (casefolded)."""
        return self.via == DELEGATION and bool({i.casefold() for i in (self.by, *self.by_ids) if i} & identities)


ESCALATION = "escalation"
DELEGATION = "delegation"


@dataclass(frozen=True, slots=True)
class Tally:
    status: ApprovalStatus  # pending, approved or rejected
    stage: int  # the stage being asked (the last one once settled)
    stages: int  # 1 without stages
    mode: PolicyMode  # of the current stage
    required: int  # approvals the current stage needs
    approvals: tuple[Vote, ...]  # counted, current stage, in order
    rejections: tuple[Vote, ...]
    asked: tuple[str, ...]  # who still holds an unfilled slot of the current stage
    settled_by: Vote | None = None

    def to_dict(self) -> dict[str, Any]:
        """As the API shows it (schemas.ProgressOut)."""
        def shown(v: Vote) -> dict[str, Any]:
            return {"reviewer": v.reviewer_id, "name": v.reviewer_name, "at": v.at.isoformat()}

        return {"outcome": self.status.value, "mode": self.mode.value, "stage": self.stage + 1, "stages": self.stages,
                "required": self.required, "approvals": [shown(v) for v in self.approvals],
                "rejections": [shown(v) for v in self.rejections], "asked": list(self.asked)}

    def summary(self) -> str:
        """One line for people: "1 of 2 approvals: Rita at 10:42 UTC; stage 1 of 2"."""
        done = ", ".join(f"{v.reviewer_name or v.reviewer_id} at {v.at:%H:%M} UTC" for v in self.approvals)
        noun = "approval" if self.required == 1 else "approvals"
        text = f"{len(self.approvals)} of {self.required} {noun}" + (f": {done}" if done else "")
        if self.rejections:
            text += "; rejected by " + ", ".join(v.reviewer_name or v.reviewer_id for v in self.rejections)
        if self.stages > 1:
            text += f"; stage {self.stage + 1} of {self.stages}"
        return text


def stages_of(policy: Policy) -> tuple[Stage, ...]:
    if policy.stages:
        return policy.stages
    return (Stage(reviewers=policy.reviewers, mode=policy.mode, required=policy.required),)


def _slots(policy: Policy, stage: int, added: Sequence[Added]) -> list[str]:
    """The slots of one stage, named ones first."""
    named = [r.casefold() for r in stages_of(policy)[stage].reviewers]
    extra = [a.slot for a in added if a.via == ESCALATION and a.stage == stage and a.slot not in named]
    return list(dict.fromkeys([*named, *extra]))


def holders(policy: Policy, stage: int, added: Sequence[Added]) -> dict[str, str]:
    """slot -> the identity (casefolded) who holds it now. A delegation holds for the stage
    it was made in: a slot of the same name in another stage (a stage 2 reviewer whom stage
    1 escalated to) stays its reviewer's."""
    handed = {a.slot: a.identity.casefold() for a in added if a.via == DELEGATION and a.stage == stage}
    return {slot: handed.get(slot, slot) for slot in _slots(policy, stage, added)}


def slot_of(policy: Policy, stage: int, added: Sequence[Added], reviewer: Reviewer) -> str | None:
    """The slot `reviewer` holds in `stage`, or None."""
    identities = reviewer.identities()
    if policy.anyone:
        return (reviewer.email or reviewer.upn or reviewer.id).casefold()
    for slot, holder in holders(policy, stage, added).items():
        if holder in identities:
            return slot
    return None


def stage_of_reviewer(policy: Policy, added: Sequence[Added], reviewer: Reviewer, current: int = 0) -> int | None:
    """The stage where `reviewer` holds a vote: the first from `current` on (escalation may
    ask one person in several stages: the one asked now is meant), else an earlier one."""
    count = len(stages_of(policy))
    for index in (*range(current, count), *range(min(current, count))):
        if slot_of(policy, index, added, reviewer) is not None:
            return index
    return None


def _stage_tally(policy: Policy, index: int, votes: Sequence[Vote], added: Sequence[Added]) -> Tally:
    stage = stages_of(policy)[index]
    counted = [v for v in votes if v.stage == index]
    seen: set[str] = set()
    unique = []
    for v in counted:  # one vote per slot (the store refuses a second; never count one twice)
        if v.slot not in seen:
            seen.add(v.slot)
            unique.append(v)
    approvals = tuple(v for v in unique if v.approve)
    rejections = tuple(v for v in unique if not v.approve)
    slots = _slots(policy, index, added)
    named = [r.casefold() for r in stage.reviewers]
    n = len(slots)
    status = ApprovalStatus.PENDING
    settled_by: Vote | None = None
    if stage.mode is PolicyMode.FIRST or policy.anyone:
        required = 1
        if unique:
            settled_by = unique[0]
            status = ApprovalStatus.APPROVED if settled_by.approve else ApprovalStatus.REJECTED
    elif stage.mode is PolicyMode.ALL:
        required = len(named)
        approved = {v.slot for v in approvals}
        if rejections:
            status, settled_by = ApprovalStatus.REJECTED, rejections[0]
        elif all(slot in approved for slot in named):
            status, settled_by = ApprovalStatus.APPROVED, approvals[-1]
    else:  # quorum
        required = stage.required or 1
        if len(approvals) >= required:
            status, settled_by = ApprovalStatus.APPROVED, approvals[required - 1]
        elif rejections and (policy.reject is RejectRule.ANY or 2 * len(rejections) > n
                             or len(approvals) + (n - len(unique)) < required):
            status, settled_by = ApprovalStatus.REJECTED, rejections[-1]
    holder = holders(policy, index, added)
    asked = () if status is not ApprovalStatus.PENDING or policy.anyone else tuple(
        holder[s] for s in slots if s not in seen)
    return Tally(status, index, len(stages_of(policy)), stage.mode, required, approvals, rejections, asked,
                 settled_by)


def tally(policy: Policy, votes: Sequence[Vote], *, draft_version: int, added: Sequence[Added] = ()) -> Tally:
    """Where an approval stands, from every vote cast on it (older drafts' are ignored)."""
    current = sorted((v for v in votes if v.draft_version == draft_version), key=lambda v: v.at)
    last = len(stages_of(policy)) - 1
    for index in range(last + 1):
        result = _stage_tally(policy, index, current, added)
        if result.status is not ApprovalStatus.APPROVED or index == last:
            return result
    raise AssertionError("unreachable")


def check_vote(policy: Policy, current: Tally, added: Sequence[Added], reviewer: Reviewer,
               requested_by: str | None) -> str:
    """The slot `reviewer` votes with now, or `NotAllowed` saying why they may not."""
    slot = slot_of(policy, current.stage, added, reviewer)
    # Who handed their vote over has none left in that stage, even one named twice (by
    # object id and by email) who still holds the other slot.
    handed = next((a for a in added if a.stage == current.stage and a.handed_by(reviewer.identities())), None)
    if slot is None or handed is not None:
        later = stage_of_reviewer(policy, added, reviewer, current.stage)
        if handed is None:
            handed = next((a for a in added if a.handed_by(reviewer.identities())), None)
        if handed is not None:
            message = f"reviewer {reviewer.id!r} handed their vote to {handed.identity}"
        elif later is not None and later > current.stage:
            message = (f"reviewer {reviewer.id!r} is asked in stage {later + 1} of {current.stages}, "
                       f"after stage {current.stage + 1} approves")
        elif later is not None:
            message = f"stage {later + 1}, where reviewer {reviewer.id!r} votes, is over"
        else:
            message = f"reviewer {reviewer.id!r} is not among the reviewers of policy {policy.name!r}"
        raise NotAllowed(message, reviewer=reviewer.id, policy=policy.name)
    if not policy.allow_self_approval and requested_by and requested_by.casefold() in reviewer.identities():
        raise NotAllowed(
            f"reviewer {reviewer.id!r} requested this action and policy {policy.name!r} forbids self-approval",
            reviewer=reviewer.id, policy=policy.name)
    return slot


def multi_vote(policy: Policy) -> bool:
    """Whether an approval can need more than one vote (an edit then makes a new draft version)."""
    return any(s.mode is not PolicyMode.FIRST for s in stages_of(policy)) or len(stages_of(policy)) > 1


def progress_lines(policy: Policy, current: Tally | None, *, remind_at: datetime | None = None,
                   escalate_at: datetime | None = None, expire_at: datetime | None = None) -> tuple[str, ...]:
    """What a card shows of the votes and timers (nothing for a plain first-responder policy)."""
    lines: list[str] = []
    if current is not None and multi_vote(policy):
        lines.append(current.summary())
        if current.asked and current.status is ApprovalStatus.PENDING:
            lines.append("Still asked: " + ", ".join(current.asked))
    due = [f"{label} {at:%Y-%m-%d %H:%M} UTC" for label, at in
           (("next reminder", remind_at), ("escalation", escalate_at), ("expires", expire_at)) if at is not None]
    if due and (current is None or current.status is ApprovalStatus.PENDING):
        lines.append("Due: " + "; ".join(due))
    return tuple(lines)
