"""API keys and the signature replay guard (store ops).

A key is `csk_` + 256 random bits; only its SHA-256 is stored (the key has too much
entropy for a slow hash to add anything), with a short prefix an operator can recognise.
Every request looks its key up, so a revocation holds on every replica at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .audit_throttle import Subject
from .domain import InvalidTransition, NotFound
from .identities import identity_problem
from .scopes import Principal, PrincipalKind, Scope, ScopeRuleError, check_grant, check_key_shape, key_actor
from .store import tables as t
from .store.db import Store, Tx, utcnow

KEY_PREFIX = "csk_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # used with fullmatch
MAX_KEY_LIFETIME = timedelta(days=3650)

REFUSED_KEY_EVENT = "key.refused"


def key_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class KeyNameTaken(InvalidTransition):
    code = "key_name_taken"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: frozenset[Scope]
    reviewer: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def principal(self) -> Principal:
        return Principal(PrincipalKind.API_KEY, key_actor(self.name), self.scopes, self.reviewer, self.expires_at)

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(id=row.id, name=row.name, prefix=row.prefix, scopes=frozenset(Scope(s) for s in row.scopes),
                   reviewer=row.reviewer, created_by=row.created_by, created_at=row.created_at,
                   expires_at=row.expires_at, revoked_at=row.revoked_at, revoked_by=row.revoked_by)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once, never stored


_BY_HASH = sa.select(t.api_keys).where(t.api_keys.c.key_sha256 == sa.bindparam("digest"))


class ApiKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, *, name: str, scopes: frozenset[Scope], reviewer: str | None, expires_in: timedelta | None,
                     created_by: str, grantor: Principal | None = None) -> CreatedKey:
        """`grantor`: the key making this one through the API (the CLI has the database: no limit)."""
        if not NAME_PATTERN.fullmatch(name):
            raise ScopeRuleError("a key name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                                 "name")
        if reviewer is not None and (problem := identity_problem(reviewer.strip())):
            raise ScopeRuleError(f"the reviewer {problem}", "reviewer")  # the CLI comes here without the API's check
        check_key_shape(scopes, reviewer)
        if expires_in is not None and expires_in > MAX_KEY_LIFETIME:
            raise ScopeRuleError("a key lives at most 3650 days (10 years); leave the expiry out for a key without one",
                                 "expires")
        if grantor is not None:
            check_grant(grantor, scopes, reviewer, utcnow() + expires_in if expires_in else None)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)

        async def op(tx: Tx) -> ApiKey | None:
            taken = (await tx.execute(sa.select(t.api_keys.c.id).where(t.api_keys.c.name == name))).first()
            if taken is not None:
                return None
            key = ApiKey(id=str(uuid.uuid4()), name=name, prefix=secret[:12], scopes=scopes, reviewer=reviewer,
                         created_by=created_by, created_at=tx.now,
                         expires_at=tx.now + expires_in if expires_in else None)
            tx.insert(t.api_keys, dict(
                id=key.id, name=name, key_sha256=key_sha256(secret), prefix=key.prefix,
                scopes=sorted(s.value for s in scopes), reviewer=reviewer, created_by=created_by,
                created_at=tx.now, expires_at=key.expires_at, revoked_at=None, revoked_by=None))
            tx.audit("key.created", run_id=None, actor=created_by, data={
                "name": name, "prefix": key.prefix, "scopes": sorted(s.value for s in scopes), "reviewer": reviewer,
                "expires_at": key.expires_at.isoformat() if key.expires_at else None})
            return key

        try:
            key = await self.store.write(op)
        except sa.exc.IntegrityError:  # another process took the name between our check and insert
            key = None
        if key is None:
            raise KeyNameTaken(f"a key named {name!r} already exists (revoked keys keep their name)", field="name")
        return CreatedKey(key, secret)

    async def list(self) -> list[ApiKey]:
        async def q(conn: Any) -> list[ApiKey]:
            rows = await conn.execute(sa.select(t.api_keys).order_by(t.api_keys.c.created_at, t.api_keys.c.name))
            return [ApiKey.from_row(r) for r in rows]

        return await self.store.read(q)

    async def revoke(self, name: str, *, by: str) -> ApiKey:
        async def op(tx: Tx) -> ApiKey | None:
            row = (await tx.execute(sa.select(t.api_keys).where(t.api_keys.c.name == name))).first()
            if row is None:
                return None
            key = ApiKey.from_row(row)
            if key.revoked_at is not None:
                return key  # revoking twice changes nothing
            await tx.execute(t.api_keys.update().where(t.api_keys.c.id == key.id)
                             .values(revoked_at=tx.now, revoked_by=by))
            tx.audit("key.revoked", run_id=None, actor=by, data={"name": name, "prefix": key.prefix})
            return ApiKey.from_row((await tx.execute(sa.select(t.api_keys).where(t.api_keys.c.id == key.id))).one())

        key = await self.store.write(op)
        if key is None:
            raise NotFound("key", name)
        return key

    async def find(self, secret: str) -> ApiKey | None:
        async def q(conn: Any) -> ApiKey | None:
            row = (await conn.execute(_BY_HASH, {"digest": key_sha256(secret)})).first()
            return ApiKey.from_row(row) if row is not None else None

        return await self.store.read(q)

    @staticmethod
    def refused_use(key: ApiKey, status: str) -> Subject:
        """The audit event of someone presenting a revoked or expired key."""
        return Subject(REFUSED_KEY_EVENT, run_id=None, actor=key_actor(key.name),
                       data={"name": key.name, "prefix": key.prefix, "status": status})

    async def record_refused_use(self, event: Subject, suppressed: int = 0) -> None:
        """Audit `event` (`refused_use`); `suppressed`: how many uses before it were left out."""
        async def op(tx: Tx) -> None:
            tx.audit(event.kind, run_id=event.run_id, actor=event.actor,
                     data={**event.data, "suppressed": suppressed} if suppressed else dict(event.data))

        await self.store.write(op)


@dataclass(frozen=True, slots=True)
class Claim:
    new: bool
    first_idempotency_key: str | None = None  # a replay: the key the signature first came with


class ReplayGuard:
    """Remembers each accepted signature until it expires, in the store, so that a replay
    is refused by every process sharing the database."""

    PURGE_EVERY = timedelta(minutes=1)

    def __init__(self, store: Store) -> None:
        self.store = store
        self._last_purge = utcnow()

    async def claim(self, digest: str, expires_at: datetime, idempotency_key: str | None) -> Claim:
        """Whether this signature is new, or a replay (and then with which Idempotency-Key it first came)."""
        purge = utcnow() - self._last_purge > self.PURGE_EVERY

        async def op(tx: Tx) -> Claim:
            insert = (postgresql.insert if tx.dialect == "postgresql" else sqlite.insert)(t.signature_uses)
            done = await tx.execute(insert.values(digest=digest, expires_at=expires_at, idempotency_key=idempotency_key)
                                    .on_conflict_do_nothing(index_elements=["digest"]))
            if purge:
                await tx.execute(t.signature_uses.delete().where(t.signature_uses.c.expires_at < tx.now))
            if done.rowcount == 1:
                return Claim(new=True)
            first = (await tx.execute(sa.select(t.signature_uses.c.idempotency_key)
                                      .where(t.signature_uses.c.digest == digest))).scalar()
            return Claim(new=False, first_idempotency_key=first)

        if purge:
            self._last_purge = utcnow()
        return await self.store.write(op)
