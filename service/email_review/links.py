"""Review links and their one-time codes, in the `review_links` table.

A link's token is 256 random bits (URL-safe base64), in the email alone; the table holds its
SHA-256, so a copy of the database opens no review page. A link is bound to one approval and
one reviewer (the address it was sent to), expires with the approval or the policy's
`email_link_ttl`, and is spent by the decision taken with it. With `email_confirm = "code"`
a decision also needs a six-digit code sent to the reviewer's address: stored as a SHA-256
of the token and the code, so the table alone cannot be searched for it. Every try uses up
one of the link's `CODE_ATTEMPTS` before it is compared (so parallel guesses are counted
too), the count is never reset by a new code, and the link is locked (spent) when it runs
out; a new code is sent only when none is valid.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..store import tables as t
from ..store.db import Tx

TOKEN_BYTES = 32
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # what token_urlsafe(32) makes
CODE_DIGITS = 6
_CODE = re.compile(r"[0-9]{6}", re.ASCII)
CODE_TTL = timedelta(minutes=10)
CODE_ATTEMPTS = 5
# A link of an approval that never expires still does, and a reminder brings a fresh one.
DEFAULT_TTL = timedelta(days=30)


def mint_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def well_formed(token: str) -> bool:
    return _TOKEN.fullmatch(token) is not None


def mint_code() -> str:
    return f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"


def well_formed_code(code: str) -> bool:
    return _CODE.fullmatch(code) is not None


def code_sha256(token: str, code: str) -> str:
    return hashlib.sha256(f"{token}:{code}".encode()).hexdigest()


def csrf_token(token: str, approval_id: str) -> str:
    """The forms' anti-forgery field: only who holds the link can compute it, and no page
    elsewhere can read it (the review page sends no Referer and is never framed)."""
    return hmac.new(token.encode("ascii"), f"countersign-review-csrf:{approval_id}".encode(), "sha256").hexdigest()


def csrf_ok(token: str, approval_id: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(csrf_token(token, approval_id).encode(),
                                                     given.encode("utf-8", "surrogateescape"))


@dataclass(frozen=True, slots=True)
class ReviewLink:
    id: str
    approval_id: str
    reviewer: str  # the email address the link was sent to
    purpose: str
    created_at: datetime
    expires_at: datetime
    spent_at: datetime | None
    spent_reason: str | None
    code_sha256: str | None
    code_expires_at: datetime | None
    code_attempts: int

    @classmethod
    def from_row(cls, row: Any) -> ReviewLink:
        return cls(row.id, row.approval_id, row.reviewer, row.purpose, row.created_at, row.expires_at, row.spent_at,
                   row.spent_reason, row.code_sha256, row.code_expires_at, row.code_attempts)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def code_pending(self, now: datetime) -> bool:
        """A code was sent and still works: no other is sent before it expires."""
        return self.code_sha256 is not None and self.code_expires_at is not None and now < self.code_expires_at


def expiry(now: datetime, approval_expires_at: datetime | None, link_ttl: timedelta | None) -> datetime:
    """The approval's expiry or the policy's link TTL, whichever comes first."""
    ends = [e for e in (approval_expires_at, now + link_ttl if link_ttl else None) if e is not None]
    return min(ends) if ends else now + DEFAULT_TTL


def create(tx: Tx, *, approval_id: str, reviewer: str, purpose: str, expires_at: datetime) -> str:
    """A new link; returns its token (the only time it exists outside the email)."""
    token = mint_token()
    tx.insert(t.review_links, dict(
        id=str(uuid.uuid4()), approval_id=approval_id, reviewer=reviewer, token_sha256=token_sha256(token),
        purpose=purpose, created_at=tx.now, expires_at=expires_at, spent_at=None, spent_reason=None,
        code_sha256=None, code_expires_at=None, code_attempts=0))
    return token


_BY_TOKEN = sa.select(t.review_links).where(t.review_links.c.token_sha256 == sa.bindparam("token_sha256"))


async def find(conn: Any, token: str) -> ReviewLink | None:
    if not well_formed(token):
        return None
    row = (await conn.execute(_BY_TOKEN, {"token_sha256": token_sha256(token)})).first()
    return ReviewLink.from_row(row) if row else None


async def spend(tx: Tx, link_id: str, reason: str) -> bool:
    """Spend the link (once: False if it already was)."""
    done = await tx.execute(t.review_links.update().where(
        t.review_links.c.id == link_id, t.review_links.c.spent_at.is_(None)).values(
        spent_at=tx.now, spent_reason=reason, code_sha256=None, code_expires_at=None))
    return bool(done.rowcount)


async def set_code(tx: Tx, link_id: str, token: str, code: str) -> bool:
    """Store a new code, unless one still works or the link is spent (False: send nothing)."""
    c = t.review_links.c
    done = await tx.execute(t.review_links.update().where(
        c.id == link_id, c.spent_at.is_(None), sa.or_(c.code_expires_at.is_(None), c.code_expires_at <= tx.now))
        .values(code_sha256=code_sha256(token, code), code_expires_at=tx.now + CODE_TTL))
    return bool(done.rowcount)


class CodeCheck(enum.Enum):
    RIGHT = "right"
    WRONG = "wrong"
    LOCKED = "locked"  # the link's tries are used up: it is spent
    NONE = "none"  # no code works now (none sent, or it expired): send one


async def try_code(tx: Tx, link_id: str, token: str, code: str) -> CodeCheck:
    """Use up one try, then compare: a guess is counted before it is checked."""
    c = t.review_links.c
    row = (await tx.execute(t.review_links.update().where(
        c.id == link_id, c.spent_at.is_(None), c.code_sha256.is_not(None), c.code_expires_at > tx.now,
        c.code_attempts < CODE_ATTEMPTS).values(code_attempts=c.code_attempts + 1)
        .returning(c.code_sha256, c.code_attempts))).first()
    if row is None:
        attempts = (await tx.execute(sa.select(c.code_attempts).where(c.id == link_id))).scalar_one()
        if attempts >= CODE_ATTEMPTS:
            await spend(tx, link_id, "locked")
            return CodeCheck.LOCKED
        return CodeCheck.NONE
    if hmac.compare_digest(row.code_sha256.encode(), code_sha256(token, code).encode()):
        # Once: a decision refused after it needs a new code.
        await tx.execute(t.review_links.update().where(c.id == link_id).values(code_sha256=None, code_expires_at=None))
        return CodeCheck.RIGHT
    if row.code_attempts >= CODE_ATTEMPTS:
        await spend(tx, link_id, "locked")
        return CodeCheck.LOCKED
    return CodeCheck.WRONG
