"""Routes: which configured policy a run gets, from what the run says about itself. Pure.

`[[routes]]` in the settings file, tried in order, first match wins; no match: the policy
the run names, else "default". A route's policy wins over the one the run names, so a
requester cannot pick a weaker policy than its route (service/api/runs.py).

A route holds conditions on a small set of fields of the run as it is created (all must
hold). A condition on a field the run does not have (no such metadata key, no action yet
on an agent run) does not hold, whatever its operator, `ne` included.

Fields (FIELDS):
- `metadata.<key>`: the run's metadata object, nested keys with dots (`metadata.order.total`);
  compared exactly (strings case-sensitively, numbers as numbers, booleans as booleans).
- `action.to` / `action.to_domain`: the pre-drafted email's To and Cc addresses / their
  domains; `eq` and `in` hold when any recipient matches, `ne` when none does. An agent
  run has no action when it is created: these match it only when the routes are tried
  again on its draft (service/agent/runner.py), before anyone is asked.
- `requested_by`, `customer.email`, `customer.domain` (the domain of `customer.email`).
The text fields are compared case-insensitively.

Operators: `gt`, `gte`, `lt`, `lte` (numbers, metadata only: a value that is not a number
simply does not match), `eq`, `ne`, `in` (a list); a bare value means `eq`. Several
operators in one table must all hold (`{ gte = 100, lt = 500 }`).
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

Scalar = str | int | float | bool
_MISSING: Final = object()

TEXT_FIELDS: Final = ("action.to_domain", "action.to", "requested_by", "customer.email", "customer.domain")
MULTI_VALUED: Final = frozenset({"action.to_domain", "action.to"})
METADATA_PREFIX: Final = "metadata."
FIELDS: Final = ("metadata.<key>", *TEXT_FIELDS)  # as documented, for error messages


class Op(str, enum.Enum):
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    EQ = "eq"
    NE = "ne"
    IN = "in"


_ORDERING: Final = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})


@dataclass(frozen=True, slots=True)
class Condition:
    field: str  # one of TEXT_FIELDS, or "metadata.<key>"
    op: Op
    value: Scalar | tuple[Scalar, ...]  # a tuple for `in`; text fields' strings casefolded


@dataclass(frozen=True, slots=True)
class Route:
    conditions: tuple[Condition, ...]
    policy: str


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a run says about itself when it is created: what routes look at."""

    metadata: Mapping[str, Any] = field(default_factory=dict)
    recipients: tuple[str, ...] | None = None  # To and Cc; None: no action yet (an agent run)
    requested_by: str | None = None
    customer_email: str | None = None


@dataclass(frozen=True, slots=True)
class RouteMatch:
    index: int  # 1 for the first [[routes]] table, as the settings-file errors count them
    policy: str


def match_route(routes: Sequence[Route], facts: RunFacts) -> RouteMatch | None:
    """The first route whose conditions all hold for `facts`, or None."""
    for index, route in enumerate(routes, start=1):
        if all(_holds(c, facts) for c in route.conditions):
            return RouteMatch(index, route.policy)
    return None


# ---- evaluation -----------------------------------------------------------------------

def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _values(name: str, facts: RunFacts) -> tuple[Any, ...] | object:
    """The field's values (several for the recipients), or _MISSING."""
    if name.startswith(METADATA_PREFIX):
        value: Any = facts.metadata
        for part in name[len(METADATA_PREFIX):].split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
        return (value,)
    if name in MULTI_VALUED:
        if facts.recipients is None:
            return _MISSING
        addresses = tuple(a.casefold() for a in facts.recipients)
        return addresses if name == "action.to" else tuple(_domain(a) for a in addresses)
    text = {"requested_by": facts.requested_by, "customer.email": facts.customer_email,
            "customer.domain": _domain(facts.customer_email) if facts.customer_email else None}[name]
    return _MISSING if text is None else (text.casefold(),)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(value: Any, operand: Scalar) -> bool:
    # True == 1 in Python; in a route, a boolean is only ever equal to a boolean.
    if isinstance(operand, bool) or isinstance(value, bool):
        return isinstance(operand, bool) and isinstance(value, bool) and value is operand
    if _is_number(operand):
        return _is_number(value) and value == operand
    return isinstance(value, str) and value == operand


def _holds(condition: Condition, facts: RunFacts) -> bool:
    values = _values(condition.field, facts)
    if not isinstance(values, tuple):
        return False
    op, operand = condition.op, condition.value
    if op is Op.EQ:
        assert not isinstance(operand, tuple)
        return any(_equal(v, operand) for v in values)
    if op is Op.NE:
        assert not isinstance(operand, tuple)
        return not any(_equal(v, operand) for v in values)
    if op is Op.IN:
        assert isinstance(operand, tuple)
        return any(_equal(v, o) for v in values for o in operand)
    value = values[0]
    if not _is_number(value) or not math.isfinite(value):
        return False
    assert _is_number(operand)
    if op is Op.GT:
        return bool(value > operand)
    if op is Op.GTE:
        return bool(value >= operand)
    if op is Op.LT:
        return bool(value < operand)
    return bool(value <= operand)


