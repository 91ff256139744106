"""Who an operator is: the one interface the console asks, so that another way in (OIDC)
can be added beside the operator key without touching sessions or pages.

Today an operator logs in with what the ops API accepts as a bearer credential: an API key
(`countersign keys create`) or the legacy operator token (COUNTERSIGN_API_TOKEN). The
webhook secret is no login: it signs requests, it is not a credential to type in.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..api.auth import OPERATOR_ACTOR
from ..keys import KEY_PREFIX, ApiKeys
from ..scopes import Scope
from ..store.db import utcnow
from .tokens import KEY_BINDING, Signer

LOGIN_SCOPE = Scope.RUNS_READ  # what an operator needs to see anything at all


@dataclass(frozen=True, slots=True)
class Operator:
    actor: str  # as the audit log names it: "key:NAME", "operator-token"
    scopes: frozenset[Scope]
    key_id: str | None  # the api_keys row; None: the operator token
    binding: str  # what the session cookie is bound to (tokens.KEY_BINDING, or the token's fingerprint)
    expires_at: datetime | None = None  # a session never outlives its credential
    key_name: str | None = None
    key_prefix: str | None = None


@dataclass(frozen=True, slots=True)
class LoginRefused:
    reason: str  # "unknown_credential" | "revoked" | "expired" | "missing_scope"
    message: str  # shown on the login page
    actor: str  # who the audit event names: the key when it is known, else "anonymous"
    key_id: str | None = None


class OperatorLogin(Protocol):
    """The hook for another identity provider (an OIDC callback would produce an `Operator`)."""

    async def login(self, credential: str) -> Operator | LoginRefused: ...

    def binding_ok(self, key_id: str | None, binding: str) -> bool:
        """Whether a session's cookie binding still names a valid credential of this provider."""
        ...


class KeyLogin:
    """An operator key, checked exactly as `Authorization: Bearer` is (service/api/auth.py)."""

    def __init__(self, keys: ApiKeys, api_token: str | None, operator_scopes: frozenset[Scope],
                 signer: Signer) -> None:
        self.keys = keys
        self.api_token = api_token
        self.operator_scopes = operator_scopes
        self.signer = signer

    async def login(self, credential: str) -> Operator | LoginRefused:
        credential = credential.strip()
        operator: Operator | None = None
        if credential.startswith(KEY_PREFIX) and (key := await self.keys.find(credential)) is not None:
            status = key.status(utcnow())
            actor = key.principal().actor
            if status != "active":
                return LoginRefused(status, f"this key is {status}", actor, key.id)
            operator = Operator(actor, key.scopes, key.id, KEY_BINDING, key.expires_at, key.name, key.prefix)
        elif self.api_token and credential and hmac.compare_digest(
                credential.encode("utf-8", "surrogateescape"), self.api_token.encode()):
            operator = Operator(OPERATOR_ACTOR, self.operator_scopes, None, self.signer.token_binding(self.api_token))
        if operator is None:
            return LoginRefused("unknown_credential", "this is not a valid operator key", "anonymous")
        if LOGIN_SCOPE not in operator.scopes:
            return LoginRefused("missing_scope", f"this key lacks the scope {LOGIN_SCOPE.value}, which the console "
                                f"needs", operator.actor, operator.key_id)
        return operator

    def binding_ok(self, key_id: str | None, binding: str) -> bool:
        if key_id is not None:
            return binding == KEY_BINDING  # the key row itself is checked with the session
        return bool(self.api_token) and hmac.compare_digest(binding, self.signer.token_binding(self.api_token or ""))
