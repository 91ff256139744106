"""Business hours: "4h" is four working hours, "2d" two business days, in the calendar's
timezone, across nights, weekends, holidays and DST changes (service/business_hours.py).

Times are written in Berlin local time and checked in UTC, so a wrong offset shows."""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from service.business_hours import Calendar, deadline

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
SUPPORT = Calendar(name="support", timezone="Europe/Berlin", days=(0, 1, 2, 3, 4), start=time(9), end=time(17),
                   holidays=(date(2026, 12, 24), date(2026, 12, 25)))
# Every day, at night: the DST changes (Sunday 02:00/03:00) fall inside these hours.
NIGHTS = Calendar(name="nights", timezone="Europe/Berlin", days=tuple(range(7)), start=time(0), end=time(6))
H, D = timedelta(hours=1), timedelta(days=1)


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    """A Berlin wall-clock time, as the UTC instant the service would hold."""
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN, fold=fold).astimezone(UTC)


@pytest.mark.parametrize(("start", "duration", "due"), [
    # Tuesday 3 March 2026 (CET, UTC+1)
    (berlin(2026, 3, 3, 10), 4 * H, berlin(2026, 3, 3, 14)),
    (berlin(2026, 3, 3, 15), 4 * H, berlin(2026, 3, 4, 11)),  # overnight
    (berlin(2026, 3, 3, 6), 1 * H, berlin(2026, 3, 3, 10)),  # before opening: counts from 09:00
    (berlin(2026, 3, 3, 18), 1 * H, berlin(2026, 3, 4, 10)),  # after closing: from the next opening
    (berlin(2026, 3, 3, 16, 59), timedelta(minutes=2), berlin(2026, 3, 4, 9, 1)),
    (berlin(2026, 3, 3, 10, 30), timedelta(minutes=90), berlin(2026, 3, 3, 12)),
    # Friday 6 March -> Monday 9 March
    (berlin(2026, 3, 6, 15), 4 * H, berlin(2026, 3, 9, 11)),  # across the weekend
    (berlin(2026, 3, 7, 12), 4 * H, berlin(2026, 3, 9, 13)),  # made on Saturday
    (berlin(2026, 3, 8, 23, 59), 1 * H, berlin(2026, 3, 9, 10)),  # made on Sunday night
    (berlin(2026, 3, 6, 10), 1 * D, berlin(2026, 3, 9, 10)),  # a business day: Monday, same time
    (berlin(2026, 3, 9, 10), 2 * D, berlin(2026, 3, 11, 10)),
    (berlin(2026, 3, 2, 10), 5 * D, berlin(2026, 3, 9, 10)),  # a business week
    (berlin(2026, 3, 7, 12), 1 * D, berlin(2026, 3, 10, 9)),  # Saturday: Monday 09:00 is the start, +1
    (berlin(2026, 3, 6, 15), 1 * D + 4 * H, berlin(2026, 3, 10, 11)),  # P1DT4H: days first, then hours
    # Christmas 2026: Thursday 24 and Friday 25 are holidays, then the weekend
    (berlin(2026, 12, 23, 16), 2 * H, berlin(2026, 12, 28, 10)),
    (berlin(2026, 12, 23, 10), 1 * D, berlin(2026, 12, 28, 10)),
    (berlin(2026, 12, 24, 12), 1 * H, berlin(2026, 12, 28, 10)),  # made on a holiday
    (berlin(2026, 12, 22, 11), 3 * D, berlin(2026, 12, 29, 11)),  # Wednesday, Monday, Tuesday
], ids=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))
def test_working_time(start: datetime, duration: timedelta, due: datetime) -> None:
    assert SUPPORT.add(start, duration) == due
    assert SUPPORT.add(start, duration).tzinfo is UTC


