"""service/audit_throttle.py: one audit event per key and window, the rest counted. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from service.audit_throttle import AuditThrottle

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
