"""Who is calling, and what it may do: credentials' scopes. Pure.

Every ops credential resolves to a `Principal`: the operator token, the webhook secret, or
an API key made with `countersign keys create`. Routes name the scope they need; a
decision also needs `decide` (a key bound to one reviewer, deciding as that reviewer) or
`decide:on-behalf` (the key names the reviewer and is recorded as the actor).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Scope(str, enum.Enum):
    RUNS_CREATE = "runs:create"
    RUNS_READ = "runs:read"
    RUNS_CANCEL = "runs:cancel"
    JOBS_RETRY = "jobs:retry"
    AUDIT_READ = "audit:read"
    KEYS_ADMIN = "keys:admin"
    DECIDE = "decide"
    DECIDE_ON_BEHALF = "decide:on-behalf"


DECISION_SCOPES = frozenset({Scope.DECIDE, Scope.DECIDE_ON_BEHALF})
# The operator token (COUNTERSIGN_API_TOKEN, or the generated embedded one) runs the
# service but is no reviewer: deciding on someone's behalf is a deliberate opt-in.
OPERATOR_SCOPES = frozenset(Scope) - DECISION_SCOPES
# A webhook secret is shared with an ops system that triggers runs and follows them.
WEBHOOK_SCOPES = frozenset({Scope.RUNS_CREATE, Scope.RUNS_READ})


class PrincipalKind(str, enum.Enum):
    OPERATOR_TOKEN = "operator_token"
    WEBHOOK = "webhook"
    API_KEY = "api_key"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `actor` is how the audit log and the run name it."""

    kind: PrincipalKind
    actor: str
    scopes: frozenset[Scope]
    reviewer: str | None = None  # a `decide` key's one reviewer
    expires_at: datetime | None = None  # a key's expiry: what it grants cannot outlive it

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes


def parse_scopes(values: list[str]) -> tuple[frozenset[Scope], list[str]]:
    """(known scopes, unknown names)."""
    known: set[Scope] = set()
    unknown: list[str] = []
    for value in values:
        try:
            known.add(Scope(value))
        except ValueError:
            unknown.append(value)
    return frozenset(known), unknown


def key_actor(name: str) -> str:
    return f"key:{name}"


class ScopeRuleError(ValueError):
    """A key that may not be made as asked (e.g. `decide` without a reviewer); `field` names the culprit."""

    def __init__(self, message: str, field: str = "scopes") -> None:
        super().__init__(message)
        self.field = field


def check_key_shape(scopes: frozenset[Scope], reviewer: str | None) -> None:
    if Scope.DECIDE in scopes and not reviewer:
        raise ScopeRuleError("the `decide` scope needs a reviewer: a decide key decides as one reviewer", "reviewer")
    if reviewer and Scope.DECIDE not in scopes:
        raise ScopeRuleError("a reviewer binds a key for the `decide` scope; add the scope decide", "reviewer")
    if not scopes:
        raise ScopeRuleError("a key needs at least one scope")


class NotGrantable(ScopeRuleError):
    """More than the maker of a key holds itself."""


def check_grant(grantor: Principal, scopes: frozenset[Scope], reviewer: str | None,
                expires_at: datetime | None) -> None:
    """A key made through the API gives no more than its maker holds: the same scopes or
    fewer, `decide` only for the maker's own reviewer, and a life no longer than its own."""
    beyond = sorted(s.value for s in scopes - grantor.scopes)
    if beyond:
        raise NotGrantable(f"a key can grant only scopes it holds itself; this one lacks {', '.join(beyond)}")
    if Scope.DECIDE in scopes and (reviewer or "").casefold() != (grantor.reviewer or "").casefold():
        raise NotGrantable(f"a decide key can only be made for the maker's own reviewer ({grantor.reviewer})",
                           "reviewer")
    if grantor.expires_at is not None and (expires_at is None or expires_at > grantor.expires_at):
        raise NotGrantable(f"this key expires at {grantor.expires_at.isoformat()}; a key it makes must expire "
                           "no later", "expires")
