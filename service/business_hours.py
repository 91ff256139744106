"""Business-hours calendars: when a policy's timers count time. Pure (zoneinfo only).

A calendar is copied onto each approval with its policy, so editing it later never moves
the deadlines of a request already waiting.

How a duration is counted (`Calendar.add`):
- Whole days of it are business days: "2d" ends at the same local wall-clock time on the
  second business day after the start. So a request made on Friday 15:00 with "1d" is due
  Monday 15:00, whatever the day's length (a DST change, a half day's hours) in between.
- The rest, under a day, is working time: "4h" is four hours of elapsed time inside
  working hours, counted across the night, weekends and holidays. Elapsed (UTC) time, so an
  hour of working time is an hour of the reviewer's life even on a day the clocks change.
- Both together ("P1DT4H", "28h"): the business days first, then the working hours. Note
  that "28h" is therefore one business day and four working hours, not 28 working hours:
  a timedelta no longer knows which unit it was written in, and a day is a business day.
- A start outside working hours counts from the next opening; one inside counts from the
  start itself. Working hours are [start, end): a request made at the closing minute
  counts from the next opening, and a deadline that falls exactly on closing time is that
  closing time (not the next opening).
- Local times that a DST change skips or repeats are read the way `zoneinfo` reads them
  with `fold=0` (and java.time does): a skipped time is shifted forward by the change
  (02:30 on the spring-forward night is 03:30 summer time, so hours "02:00-03:00" are
  empty that night), a repeated one is its first occurrence. Opening and closing times
  are normally far from the change; this only says what happens when they are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Calendar:
    """Working time: `days` (0 = Monday) from `start` to `end` local time in `timezone`,
    except `holidays` (local dates)."""

    name: str
    timezone: str
    days: tuple[int, ...]
    start: time
    end: time
    holidays: tuple[date, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "timezone": self.timezone, "days": [WEEKDAYS[d] for d in self.days],
            "hours": f"{self.start:%H:%M}-{self.end:%H:%M}", "holidays": [d.isoformat() for d in self.holidays],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calendar:
        start, _, end = str(data["hours"]).partition("-")
        return cls(
            name=data.get("name", ""), timezone=data["timezone"],
            days=tuple(WEEKDAYS.index(d) for d in data["days"]),
            start=time.fromisoformat(start), end=time.fromisoformat(end),
            holidays=tuple(date.fromisoformat(d) for d in data.get("holidays") or ()),
        )

    # ---- counting working time ------------------------------------------------------

    def is_business_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.holidays

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant `duration` of this calendar's working time after `start` (aware; any
        zone, UTC in practice), in UTC. Whole days are business days, the rest working
        hours (see the module's docstring). `ValueError` for a naive `start`, a negative
        duration, or a calendar without a single working day."""
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("start must be an aware datetime (UTC)")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        at = start.astimezone(timezone.utc)
        if not duration:
            return at
        days, rest = divmod(duration, _DAY)
        if days:
            at = self._add_business_days(self.next_working_instant(at), days)
        return self._add_working_time(at, rest) if rest else at

    def next_working_instant(self, at: datetime) -> datetime:
        """`at` (UTC) if it is inside working hours, else the next opening."""
        for opens, closes in self._windows_from(at):
            if at < closes:
                return max(at, opens)
        raise AssertionError("unreachable: _windows_from never ends")  # pragma: no cover

    def _add_working_time(self, at: datetime, rest: timedelta) -> datetime:
        for opens, closes in self._windows_from(at):
            if at >= closes:
                continue
            begin = max(at, opens)
            if rest <= closes - begin:
                return begin + rest
            rest -= closes - begin
        raise AssertionError("unreachable: _windows_from never ends")  # pragma: no cover

    def _add_business_days(self, at: datetime, days: int) -> datetime:
        zone = ZoneInfo(self.timezone)
        local = at.astimezone(zone)
        day = local.date()
        for _ in range(days):
            day = self._next_business_day(day)
        return datetime.combine(day, local.time(), zone).astimezone(timezone.utc)

    def _next_business_day(self, day: date) -> date:
        # At most six days off a week, plus the holidays in a row: more means none is left.
        for _ in range(len(self.holidays) + 8):
            day += _DAY
            if self.is_business_day(day):
                return day
        raise ValueError(f"calendar {self.name!r} has no working day after {day.isoformat()}")

    def _windows_from(self, at: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The working windows (UTC) of every business day from `at`'s local date on."""
        zone = ZoneInfo(self.timezone)
        day = at.astimezone(zone).date()
        if not self.is_business_day(day):
            day = self._next_business_day(day)
        while True:
            opens = datetime.combine(day, self.start, zone).astimezone(timezone.utc)
            closes = datetime.combine(day, self.end, zone).astimezone(timezone.utc)
            if opens < closes:  # empty only for hours that a DST change skips entirely
                yield opens, closes
            day = self._next_business_day(day)


def deadline(start: datetime, duration: timedelta, calendar: Calendar | None) -> datetime:
    """When a timer of `duration` started at `start` falls due: `duration` of working time
    with a calendar, of plain elapsed time without one. UTC."""
    if calendar is not None:
        return calendar.add(start, duration)
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError("start must be an aware datetime (UTC)")
    return (start + duration).astimezone(timezone.utc)
