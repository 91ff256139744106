"""The runs list's filters: read from the query string (each bad one named), turned into
conditions on `runs` for `Runs.list` (which pages them with the API's keyset cursor)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from ..domain import RunStatus
from ..store import tables as t

MAX_TEXT = 200


class FilterError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class RunFilter:
    status: RunStatus | None = None
    policy: str | None = None
    since: date | None = None  # created on or after this day (UTC)
    until: date | None = None  # created on or before this day (UTC)
    text: str | None = None  # in the subject, the customer's email or name, or requested_by

    def query(self) -> dict[str, str]:
        """The filter as query parameters (for the next page's link)."""
        values = {"status": self.status.value if self.status else None, "policy": self.policy,
                  "since": self.since.isoformat() if self.since else None,
                  "until": self.until.isoformat() if self.until else None, "q": self.text}
        return {k: v for k, v in values.items() if v}


def _day(query: Any, name: str) -> date | None:
    value = (query.get(name) or "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FilterError(name, "must be a date, YYYY-MM-DD") from None


def parse_filter(query: Any) -> RunFilter:
    status = None
    if (value := (query.get("status") or "").strip()):
        try:
            status = RunStatus(value)
        except ValueError:
            raise FilterError("status", f"must be one of {', '.join(s.value for s in RunStatus)}") from None
    policy = (query.get("policy") or "").strip() or None
    text = (query.get("q") or "").strip() or None
    for name, given in (("policy", policy), ("q", text)):
        if given is not None and (len(given) > MAX_TEXT or not given.isprintable()):
            raise FilterError(name, f"must be at most {MAX_TEXT} printable characters")
    since, until = _day(query, "since"), _day(query, "until")
    if since and until and since > until:
        raise FilterError("until", "must not be before since")
    return RunFilter(status, policy, since, until, text)


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def conditions(f: RunFilter) -> list[sa.ColumnElement[bool]]:
    """The filter on `runs` (status goes to `Runs.list` itself)."""
    out: list[sa.ColumnElement[bool]] = []
    if f.policy:
        out.append(t.runs.c.policy["name"].as_string() == f.policy)
    if f.since:
        out.append(t.runs.c.created_at >= datetime.combine(f.since, time.min, timezone.utc))
    if f.until:
        out.append(t.runs.c.created_at < datetime.combine(f.until + timedelta(days=1), time.min, timezone.utc))
    if f.text:
        pattern = _like(f.text)
        subject = (sa.select(t.approvals.c.id)
                   .where(t.approvals.c.run_id == t.runs.c.id,
                          t.approvals.c.action["subject"].as_string().ilike(pattern, escape="\\"))
                   .exists())
        out.append(sa.or_(
            t.runs.c.requested_by.ilike(pattern, escape="\\"),
            t.runs.c.customer["email"].as_string().ilike(pattern, escape="\\"),
            t.runs.c.customer["name"].as_string().ilike(pattern, escape="\\"),
            subject))
    return out
