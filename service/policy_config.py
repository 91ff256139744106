"""The `[policies.NAME]`, `[calendars.NAME]` and `[[routes]]` tables of the settings file: a
strict schema, checked at start-up.

A typo must not quietly open a policy (`reviewer = [...]` once meant "no reviewers", so
anyone): unknown keys are refused, and `reviewers` is either a non-empty list of
identities or the explicit string "anyone". `describe_error` turns pydantic's errors into
one line each that names the file, the policy (or calendar, or route) and the key.

Checks that involve several keys of one table are model validators raising
`ConfigProblem`, which carries the key each problem is about, so that its line names the
key too; checks across tables (a policy naming a calendar, a route naming a policy) are
`check_references`, called by `Settings`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, StrictBool, field_validator, model_validator
from pydantic_core import ErrorDetails

from .business_hours import WEEKDAYS, Calendar
from .durations import parse_duration
from .policy import (
    ANYONE,
    DEFAULT_POLICY,
    EmailConfirm,
    EmailReview,
    ExpiryOutcome,
    Policy,
    PolicyMode,
    RejectRule,
    Stage,
    Timers,
)
from .policy_routes import Condition, ConditionsInvalid, Route, parse_conditions

_MAX_IDENTITY = 320  # the longest email address; also the API's limit
_COUNTED = (PolicyMode.ALL, PolicyMode.QUORUM)
Loc = tuple[str | int, ...]


# ---- problems that name their key ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Problem:
    loc: Loc  # below the place of the model that found it
    message: str  # what follows `key "..."`, e.g. "must be ..."
    missing: bool = False  # the key is absent: the line says `missing key "..."` and then `message`


class ConfigProblem(ValueError):
    """One or more problems a model validator found, each naming its key."""

    def __init__(self, *problems: Problem) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))
        self.problems = problems


def _raise_if(problems: list[Problem]) -> None:
    if problems:
        raise ConfigProblem(*problems)


# ---- single values ------------------------------------------------------------------------

def _identity(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"has {value!r}, which is not a string (give AAD object ids or email addresses)")
    if not value.strip():
        raise ValueError("has a blank entry")
    if value != value.strip() or any(not c.isprintable() for c in value) or len(value) > _MAX_IDENTITY:
        raise ValueError(f"has {value!r}: give an AAD object id or an email address, without surrounding spaces or "
                         f"control characters, at most {_MAX_IDENTITY} characters")
    return value


def _identities(value: Any, *, what: str = "AAD object ids or emails") -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"must be a list of {what}, not {type(value).__name__}")
    return tuple(_identity(v) for v in value)


def _named_reviewers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError(f"must be a list of identities (got {value!r})")
    identities = _identities(value, what="identities")
    if not identities:
        raise ValueError("is empty: name who may decide")
    _no_duplicates(identities)
    return identities


def _no_duplicates(identities: Iterable[str]) -> None:
    seen: dict[str, str] = {}
    for identity in identities:
        if identity.casefold() in seen:
            raise ValueError(f"names {identity!r} twice ({seen[identity.casefold()]!r}): one person, one vote")
        seen[identity.casefold()] = identity


def _duration(value: Any) -> timedelta:
    if not isinstance(value, str):
        raise ValueError(f'must be a duration such as "90s", "15m", "4h", "2d" or "PT4H", not {value!r}')
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"is invalid: {exc}") from None


def _choice(enum_type: Any, value: Any, allowed: Iterable[Any] | None = None) -> Any:
    members = list(allowed if allowed is not None else enum_type)
    names = ", ".join(m.value for m in members)
    try:
        member = enum_type(value) if isinstance(value, str) else None
    except ValueError:
        member = None
    if member is None or member not in members:
        raise ValueError(f"must be one of {names} (got {value!r})")
    return member


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {value!r}")
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def _show(d: timedelta) -> str:
    for unit, suffix in ((timedelta(days=1), "d"), (timedelta(hours=1), "h"), (timedelta(minutes=1), "m")):
        if not d % unit:
            return f"{d // unit}{suffix}"
    return f"{d.total_seconds():g}s"


# ---- [[policies.NAME.stages]] --------------------------------------------------------------

class StageConfig(BaseModel):
    """One stage of a sequential policy, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: tuple[str, ...]
    mode: PolicyMode = PolicyMode.FIRST
    required: int | None = None

    @field_validator("reviewers", mode="plain")
    @classmethod
    def _reviewers(cls, value: Any) -> tuple[str, ...]:
        return _named_reviewers(value)

    @field_validator("mode", mode="plain")
    @classmethod
    def _mode(cls, value: Any) -> PolicyMode:
        return _choice(PolicyMode, value, (PolicyMode.FIRST, *_COUNTED))

    @field_validator("required", mode="plain")
    @classmethod
    def _required(cls, value: Any) -> int:
        return _count(value)

    @model_validator(mode="after")
    def _coherent(self) -> StageConfig:
        problems: list[Problem] = []
        if self.mode is PolicyMode.QUORUM:
            if self.required is None:
                problems.append(Problem(("required",), "(how many of this stage's reviewers must approve)", True))
            elif self.required > len(self.reviewers):
                problems.append(Problem(("required",), (
                    f"is {self.required}, more than the stage's {len(self.reviewers)} reviewers")))
        elif self.required is not None:
            problems.append(Problem(("required",), f'is only for mode = "quorum" (this stage decides {self.mode.value})'))
        _raise_if(problems)
        return self

    def to_stage(self) -> Stage:
        return Stage(reviewers=self.reviewers, mode=self.mode, required=self.required)