def test_exact_boundaries() -> None:
    # Working hours are [09:00, 17:00): a deadline on the closing minute is that minute,
    # a request made at the closing minute counts from the next opening.
    assert SUPPORT.add(berlin(2026, 3, 3, 9), 8 * H) == berlin(2026, 3, 3, 17)
    assert SUPPORT.add(berlin(2026, 3, 3, 16), 1 * H) == berlin(2026, 3, 3, 17)
    assert SUPPORT.add(berlin(2026, 3, 3, 17), 1 * H) == berlin(2026, 3, 4, 10)
    assert SUPPORT.add(berlin(2026, 3, 3, 9), 9 * H) == berlin(2026, 3, 4, 10)
    assert SUPPORT.add(berlin(2026, 3, 3, 8, 59), 1 * H) == berlin(2026, 3, 3, 10)
    assert SUPPORT.add(berlin(2026, 3, 6, 17), 1 * D) == berlin(2026, 3, 10, 9)  # Friday's closing
    assert SUPPORT.next_working_instant(berlin(2026, 3, 3, 17)) == berlin(2026, 3, 4, 9)
    assert SUPPORT.next_working_instant(berlin(2026, 3, 3, 9)) == berlin(2026, 3, 3, 9)
    assert SUPPORT.add(berlin(2026, 3, 7, 12), timedelta(0)) == berlin(2026, 3, 7, 12)  # nothing to count


def test_dst_spring_forward_in_berlin() -> None:
    # Sunday 29 March 2026, 02:00 CET -> 03:00 CEST.
    # Friday 16:00 CET (15:00 UTC) + 2h: one hour on Friday, one on Monday 09:00 CEST (07:00 UTC).
    assert SUPPORT.add(berlin(2026, 3, 27, 16), 2 * H) == datetime(2026, 3, 30, 8, tzinfo=UTC)
    # A business day keeps the wall clock: Friday 10:00 CET is 09:00 UTC, Monday 10:00 CEST 08:00 UTC.
    assert SUPPORT.add(datetime(2026, 3, 27, 9, tzinfo=UTC), 1 * D) == datetime(2026, 3, 30, 8, tzinfo=UTC)
    # Working time is elapsed time: the night of the change has five hours between 00:00 and 06:00.
    sunday = berlin(2026, 3, 29, 0)
    assert sunday == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert NIGHTS.add(sunday, 5 * H) == berlin(2026, 3, 29, 6) == datetime(2026, 3, 29, 4, tzinfo=UTC)
    assert NIGHTS.add(sunday, 6 * H) == berlin(2026, 3, 30, 1)
    assert NIGHTS.add(berlin(2026, 3, 29, 1, 30), 1 * H) == berlin(2026, 3, 29, 3, 30)  # 02:00-03:00 never was
    # A business day keeps the wall clock: 24 hours before the change, 23 across it.
    assert NIGHTS.add(berlin(2026, 3, 28, 1), 1 * D) - berlin(2026, 3, 28, 1) == 24 * H
    assert NIGHTS.add(berlin(2026, 3, 28, 5), 1 * D) == berlin(2026, 3, 29, 5)
    assert NIGHTS.add(berlin(2026, 3, 28, 5), 1 * D) - berlin(2026, 3, 28, 5) == 23 * H


def test_dst_fall_back_in_berlin() -> None:
    # Sunday 25 October 2026, 03:00 CEST -> 02:00 CET.
    # Friday 16:00 CEST (14:00 UTC) + 2h: Monday 10:00 CET = 09:00 UTC.
    assert SUPPORT.add(berlin(2026, 10, 23, 16), 2 * H) == datetime(2026, 10, 26, 9, tzinfo=UTC)
    assert SUPPORT.add(datetime(2026, 10, 23, 8, tzinfo=UTC), 1 * D) == datetime(2026, 10, 26, 9, tzinfo=UTC)
    # That night has seven hours between 00:00 and 06:00, 02:00-03:00 twice.
    sunday = berlin(2026, 10, 25, 0)
    assert NIGHTS.add(sunday, 7 * H) == berlin(2026, 10, 25, 6) == datetime(2026, 10, 25, 5, tzinfo=UTC)
    assert NIGHTS.add(sunday, 3 * H) == berlin(2026, 10, 25, 2, fold=1)  # the second 02:00
    assert NIGHTS.add(berlin(2026, 10, 24, 5), 1 * D) - berlin(2026, 10, 24, 5) == 25 * H


def test_any_zone_in_utc_out_and_bad_input() -> None:
    start = datetime(2026, 3, 3, 10, tzinfo=BERLIN)
    due = SUPPORT.add(start, 4 * H)
    assert due.tzinfo is UTC and due == berlin(2026, 3, 3, 14)
    with pytest.raises(ValueError, match="aware"):
        SUPPORT.add(datetime(2026, 3, 3, 10), 4 * H)
    with pytest.raises(ValueError, match="negative"):
        SUPPORT.add(berlin(2026, 3, 3, 10), -H)
    with pytest.raises(ValueError, match="no working day"):
        Calendar(name="never", timezone="UTC", days=(), start=time(9), end=time(17)).add(berlin(2026, 3, 3), H)


