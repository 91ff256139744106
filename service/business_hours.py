"""Business-hours calendars: when a policy's timers count time. Pure (zoneinfo only).

A calendar is copied onto each approval with its policy, so editing it later never moves
the deadlines of a request already waiting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


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