# ---- [policies.NAME] ----------------------------------------------------------------------

class PolicyConfig(BaseModel):
    """One `[policies.NAME]` table. Every table is checked against the whole schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # None only with mode = "sequential", whose stages name the reviewers.
    reviewers: tuple[str, ...] | Literal["anyone"] | None = None
    mode: PolicyMode = PolicyMode.FIRST
    allow_self_approval: StrictBool = False  # TOML has booleans: "yes" is a typo, not True
    required: int | None = None  # quorum only
    reject: RejectRule = RejectRule.ANY
    stages: tuple[StageConfig, ...] = ()  # sequential only
    remind_after: timedelta | None = None
    max_reminders: int = 3
    escalate_after: timedelta | None = None
    escalate_to: tuple[str, ...] = ()
    expire_after: timedelta | None = None
    on_expiry: ExpiryOutcome = ExpiryOutcome.REJECT
    business_hours: str | None = None  # a [calendars.NAME]
    delegates: tuple[str, ...] = ()
    teams_channel: str | None = None
    teams_chat: tuple[str, ...] = ()
    # The email reviewer channel (service/email_review/).
    email_reviewers: tuple[str, ...] = ()
    email_fallback: StrictBool = False
    email_link_ttl: timedelta | None = None
    email_confirm: EmailConfirm = EmailConfirm.NONE

    @field_validator("reviewers", mode="plain")
    @classmethod
    def _reviewers(cls, value: Any) -> tuple[str, ...] | Literal["anyone"]:
        if value == ANYONE:
            return ANYONE
        if isinstance(value, str):
            raise ValueError(f'must be a list of identities, or the string "{ANYONE}" to let anyone decide '
                             f"(got {value!r})")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'must be a list of identities, or "{ANYONE}", not {type(value).__name__}')
        if not value:
            raise ValueError(f'is empty: name who may decide, or write reviewers = "{ANYONE}" to let anyone '
                             "the channel authenticates decide")
        if ANYONE in value:
            raise ValueError(f'must not list "{ANYONE}": to let anyone decide, write reviewers = "{ANYONE}" '
                             "(a string, not a list entry)")
        return tuple(_identity(v) for v in value)

    @field_validator("mode", mode="plain")
    @classmethod
    def _mode(cls, value: Any) -> PolicyMode:
        if value == "first_responder":  # the name of "first" until issue 12
            return PolicyMode.FIRST
        return _choice(PolicyMode, value)

    @field_validator("reject", mode="plain")
    @classmethod
    def _reject(cls, value: Any) -> RejectRule:
        return _choice(RejectRule, value)

    @field_validator("on_expiry", mode="plain")
    @classmethod
    def _on_expiry(cls, value: Any) -> ExpiryOutcome:
        return _choice(ExpiryOutcome, value)

    @field_validator("required", "max_reminders", mode="plain")
    @classmethod
    def _counts(cls, value: Any) -> int:
        return _count(value)

    @field_validator("email_confirm", mode="plain")
    @classmethod
    def _email_confirm(cls, value: Any) -> EmailConfirm:
        return _choice(EmailConfirm, value)

    @field_validator("email_reviewers", mode="plain")
    @classmethod
    def _email_reviewers(cls, value: Any) -> tuple[str, ...]:
        addresses = _identities(value, what="email addresses")
        _no_duplicates(addresses)
        for address in addresses:
            local, _, domain = address.partition("@")
            if not local or "." not in domain or any(c.isspace() for c in address):
                raise ValueError(f"{address!r} is not an email address; each email reviewer gets a personal link "
                                 "at that address")
        return addresses

    @field_validator("remind_after", "escalate_after", "expire_after", "email_link_ttl", mode="plain")
    @classmethod
    def _durations(cls, value: Any) -> timedelta:
        return _duration(value)

    @field_validator("escalate_to", mode="plain")
    @classmethod
    def _escalate_to(cls, value: Any) -> tuple[str, ...]:
        identities = _identities(value)
        if not identities:
            raise ValueError("is empty: name who is added when nobody decides in time")
        _no_duplicates(identities)
        return identities

    @field_validator("delegates", "teams_chat", mode="plain")
    @classmethod
    def _identity_lists(cls, value: Any) -> tuple[str, ...]:
        return _identities(value)

    @field_validator("business_hours", mode="plain")
    @classmethod
    def _calendar_name(cls, value: Any) -> str:
        return _text(value)

    @field_validator("teams_channel")
    @classmethod
    def _teams_channel(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; leave the key out for no channel")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PolicyConfig:
        problems = [*self._who_decides(), *self._timer_problems(), *self._email_problems()]
        _raise_if(problems)
        return self

    def _who_decides(self) -> list[Problem]:
        mode, problems = self.mode, []
        if mode is PolicyMode.SEQUENTIAL:
            if not self.stages:
                problems.append(Problem(("stages",), (
                    '(mode = "sequential" asks its stages in order: add a [[policies.NAME.stages]] table per '
                    "stage, each with its reviewers)"), True))
            if self.reviewers is not None:
                problems.append(Problem(("reviewers",), (
                    'must be left out with mode = "sequential": each stage names its reviewers (the policy\'s '
                    "reviewers are theirs, in order)")))
            seen: dict[str, int] = {}
            for index, stage in enumerate(self.stages):
                for reviewer in stage.reviewers:
                    earlier = seen.setdefault(reviewer.casefold(), index)
                    if earlier != index:
                        problems.append(Problem(("stages", index, "reviewers"), (
                            f"has {reviewer!r}, who is already in stage {earlier + 1}: one person would approve "
                            "twice")))
        else:
            if self.stages:
                problems.append(Problem(("stages",), (
                    f'is only for mode = "sequential" (this policy decides {mode.value})')))
            if self.reviewers is None:
                problems.append(Problem(("reviewers",), (
                    ': name who may decide (reviewers = ["rita@example.com"]), or write reviewers = '
                    f'"{ANYONE}" to let anyone the channel authenticates decide'), True))
            elif self.reviewers == ANYONE and mode in _COUNTED:
                problems.append(Problem(("reviewers",), (
                    f'is "{ANYONE}", which cannot be counted: mode = "{mode.value}" needs the reviewers named')))
            elif mode in _COUNTED:
                try:
                    _no_duplicates(self.reviewers)
                except ValueError as exc:
                    problems.append(Problem(("reviewers",), str(exc)))
        if mode is PolicyMode.QUORUM:
            if self.required is None:
                problems.append(Problem(("required",), '(how many reviewers must approve under mode = "quorum")',
                                        True))
            elif isinstance(self.reviewers, tuple) and self.required > len(self.reviewers):
                problems.append(Problem(("required",), (
                    f"is {self.required}, more than the policy's {len(self.reviewers)} reviewers")))
        elif self.required is not None:
            where = " (a stage's quorum goes in its [[stages]] table)" if mode is PolicyMode.SEQUENTIAL else ""
            problems.append(Problem(("required",), (
                f'is only for mode = "quorum" (this policy decides {mode.value}){where}')))
        if self.reject is not RejectRule.ANY and mode is PolicyMode.FIRST:
            problems.append(Problem(("reject",), (
                f'is "{self.reject.value}", but under mode = "first" the first vote decides: it counts only '
                'with mode = "all", "quorum" or "sequential"')))
        return problems

    def _email_problems(self) -> list[Problem]:
        problems = []
        if isinstance(self.reviewers, tuple) or self.stages:
            named = {r.casefold() for r in (*(self.reviewers if isinstance(self.reviewers, tuple) else ()),
                                            *(r for s in self.stages for r in s.reviewers))}
            for address in self.email_reviewers:
                if address.casefold() not in named:
                    problems.append(Problem(("email_reviewers",), (
                        f"has {address!r}, who is not among the reviewers: a review link can only be sent to "
                        "someone who may decide")))
        if self.email_fallback and not self.email_reviewers and not any(
                "@" in r for r in (self.reviewers if isinstance(self.reviewers, tuple) else ())):
            problems.append(Problem(("email_fallback",), (
                "has nobody to fall back to: it emails the policy's email reviewers (email_reviewers, or reviewers "
                "named by email) when the Teams post fails")))
        if ("email_link_ttl" in self.model_fields_set or "email_confirm" in self.model_fields_set) and not (
                self.email_reviewers or self.email_fallback):
            key = "email_link_ttl" if "email_link_ttl" in self.model_fields_set else "email_confirm"
            problems.append(Problem((key,), "has no effect without email_reviewers or email_fallback"))
        return problems

    def _timer_problems(self) -> list[Problem]:
        given, problems = self.model_fields_set, []
        if "max_reminders" in given and self.remind_after is None:
            problems.append(Problem(("max_reminders",), "has no effect without remind_after"))
        if self.escalate_after is not None and not self.escalate_to:
            problems.append(Problem(("escalate_to",), "(who is added, and notified, after escalate_after)", True))
        if self.escalate_to and self.escalate_after is None:
            problems.append(Problem(("escalate_after",), "(when escalate_to is added)", True))
        if "on_expiry" in given and self.expire_after is None:
            problems.append(Problem(("on_expiry",), "has no effect without expire_after"))
        if self.expire_after is not None:
            for key in ("remind_after", "escalate_after"):
                value = getattr(self, key)
                if value is not None and value >= self.expire_after:
                    problems.append(Problem((key,), (
                        f"({_show(value)}) is not shorter than expire_after ({_show(self.expire_after)}): it would "
                        "never happen")))
        if self.business_hours is not None and not (self.remind_after or self.escalate_after or self.expire_after):
            problems.append(Problem(("business_hours",), (
                "has no effect without remind_after, escalate_after or expire_after")))
        return problems

    def to_policy(self, name: str, calendars: Mapping[str, Calendar] | None = None) -> Policy:
        """The policy this table configures, with its calendar (by name from `calendars`)
        copied onto its timers. `ValueError` if the calendar is not in `calendars`
        (`Settings` checks that at start-up)."""
        calendar = None
        if self.business_hours is not None:
            calendar = (calendars or {}).get(self.business_hours)
            if calendar is None:
                raise ValueError(f"policy {name!r} counts its timers in calendar {self.business_hours!r}, "
                                 "which is not configured")
        stages = tuple(s.to_stage() for s in self.stages)
        anyone = self.reviewers == ANYONE
        if stages:
            reviewers: tuple[str, ...] = tuple(r for s in stages for r in s.reviewers)
        else:
            reviewers = () if anyone or self.reviewers is None else tuple(self.reviewers)
        return Policy(
            name=name, reviewers=reviewers, anyone=anyone, mode=self.mode, required=self.required,
            reject=self.reject, stages=stages, allow_self_approval=self.allow_self_approval,
            timers=Timers(remind_after=self.remind_after, max_reminders=self.max_reminders,
                          escalate_after=self.escalate_after, escalate_to=self.escalate_to,
                          expire_after=self.expire_after, on_expiry=self.on_expiry, calendar=calendar),
            delegates=self.delegates, teams_channel=self.teams_channel, teams_chat=self.teams_chat,
            email=EmailReview(reviewers=self.email_reviewers, fallback=self.email_fallback,
                              link_ttl=self.email_link_ttl, confirm=self.email_confirm),
        )


# ---- [calendars.NAME] ---------------------------------------------------------------------

_HOURS = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class CalendarConfig(BaseModel):
    """One `[calendars.NAME]` table: the working time a policy's timers count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str
    days: tuple[int, ...] = (0, 1, 2, 3, 4)  # 0 = Monday; the file says "mon" .. "sun"
    hours: tuple[time, time]
    holidays: tuple[date, ...] = ()

    @field_validator("timezone", mode="plain")
    @classmethod
    def _timezone(cls, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'must be an IANA time zone such as "Europe/Berlin", not {value!r}')
        if value == "localtime":  # the machine's zone: each replica could count differently
            raise ValueError('must name a zone ("Europe/Berlin"), not the machine\'s "localtime"')
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            close = difflib.get_close_matches(value, sorted(available_timezones()), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ' (an IANA name such as "Europe/Berlin")'
            raise ValueError(f"is {value!r}, which is not a known time zone{hint}") from None
        return value

    @field_validator("days", mode="plain")
    @classmethod
    def _days(cls, value: Any) -> tuple[int, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f'must be a non-empty list of days such as ["mon", "tue"], not {value!r}')
        unknown = [d for d in value if not isinstance(d, str) or d.lower() not in WEEKDAYS]
        if unknown:
            raise ValueError(f"has {', '.join(repr(d) for d in unknown)}: days are {', '.join(WEEKDAYS)}")
        return tuple(sorted({WEEKDAYS.index(d.lower()) for d in value}))

    @field_validator("hours", mode="plain")
    @classmethod
    def _hours(cls, value: Any) -> tuple[time, time]:
        match = _HOURS.fullmatch(value.strip()) if isinstance(value, str) else None
        try:
            if match is None:
                raise ValueError
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            start, end = time(h1, m1), time(h2, m2)
        except ValueError:
            raise ValueError(f'must be "HH:MM-HH:MM" in 24-hour time, such as "09:00-17:00" (got {value!r})') from None
        if start >= end:
            raise ValueError(f"is {value!r}: the opening must be before the closing, on the same day")
        return start, end

    @field_validator("holidays", mode="plain")
    @classmethod
    def _holidays(cls, value: Any) -> tuple[date, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f'must be a list of dates such as ["2026-12-24"], not {value!r}')
        days = []
        for item in value:
            if isinstance(item, date) and not hasattr(item, "hour"):  # a TOML date, not a date-time
                days.append(item)
                continue
            try:
                if not isinstance(item, str) or not _ISO_DATE.fullmatch(item):
                    raise ValueError
                days.append(date.fromisoformat(item))
            except ValueError:
                raise ValueError(f"has {item!r}, which is not a date (YYYY-MM-DD)") from None
        return tuple(sorted(set(days)))

    def to_calendar(self, name: str) -> Calendar:
        return Calendar(name=name, timezone=self.timezone, days=self.days, start=self.hours[0], end=self.hours[1],
                        holidays=self.holidays)


# ---- [[routes]] ---------------------------------------------------------------------------

class RouteConfig(BaseModel):
    """One `[[routes]]` table (service/policy_routes.py says what `when` may hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    when: tuple[Condition, ...]
    policy: str

    @field_validator("when", mode="plain")
    @classmethod
    def _when(cls, value: Any) -> tuple[Condition, ...]:
        try:
            return parse_conditions(value)
        except ConditionsInvalid as invalid:
            raise ConfigProblem(*(Problem(p.path, p.message) for p in invalid.problems)) from None

    @field_validator("policy", mode="plain")
    @classmethod
    def _policy(cls, value: Any) -> str:
        return _text(value)

    def to_route(self) -> Route:
        return Route(conditions=self.when, policy=self.policy)


def check_references(policies: Mapping[str, PolicyConfig], calendars: Mapping[str, Any],
                     routes: Iterable[RouteConfig]) -> None:
    """`ConfigProblem` (locations from the top of the settings) for a policy naming a
    calendar that is not configured, or a route naming a policy that is not."""
    problems: list[Problem] = []
    known_calendars = ", ".join(sorted(calendars)) or "none configured"
    for name, policy in policies.items():
        if policy.business_hours is not None and policy.business_hours not in calendars:
            problems.append(Problem(("policies", name, "business_hours"), (
                f'names calendar "{policy.business_hours}", which is not configured (known: {known_calendars}); '
                f"add a [calendars.{policy.business_hours}] table")))
    known_policies = ", ".join(sorted({*policies, DEFAULT_POLICY.name}))
    for index, route in enumerate(routes):
        if route.policy not in policies and route.policy != DEFAULT_POLICY.name:
            problems.append(Problem(("routes", index, "policy"), (
                f'names policy "{route.policy}", which is not configured (known: {known_policies})')))
    _raise_if(problems)


# ---- one line per error -------------------------------------------------------------------

_SECTIONS = ("policies", "calendars", "routes")
# Names people reach for that difflib would not find.
_SYNONYMS = {"calendar": "business_hours", "hours": "business_hours", "escalate": "escalate_to",
             "timeout": "expire_after", "expire": "expire_after", "remind": "remind_after"}
_MODELS: dict[str, type[BaseModel]] = {
    "policy": PolicyConfig, "stage": StageConfig, "calendar": CalendarConfig, "route": RouteConfig}


def _key(parts: Loc) -> str:
    # TOML's dotted keys: a part that holds a dot (a route's "metadata.amount") is quoted.
    return ".".join(f'"{p}"' if isinstance(p, str) and ("." in p or " " in p or not p) else str(p) for p in parts)


def _place(source: str, loc: Loc) -> tuple[str, str, Loc] | None:
    """(the line's start naming the file and the table, the table's kind, the key below it)."""
    section = loc[0]
    if len(loc) < 2:
        return None
    name, rest = loc[1], loc[2:]
    if section == "policies":
        if len(rest) >= 3 and rest[0] == "stages" and isinstance(rest[1], int):
            return f'{source}: policy "{name}", stage {rest[1] + 1}', "stage", rest[2:]
        return f'{source}: policy "{name}"', "policy", rest
    if section == "calendars":
        return f'{source}: calendar "{name}"', "calendar", rest
    if isinstance(name, int):
        return f"{source}: route {name + 1}", "route", rest
    return None


def _top_level_line(source: str, section: str) -> str:
    return {
        "policies": f"{source}: policies: must be tables, one per policy ([policies.NAME])",
        "calendars": f"{source}: calendars: must be tables, one per calendar ([calendars.NAME])",
        "routes": f"{source}: routes: must be a list of tables, one [[routes]] per route, in order",
    }[section]


def _line(source: str, loc: Loc, err_type: str, message: str, missing: bool = False) -> str | None:
    place = _place(source, loc)
    if place is None:
        return _top_level_line(source, str(loc[0]))
    where, kind, rest = place
    if not rest:  # the table itself is not a table
        table = {"policy": f"[policies.{loc[1]}]", "calendar": f"[calendars.{loc[1]}]", "route": "[[routes]]",
                 "stage": f"[[policies.{loc[1]}.stages]]"}[kind]
        return f"{where}: must be a table of settings ({table})"
    key = _key(rest)
    if err_type == "extra_forbidden":
        fields = list(_MODELS[kind].model_fields)
        synonym = _SYNONYMS.get(str(rest[0]))
        close = [synonym] if synonym in fields else difflib.get_close_matches(str(rest[0]), fields, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(fields)})"
        return f'{where}: unknown key "{key}"{hint}'
    if err_type == "missing":
        return f'{where}: missing key "{key}"'
    if missing:
        return f'{where}: missing key "{key}"{"" if message.startswith(":") else " "}{message}'
    return f'{where}: key "{key}" {message}' if err_type == "value_error" else f'{where}: key "{key}": {message}'


def describe_error(source: str | Callable[[str], str], err: ErrorDetails) -> list[str] | None:
    """One line per problem in an error at `policies.*`, `calendars.*` or `routes.*` (or a
    cross-table `ConfigProblem`), naming the file (`source`, or `source(section)`), the
    policy, calendar or route and the key; None for an error elsewhere in the settings."""
    loc: Loc = tuple(err["loc"])

    def src(section: str) -> str:
        return source(section) if callable(source) else source

    cause = (err.get("ctx") or {}).get("error")
    if err["type"] == "value_error" and isinstance(cause, ConfigProblem):
        lines = []
        for problem in cause.problems:
            full = (*loc, *problem.loc)
            if not full or full[0] not in _SECTIONS:
                return None
            line = _line(src(str(full[0])), full, "value_error", problem.message, problem.missing)
            if line is not None:
                lines.append(line)
        return lines or None
    if not loc or loc[0] not in _SECTIONS:
        return None
    message = str(cause) if err["type"] == "value_error" and isinstance(cause, ValueError) else err["msg"]
    line = _line(src(str(loc[0])), loc, err["type"], message)
    return [line] if line is not None else None