# ---- parsing (the settings file) --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConditionProblem:
    path: tuple[str, ...]  # below `when`: the field, then the operator
    message: str


class ConditionsInvalid(ValueError):
    def __init__(self, problems: list[ConditionProblem]) -> None:
        super().__init__("; ".join(f"{'.'.join(p.path)}: {p.message}" for p in problems))
        self.problems = problems


def parse_conditions(when: Any) -> tuple[Condition, ...]:
    """The conditions of a route's `when` table, or `ConditionsInvalid` naming each bad one."""
    if not isinstance(when, Mapping):
        raise ConditionsInvalid([ConditionProblem((), (
            f'must be a table of conditions, such as {{ "metadata.amount" = {{ gt = 500 }} }}, '
            f"not {type(when).__name__}"))])
    if not when:
        raise ConditionsInvalid([ConditionProblem((), (
            "has no condition: a run no route matches gets the policy it names, else the default"))])
    conditions: list[Condition] = []
    problems: list[ConditionProblem] = []
    for name, spec in when.items():
        try:
            conditions.extend(_parse_field(str(name), spec))
        except ConditionsInvalid as invalid:
            problems.extend(invalid.problems)
    if problems:
        raise ConditionsInvalid(problems)
    return tuple(conditions)


def _check_field(name: str) -> None:
    if name.startswith(METADATA_PREFIX):
        if all(part.strip() for part in name[len(METADATA_PREFIX):].split(".")):
            return
        raise ConditionsInvalid([ConditionProblem((name,), "names no metadata key (metadata.<key>, nested with dots)")])
    if name in TEXT_FIELDS:
        return
    if name in ("metadata", "action", "customer"):
        message = (f'is not a field: write the field as one quoted key, e.g. "{name}.'
                   f'{"amount" if name == "metadata" else "to_domain" if name == "action" else "domain"}" = ...')
    else:
        close = difflib.get_close_matches(name, [*TEXT_FIELDS, "metadata."], n=1)
        hint = f'did you mean "{close[0]}"?' if close and close[0] != "metadata." else f"known: {', '.join(FIELDS)}"
        message = f"is not a field routes look at ({hint})"
    raise ConditionsInvalid([ConditionProblem((name,), message)])


def _parse_field(name: str, spec: Any) -> list[Condition]:
    _check_field(name)
    if not isinstance(spec, Mapping):
        if isinstance(spec, (list, tuple)):
            raise ConditionsInvalid([ConditionProblem((name,), "is a list: write { in = [...] } to match any of them")])
        return [Condition(name, Op.EQ, _operand(name, Op.EQ, spec, (name,)))]
    if not spec:
        raise ConditionsInvalid([ConditionProblem((name,), "has no operator (gt, gte, lt, lte, eq, ne, in)")])
    conditions, problems = [], []
    for key, operand in spec.items():
        try:
            op = Op(key)
        except ValueError:
            close = difflib.get_close_matches(str(key), [o.value for o in Op], n=1)
            hint = f'did you mean "{close[0]}"?' if close else "known: gt, gte, lt, lte, eq, ne, in"
            problems.append(ConditionProblem((name, str(key)), f"is not an operator ({hint})"))
            continue
        try:
            conditions.append(Condition(name, op, _operand(name, op, operand, (name, op.value))))
        except ConditionsInvalid as invalid:
            problems.extend(invalid.problems)
    if problems:
        raise ConditionsInvalid(problems)
    return conditions


def _operand(name: str, op: Op, value: Any, path: tuple[str, ...]) -> Scalar | tuple[Scalar, ...]:
    def refuse(message: str) -> ConditionsInvalid:
        return ConditionsInvalid([ConditionProblem(path, message)])

    text = name in TEXT_FIELDS
    if op in _ORDERING:
        if text:
            raise refuse(f"compares numbers, and {name} is text: use eq, ne or in")
        if not _is_number(value) or not math.isfinite(value):
            raise refuse(f"must be a number, not {value!r}")
        return value
    if op is Op.IN:
        if not isinstance(value, (list, tuple)) or not value:
            raise refuse(f"must be a non-empty list of values, not {value!r}")
        return tuple(_scalar(name, v, refuse) for v in value)
    return _scalar(name, value, refuse)


def _scalar(name: str, value: Any, refuse: Any) -> Scalar:
    if name in TEXT_FIELDS:
        if not isinstance(value, str) or not value.strip():
            raise refuse(f"must be a non-empty string for {name}, not {value!r}")
        if name.endswith("domain") and "@" in value:
            raise refuse(f'must be a domain without "@" (got {value!r})')
        if name in ("action.to", "customer.email", "requested_by") and value != value.strip():
            raise refuse(f"must not have surrounding spaces (got {value!r})")
        return value.strip().casefold()
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if _is_number(value) and math.isfinite(value):
        return value
    raise refuse(f"must be a string, a number or a boolean, not {value!r}")
