"""Who is calling the ops API, and whether it may do what it asks.

Credentials: an API key (`Authorization: Bearer csk_...`, scopes of its own), the operator
token (`Bearer $COUNTERSIGN_API_TOKEN`), or a request signed with the webhook secret
(`X-Countersign-Signature`, v2). Each resolves to a `Principal`; the route's scope is
checked before anything is stored (a refused signature is not even remembered).
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from aiohttp import web

from .. import metrics
from ..audit_summaries import AuditSummaries
from ..audit_throttle import AuditThrottle
from ..keys import KEY_PREFIX, REFUSED_KEY_EVENT, ApiKey, ApiKeys, ReplayGuard
from ..scopes import WEBHOOK_SCOPES, Principal, PrincipalKind, Scope
from ..signing import HEADER, SignatureError, verify_request
from ..store.db import utcnow
from .errors import ApiError

log = logging.getLogger(__name__)

OPERATOR_ACTOR = "operator-token"
WEBHOOK_ACTOR = "webhook"


@dataclass(frozen=True)
class AuthSettings:
    api_token: str | None
    operator_scopes: frozenset[Scope]
    webhook_secret: str | None
    tolerance_seconds: int
    accept_v1: bool


class ApiAuth:
    def __init__(self, settings: AuthSettings, keys: ApiKeys, replays: ReplayGuard) -> None:
        self.settings = settings
        self.keys = keys
        self.replays = replays
        self.refusals = AuditThrottle()
        self.refusal_summaries = AuditSummaries(keys.store, self.refusals)

    async def authenticate(self, request: web.Request, body: bytes,
                           scope: Scope | tuple[Scope, ...] | None) -> Principal:
        """The caller, holding `scope` (when given); else `ApiError` 401 or 403. Changes nothing
        unless the caller is allowed: only then is a signature remembered against replays."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            principal = await self._bearer(authorization)
            require(principal, scope)
            return principal
        signature = request.headers.get(HEADER)
        if signature is not None:
            return await self._signed(request, signature, body, scope)
        raise unauthorized(f"send `Authorization: Bearer <key>` or a signed `{HEADER}` header")

    async def _bearer(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("the Authorization header must be `Bearer <key>`")
        if token.startswith(KEY_PREFIX) and (key := await self.keys.find(token)) is not None:
            status = key.status(utcnow())
            if status != "active":
                await self._refused_use(key, status)
                raise unauthorized(f"the API key {key.name!r} is {status}")
            return key.principal()
        # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
        api_token = self.settings.api_token
        if api_token and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), api_token.encode()):
            return Principal(PrincipalKind.OPERATOR_TOKEN, OPERATOR_ACTOR, self.settings.operator_scopes)
        raise unauthorized("the bearer token is not valid")

    async def _refused_use(self, key: ApiKey, status: str) -> None:
        """Audit a revoked or expired key being presented, throttled as refused decisions
        are (service/audit_throttle.py): once per key and status per minute and process, so
        that someone replaying an old key cannot grow the audit log at will; the uses left
        out are counted and said by the next audited one or a summary."""
        throttled = (REFUSED_KEY_EVENT, key.id, status)
        event = ApiKeys.refused_use(key, status)
        carried = self.refusals.admit(throttled, self.keys.store.clock(), object(), event)
        if carried is None:
            self.refusals.left_out(throttled)  # nothing to commit: counted at once
            metrics.AUDIT_SUPPRESSED.labels(kind=REFUSED_KEY_EVENT).inc()
        else:
            await self.keys.record_refused_use(event, carried)
        await self.refusal_summaries.flush()

    async def _signed(self, request: web.Request, header: str, body: bytes,
                      scope: Scope | tuple[Scope, ...] | None) -> Principal:
        secret = self.settings.webhook_secret
        if not secret:
            raise unauthorized("signed webhooks are not enabled (no COUNTERSIGN_WEBHOOK_SECRET)")
        try:
            verified = verify_request(
                secret, header, method=request.method, path=request.rel_url.raw_path,
                query=request.rel_url.raw_query_string, body=body, now=time.time(),
                tolerance=self.settings.tolerance_seconds, accept_v1=self.settings.accept_v1)
        except SignatureError as exc:
            raise unauthorized(str(exc)) from None
        if verified.scheme == "v1":
            log.warning("a request was signed with the deprecated v1 scheme (body only); sign with v2: "
                        "COUNTERSIGN_WEBHOOK_ACCEPT_V1 will go away", extra={"path": request.path})
        principal = Principal(PrincipalKind.WEBHOOK, WEBHOOK_ACTOR, WEBHOOK_SCOPES)
        require(principal, scope)
        # Remembered for twice the window the timestamp allows, so that replicas whose clocks
        # differ (each purges by its own) still all know the signature while any accepts it.
        expires = datetime.fromtimestamp(verified.timestamp, timezone.utc) + timedelta(
            seconds=2 * self.settings.tolerance_seconds)
        key = request.headers.get("Idempotency-Key") if scope is Scope.RUNS_CREATE else None
        claim = await self.replays.claim(verified.digest, expires, key)
        # A retried trigger still gets its run, but only with the Idempotency-Key the signed
        # request first came with: the header is not signed, so any other key could name
        # (and learn about) another caller's run.
        if not claim.new and not (key and claim.first_idempotency_key == key):
            raise unauthorized(f"this {HEADER} was already used: sign every request anew")
        return principal


def require(principal: Principal, scope: Scope | tuple[Scope, ...] | None) -> None:
    """`scope`: the one needed, or a tuple of which any one will do (the first is named when none is held)."""
    if scope is None:
        return
    wanted = scope if isinstance(scope, tuple) else (scope,)
    if not any(principal.has(s) for s in wanted):
        raise missing_scope(principal, wanted[0])


def missing_scope(principal: Principal, scope: Scope) -> ApiError:
    return ApiError(403, "missing_scope", f"this credential ({principal.actor}) lacks the scope `{scope.value}`",
                    extensions={"scope": scope.value})


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="countersign"'})


