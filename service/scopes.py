"""Who is calling, and what it may do: credentials' scopes. Pure.

Every ops credential resolves to a `Principal`: the operator token, the webhook secret, or
an API key made with `countersign keys create`. Routes name the scope they need; a
decision also needs `decide` (a key bound to one reviewer, deciding as that reviewer) or
`decide:on-behalf` (the key names the reviewer and is recorded as the actor).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
    """A key whose scopes do not fit together (e.g. `decide` without a reviewer)."""


def check_key_shape(scopes: frozenset[Scope], reviewer: str | None) -> None:
    if Scope.DECIDE in scopes and not reviewer:
        raise ScopeRuleError("the `decide` scope needs --reviewer: a decide key decides as one reviewer")
    if reviewer and Scope.DECIDE not in scopes:
        raise ScopeRuleError("--reviewer binds a key to a reviewer for the `decide` scope; add --scope decide")
    if not scopes:
        raise ScopeRuleError("a key needs at least one scope")
