"""Console sessions in the `console_sessions` table (store ops).

The cookie holds a random id (signed, tokens.py); the table holds its SHA-256, the
credential's actor and scopes at login, and the times. Every request reads the session
together with its key: a revoked or expired key, an idle or expired session, or a logout
ends it at once on every replica (there is no cache). `last_seen_at` is written at most
once a minute per session, not on every page.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..audit_summaries import AuditSummaries
from ..audit_throttle import AuditThrottle, Subject
from ..metrics import AUDIT_SUPPRESSED
from ..scopes import Scope, parse_scopes
from ..store import tables as t
from ..store.db import Store, Tx
from .identity import LoginRefused, Operator, OperatorLogin
from .tokens import Signer, new_secret_id, sha256_hex

LIFETIME = timedelta(hours=8)  # a session ends this long after login, whatever happens
IDLE_TIMEOUT = timedelta(hours=1)  # ... or after this long without a request
TOUCH_EVERY = timedelta(minutes=1)
VIA = {"via": "console"}


class Ended(str, enum.Enum):
    LOGOUT = "logout"
    IDLE = "idle"
    EXPIRED = "expired"
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"


@dataclass(frozen=True, slots=True)
class Session:
    id: str  # the raw id, from the cookie; never stored
    actor: str
    scopes: frozenset[Scope]
    key_id: str | None
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes


_FIND = (sa.select(t.console_sessions, t.api_keys.c.revoked_at.label("key_revoked_at"),
                   t.api_keys.c.expires_at.label("key_expires_at"))
         .select_from(t.console_sessions.outerjoin(t.api_keys, t.api_keys.c.id == t.console_sessions.c.key_id))
         .where(t.console_sessions.c.id_sha256 == sa.bindparam("digest")))


class Sessions:
    def __init__(self, store: Store, signer: Signer, identity: OperatorLogin) -> None:
        self.store = store
        self.signer = signer
        self.identity = identity
        # Failed logins are audited once a minute per key (or once for all unknown ones):
        # anyone can post the login form, and must not be able to grow the audit log at will.
        self.failures = AuditThrottle()
        self.failure_summaries = AuditSummaries(store, self.failures)

    async def open(self, operator: Operator, remote: str | None) -> tuple[Session, str]:
        """A new session for `operator` and its signed cookie value; audited as console.login."""
        session_id = new_secret_id()

        async def op(tx: Tx) -> Session:
            expires = tx.now + LIFETIME
            if operator.expires_at is not None:
                expires = min(expires, operator.expires_at)
            tx.insert(t.console_sessions, dict(
                id_sha256=sha256_hex(session_id), key_id=operator.key_id, actor=operator.actor,
                scopes=sorted(s.value for s in operator.scopes), created_at=tx.now, expires_at=expires,
                last_seen_at=tx.now, ended_at=None))
            tx.audit("console.login", run_id=None, actor=operator.actor, data={
                **VIA, "key": operator.key_name, "prefix": operator.key_prefix, "remote": remote,
                "expires_at": expires.isoformat()})
            return Session(session_id, operator.actor, operator.scopes, operator.key_id, tx.now, expires, tx.now)

        session = await self.store.write(op)
        return session, self.signer.cookie(session_id, operator.binding)

    async def refused(self, refusal: LoginRefused, remote: str | None) -> None:
        """Audit a failed login, at most once a minute per key (unknown credentials share one)."""
        key = ("console.login_failed", refusal.key_id or refusal.reason)
        attempt = object()
        data: dict[str, Any] = {**VIA, "reason": refusal.reason, "remote": remote}
        event = Subject("console.login_failed", run_id=None, actor=refusal.actor, data=data)

        async def op(tx: Tx) -> None:
            left_out = self.failures.admit(key, tx.now, attempt, event)
            if left_out is None:
                def count() -> None:
                    self.failures.left_out(key)
                    AUDIT_SUPPRESSED.labels(kind="console.login_failed").inc()

                tx.after_commit(count)
                return
            tx.audit("console.login_failed", run_id=None, actor=refusal.actor,
                     data={**data, "suppressed": left_out} if left_out else data)

        await self.store.write(op)
        await self.failure_summaries.flush()  # a burst of any key that stopped (service/audit_summaries.py)

    async def find(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or None (ending it first if its time or key ran out)."""
        parts = self.signer.read_cookie(cookie) if cookie else None
        if parts is None:
            return None
        digest = sha256_hex(parts.session_id)

        async def q(conn: Any) -> Any:
            return (await conn.execute(_FIND, {"digest": digest})).first()

        row = await self.store.read(q)
        if row is None or row.ended_at is not None or not self.identity.binding_ok(row.key_id, parts.binding):
            return None
        now = self.store.clock()  # the clock its times were written with (tx.now)
        ended = _why_ended(row, now)
        if ended is not None:
            await self._end(digest, row.actor, ended)
            return None
        scopes, _unknown = parse_scopes(list(row.scopes))
        session = Session(parts.session_id, row.actor, scopes, row.key_id, row.created_at, row.expires_at,
                          row.last_seen_at)
        if now - row.last_seen_at >= TOUCH_EVERY:
            await self._touch(digest)
        return session

    async def end(self, session: Session) -> None:
        await self._end(sha256_hex(session.id), session.actor, Ended.LOGOUT)

    async def _end(self, digest: str, actor: str, why: Ended) -> None:
        async def op(tx: Tx) -> None:
            done = await tx.execute(t.console_sessions.update()
                                    .where(t.console_sessions.c.id_sha256 == digest,
                                           t.console_sessions.c.ended_at.is_(None))
                                    .values(ended_at=tx.now))
            if done.rowcount == 1:  # once, however many requests noticed at the same time
                kind = "console.logout" if why is Ended.LOGOUT else "console.session_ended"
                tx.audit(kind, run_id=None, actor=actor, data={**VIA, "reason": why.value})

        await self.store.write(op)

    async def _touch(self, digest: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.execute(t.console_sessions.update().where(t.console_sessions.c.id_sha256 == digest)
                             .values(last_seen_at=tx.now))

        await self.store.write(op)


def _why_ended(row: Any, now: datetime) -> Ended | None:
    if row.key_revoked_at is not None:
        return Ended.KEY_REVOKED
    if row.key_expires_at is not None and row.key_expires_at <= now:
        return Ended.KEY_EXPIRED
    if row.expires_at <= now:
        return Ended.EXPIRED
    if now - row.last_seen_at >= IDLE_TIMEOUT:
        return Ended.IDLE
    return None