def test_deadline_with_and_without_a_calendar() -> None:
    start = berlin(2026, 3, 6, 15)
    assert deadline(start, 4 * H, SUPPORT) == berlin(2026, 3, 9, 11)
    assert deadline(start, 4 * H, None) == berlin(2026, 3, 6, 19)
    assert deadline(start, 3 * D, None) == berlin(2026, 3, 9, 15)
    with pytest.raises(ValueError, match="aware"):
        deadline(datetime(2026, 3, 6, 15), H, None)


def test_a_calendar_survives_being_stored() -> None:
    assert Calendar.from_dict(SUPPORT.to_dict()) == SUPPORT
    assert SUPPORT.to_dict()["hours"] == "09:00-17:00"


# ---- properties over many starts (seeded, so a failure repeats) -------------------------

def _working(at: datetime, calendar: Calendar) -> bool:
    local = at.astimezone(ZoneInfo(calendar.timezone))
    return calendar.is_business_day(local.date()) and calendar.start <= local.time() < calendar.end


def _by_minutes(calendar: Calendar, start: datetime, minutes: int) -> datetime:
    """The oracle: walk UTC minute by minute, counting the ones inside working hours."""
    at = start
    while not _working(at, calendar):
        at += timedelta(minutes=1)
    while minutes:
        if _working(at, calendar):
            minutes -= 1
        at += timedelta(minutes=1)
    return at


def _starts(rng: random.Random, count: int) -> list[datetime]:
    # Across 2026, both DST changes and Christmas included, on whole minutes.
    first = datetime(2026, 1, 1, tzinfo=UTC)
    return [first + timedelta(minutes=rng.randrange(365 * 24 * 60)) for _ in range(count)]


@pytest.mark.parametrize("calendar", [SUPPORT, NIGHTS], ids=["support", "nights"])
def test_working_hours_agree_with_counting_minutes(calendar: Calendar) -> None:
    rng = random.Random(12)
    for start in _starts(rng, 60):
        minutes = rng.randrange(1, 12 * 60)
        assert calendar.add(start, timedelta(minutes=minutes)) == _by_minutes(calendar, start, minutes), \
            (start, minutes)


@pytest.mark.parametrize("calendar", [SUPPORT, NIGHTS], ids=["support", "nights"])
def test_hours_add_up_and_never_go_back(calendar: Calendar) -> None:
    rng = random.Random(1212)
    for start in _starts(rng, 300):
        x, y = (timedelta(minutes=rng.randrange(0, 12 * 60)) for _ in range(2))
        assert calendar.add(start, x + y) == calendar.add(calendar.add(start, x), y), (start, x, y)
        later = start + timedelta(minutes=rng.randrange(0, 4 * 24 * 60))
        assert calendar.add(start, x) <= calendar.add(later, x), (start, later, x)
        assert calendar.add(start, x) <= calendar.add(start, x + timedelta(minutes=1))


@pytest.mark.parametrize("calendar", [SUPPORT, NIGHTS], ids=["support", "nights"])
def test_business_days_keep_the_wall_clock_and_add_up(calendar: Calendar) -> None:
    rng = random.Random(2026)
    for start in _starts(rng, 300):
        m, n = rng.randrange(0, 6), rng.randrange(1, 6)
        due = calendar.add(start, n * D)
        opening = calendar.next_working_instant(start)
        assert _working(due, calendar), (start, n)
        # The same wall-clock time (but on a night the clocks skip, which it moves past).
        wall, due_wall = (t.astimezone(BERLIN).time().replace(fold=0) for t in (opening, due))
        assert due_wall == wall or due.astimezone(BERLIN).date() in (date(2026, 3, 29),), (start, n)
        assert calendar.add(start, (m + n) * D) == calendar.add(calendar.add(start, m * D), n * D), (start, m, n)
        assert calendar.add(start, n * D) <= calendar.add(start + timedelta(hours=rng.randrange(0, 72)), n * D)
