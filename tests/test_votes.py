"""Counting votes under each policy mode (service/votes.py, pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.domain import ApprovalStatus, NotAllowed, Reviewer
from service.policy import Policy, PolicyMode, RejectRule, Stage
from service.votes import DELEGATION, ESCALATION, Added, Vote, check_vote, progress_lines, tally

T0 = datetime(2026, 12, 2, 10, 42, tzinfo=timezone.utc)
RITA, SAM, LEE = "rita@example.com", "sam@example.com", "lee@example.com"


def vote(slot: str, approve: bool = True, *, stage: int = 0, version: int = 1, minute: int = 0) -> Vote:
    return Vote(slot=slot, approve=approve, stage=stage, draft_version=version, reviewer_id=slot,
                reviewer_name=slot.split("@")[0].title(), at=T0 + timedelta(minutes=minute))


def policy(mode: PolicyMode, **kw: object) -> Policy:
    return Policy(name="p", reviewers=(RITA, SAM, LEE), mode=mode, **kw)  # type: ignore[arg-type]


def status(p: Policy, *votes: Vote, version: int = 1, added: tuple[Added, ...] = ()) -> ApprovalStatus:
    return tally(p, list(votes), draft_version=version, added=added).status


def test_first_mode_settles_on_the_first_vote() -> None:
    p = policy(PolicyMode.FIRST)
    assert status(p) is ApprovalStatus.PENDING
    assert status(p, vote(SAM, False), vote(RITA, True, minute=1)) is ApprovalStatus.REJECTED
    assert status(p, vote(RITA, True)) is ApprovalStatus.APPROVED


def test_quorum_counts_distinct_slots_and_fails_closed() -> None:
    p = policy(PolicyMode.QUORUM, required=2)
    assert status(p, vote(RITA)) is ApprovalStatus.PENDING
    assert status(p, vote(RITA), vote(RITA, minute=1)) is ApprovalStatus.PENDING  # one person counts once
    assert status(p, vote(RITA), vote(SAM, minute=1)) is ApprovalStatus.APPROVED
    assert status(p, vote(RITA), vote(LEE, False, minute=1)) is ApprovalStatus.REJECTED  # reject = any
    majority = policy(PolicyMode.QUORUM, required=2, reject=RejectRule.MAJORITY)
    assert status(majority, vote(RITA), vote(LEE, False, minute=1)) is ApprovalStatus.PENDING
    assert status(majority, vote(RITA), vote(LEE, False, minute=1), vote(SAM, minute=2)) is ApprovalStatus.APPROVED
    # Two of three rejecting: more than half; and 2 approvals are out of reach anyway.
    assert status(majority, vote(LEE, False), vote(SAM, False, minute=1)) is ApprovalStatus.REJECTED
    three = policy(PolicyMode.QUORUM, required=3, reject=RejectRule.MAJORITY)
    assert status(three, vote(RITA), vote(LEE, False, minute=1)) is ApprovalStatus.REJECTED  # 3 out of reach


def test_all_mode_needs_every_named_reviewer() -> None:
    p = policy(PolicyMode.ALL)
    assert status(p, vote(RITA), vote(SAM, minute=1)) is ApprovalStatus.PENDING
    assert status(p, vote(RITA), vote(SAM, minute=1), vote(LEE, minute=2)) is ApprovalStatus.APPROVED
    assert status(p, vote(RITA), vote(SAM, False, minute=1)) is ApprovalStatus.REJECTED
    lead = (Added("lead@example.com", "lead@example.com", ESCALATION, 0, T0),)
    # An escalated person's approval replaces nobody; their rejection rejects.
    assert status(p, vote(RITA), vote(SAM), vote("lead@example.com"), added=lead) is ApprovalStatus.PENDING
    assert status(p, vote("lead@example.com", False), added=lead) is ApprovalStatus.REJECTED


def test_votes_on_an_older_text_do_not_count() -> None:
    p = policy(PolicyMode.QUORUM, required=2)
    assert status(p, vote(RITA, version=1), vote(SAM, version=2), version=2) is ApprovalStatus.PENDING
    assert status(p, vote(RITA, version=2), vote(SAM, version=2), version=2) is ApprovalStatus.APPROVED


def test_sequential_stages_ask_one_after_the_other() -> None:
    p = Policy(name="p", reviewers=(RITA, SAM, LEE), mode=PolicyMode.SEQUENTIAL, stages=(
        Stage((RITA,)), Stage((SAM, LEE), PolicyMode.QUORUM, 2)))
    first = tally(p, [], draft_version=1)
    assert first.stage == 0 and first.asked == (RITA,)
    after_rita = tally(p, [vote(RITA)], draft_version=1)
    assert after_rita.status is ApprovalStatus.PENDING and after_rita.stage == 1 and after_rita.asked == (SAM, LEE)
    assert status(p, vote(RITA), vote(SAM, stage=1), vote(LEE, stage=1)) is ApprovalStatus.APPROVED
    assert status(p, vote(RITA, False)) is ApprovalStatus.REJECTED
    # Stage 2 reviewers may not vote early, and a stage 1 vote recorded under stage 1 only.
    with pytest.raises(NotAllowed, match="stage 2 of 2"):
        check_vote(p, first, (), Reviewer(id="aad-sam", email=SAM), None)


def test_check_vote_matches_any_identity_and_refuses_self_approval() -> None:
    p = policy(PolicyMode.QUORUM, required=2)
    current = tally(p, [], draft_version=1)
    assert check_vote(p, current, (), Reviewer(id="aad-rita", email="Rita@Example.com"), None) == RITA
    with pytest.raises(NotAllowed, match="not among the reviewers"):
        check_vote(p, current, (), Reviewer(id="aad-mallory", email="mallory@example.com"), None)
    with pytest.raises(NotAllowed, match="forbids self-approval"):
        check_vote(p, current, (), Reviewer(id="aad-rita", email=RITA), "RITA@example.com")


def test_a_delegated_slot_is_held_by_the_delegate_only() -> None:
    p = policy(PolicyMode.QUORUM, required=2, delegates=("dana@example.com",))
    handed = (Added("dana@example.com", RITA, DELEGATION, 0, T0, by="aad-rita"),)
    current = tally(p, [], draft_version=1, added=handed)
    assert "dana@example.com" in current.asked and RITA not in current.asked
    assert check_vote(p, current, handed, Reviewer(id="aad-dana", email="dana@example.com"), None) == RITA
    with pytest.raises(NotAllowed, match="handed their vote"):
        check_vote(p, current, handed, Reviewer(id="aad-rita", email=RITA), None)


def test_progress_reads_like_a_person_wrote_it() -> None:
    p = policy(PolicyMode.QUORUM, required=2)
    current = tally(p, [vote(RITA)], draft_version=1)
    lines = progress_lines(p, current, expire_at=T0 + timedelta(days=3))
    assert lines[0] == "1 of 2 approvals: Rita at 10:42 UTC"
    assert lines[1] == f"Still asked: {SAM}, {LEE}"
    assert lines[2] == "Due: expires 2026-12-05 10:42 UTC"
    assert progress_lines(Policy(name="d", anyone=True), tally(Policy(name="d", anyone=True), [],
                                                                draft_version=1)) == ()
