"""service/audit_throttle.py: one audit event per key and window, the rest counted. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.audit_throttle import AuditThrottle, Due, Subject, Summary

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=timezone.utc)
KEY = ("decision.refused", "approval-1", "key:mallory", "mallory@example.com", "approve", "not_allowed")


def burst(throttle: AuditThrottle, key: object, n: int, at: datetime) -> list[int | None]:
    answers = []
    for _ in range(n):
        answer = throttle.admit(key, at, object())
        if answer is None:
            throttle.left_out(key)  # as the decision's commit does
        answers.append(answer)
    return answers


def test_a_burst_of_a_hundred_is_audited_once_and_the_next_event_says_how_many_were_left_out() -> None:
    throttle = AuditThrottle()
    answers = burst(throttle, KEY, 100, T0)
    assert answers[0] == 0 and answers[1:] == [None] * 99  # 1 audited, 99 counted
    assert throttle.admit(KEY, T0 + timedelta(seconds=59), object()) is None  # still the same minute
    throttle.left_out(KEY)
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), object()) == 100  # audited, carrying the count
    assert throttle.admit(KEY, T0 + timedelta(minutes=1, seconds=1), object()) is None
    assert throttle.admit(KEY, T0 + timedelta(minutes=5), object()) == 0  # nothing left out since


def test_keys_are_independent() -> None:
    throttle = AuditThrottle()
    other = (*KEY[:-1], "already_decided")
    assert throttle.admit(KEY, T0, object()) == 0
    assert throttle.admit(other, T0, object()) == 0
    assert throttle.admit(("delegation.refused", *KEY[1:]), T0, object()) == 0
    assert throttle.admit(KEY, T0, object()) is None


def test_the_same_attempt_asked_again_gets_the_same_answer() -> None:
    # A write batch that fails runs each op again: its refusal must still be audited, once.
    throttle = AuditThrottle()
    burst(throttle, KEY, 3, T0)
    attempt = object()
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), attempt) == 2
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), attempt) == 2
    left_out = object()
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), left_out) is None
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), left_out) is None


def test_an_attempt_left_out_but_rolled_back_is_not_counted() -> None:
    throttle = AuditThrottle()
    assert throttle.admit(KEY, T0, object()) == 0
    assert throttle.admit(KEY, T0, object()) is None  # its transaction never commits: no left_out()
    assert throttle.admit(KEY, T0 + timedelta(minutes=1), object()) == 0


def test_memory_is_bounded_and_the_least_recently_seen_key_goes_first() -> None:
    throttle = AuditThrottle(max_keys=3)
    for name in ("a", "b", "c"):
        assert throttle.admit(name, T0, object()) == 0
    assert throttle.admit("a", T0, object()) is None  # seen again: now the most recent
    assert throttle.admit("d", T0, object()) == 0
    assert len(throttle) == 3
    assert throttle.admit("b", T0, object()) == 0  # dropped, so audited again
    assert throttle.admit("a", T0, object()) is None
    for i in range(10_000):
        throttle.admit(("flood", i), T0, object())
    assert len(throttle) == 3
    throttle.left_out("gone")  # a key dropped meanwhile: nothing to count it on


def test_the_default_is_a_minute_and_ten_thousand_keys() -> None:
    throttle = AuditThrottle()
    assert throttle.window == timedelta(minutes=1) and throttle.max_keys == 10_000
    with pytest.raises(ValueError):
        AuditThrottle(max_keys=0)


SUBJECT = Subject(kind="decision.refused", run_id="run-1", actor="key:mallory", data={"approval_id": "approval-1"})


def counted(throttle: AuditThrottle, key: object, n: int, at: datetime) -> None:
    """One audited attempt of `key` (with its subject), then `n` left out and committed."""
    assert throttle.admit(key, at, object(), SUBJECT) is not None
    for _ in range(n):
        assert throttle.admit(key, at, object(), SUBJECT) is None
        throttle.left_out(key)


def test_a_burst_that_stops_is_summarised_at_the_first_look_after_its_window() -> None:
    throttle = AuditThrottle()
    counted(throttle, KEY, 9, T0)
    assert throttle.due(T0 + timedelta(seconds=59)).summaries == ()  # its window is not over
    [summary] = throttle.due(T0 + timedelta(minutes=1)).summaries
    assert summary == Summary(SUBJECT, suppressed=9, since=T0, why="window")
    assert throttle.due(T0 + timedelta(minutes=5)).summaries == ()  # summarised once
    assert throttle.admit(KEY, T0 + timedelta(minutes=5), object(), SUBJECT) == 0  # not counted twice


def test_at_shutdown_every_count_is_summarised_window_over_or_not() -> None:
    throttle = AuditThrottle()
    counted(throttle, KEY, 3, T0)
    counted(throttle, "other", 0, T0)  # nothing left out: nothing to say
    [summary] = throttle.due(T0, everything=True).summaries
    assert summary.suppressed == 3 and summary.why == "shutdown"


def test_an_evicted_key_keeps_its_count_for_the_log_and_evictions_are_counted() -> None:
    throttle = AuditThrottle(max_keys=2)
    counted(throttle, "a", 4, T0)
    counted(throttle, "b", 0, T0)
    counted(throttle, "c", 0, T0)  # "a" goes, with its 4
    counted(throttle, "d", 0, T0)  # "b" goes, with nothing to say
    due = throttle.due(T0)
    assert due.evicted == 2 and [(s.suppressed, s.why) for s in due.summaries] == [(4, "evicted")]
    assert throttle.due(T0) == Due((), 0)
    throttle.requeue(due.summaries)  # its write failed: offered again
    assert throttle.due(T0).summaries == due.summaries


def test_keys_that_vary_without_end_stay_within_the_bound() -> None:
    throttle = AuditThrottle(max_keys=100)
    summarised = lost = evicted = 0
    for i in range(20_000):  # e.g. an on-behalf key naming another reviewer each time, twice each
        counted(throttle, ("decision.refused", f"reviewer-{i}"), 1, T0)
        assert len(throttle) <= 100 and throttle.pending_size() <= 3 * 100 + 1
        if i % 1000 == 999:  # summaries are written less often than keys come
            due = throttle.due(T0)
            summarised, lost, evicted = summarised + len(due.summaries), lost + due.lost, evicted + due.evicted
    assert evicted == 20_000 - 100 and summarised + lost == evicted  # each drop said or counted
    assert summarised == 20 * 100  # at most max_keys wait between two writes
