"""Where the bot is installed, and who the people it has met are (store ops).

Only conversations and people of the allowed tenants are stored or found: a row from
another tenant (stored before the allow-list changed) is never used for routing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from botbuilder.schema import ConversationReference

from ..domain import KnownEmail, Reviewer
from ..store import tables as t
from ..store.db import Store, Tx
from .tenants import AllowedTenants, TenantNotAllowed


class AmbiguousMember(LookupError):
    """An email or UPN that names more than one person the bot knows: never guess."""


@dataclass(frozen=True, slots=True)
class Conversation:
    id: str
    kind: str  # channel | groupChat | personal
    service_url: str
    tenant_id: str | None
    team_id: str | None
    channel_id: str | None
    user_aad_object_id: str | None
    reference: ConversationReference

    @classmethod
    def from_row(cls, row: Any) -> Conversation:
        return cls(row.id, row.kind, row.service_url, row.tenant_id, row.team_id, row.channel_id,
                   row.user_aad_object_id, ConversationReference().deserialize(row.reference))


@dataclass(frozen=True, slots=True)
class Member:
    aad_object_id: str
    user_id: str | None
    tenant_id: str | None
    service_url: str | None
    email: str | None
    user_principal_name: str | None
    name: str | None
    fetched_at: datetime | None = None  # set by the store when saved


class Conversations:
    def __init__(self, store: Store, tenants: AllowedTenants) -> None:
        self.store = store
        self.tenants = tenants
        self._member_select: tuple[frozenset[str], sa.Select[Any]] | None = None
        # Called after each conversation or member saved (committed): `countersign demo
        # --teams` waits here for the reviewer's chat before it sends its sample request.
        self.on_saved: list[Callable[[], None]] = []

    def _allowed(self, column: Any) -> Any:
        return sa.func.lower(column).in_(sorted(self.tenants.tenants))

    async def save(self, conversation: Conversation) -> None:
        self.tenants.check(conversation.tenant_id, f"conversation {conversation.id}")
        async def op(tx: Tx) -> None:
            values = {
                "kind": conversation.kind, "service_url": conversation.service_url,
                "tenant_id": conversation.tenant_id, "team_id": conversation.team_id,
                "channel_id": conversation.channel_id, "user_aad_object_id": conversation.user_aad_object_id,
                "reference": conversation.reference.serialize(), "updated_at": tx.now,
            }
            updated = await tx.execute(
                t.teams_conversations.update().where(t.teams_conversations.c.id == conversation.id).values(**values))
            if updated.rowcount == 0:
                await tx.execute(t.teams_conversations.insert().values(
                    id=conversation.id, installed_at=tx.now, **values))
                tx.audit("teams.installed", run_id=None, actor="teams",
                         data={"conversation_id": conversation.id, "kind": conversation.kind,
                               "team_id": conversation.team_id, "tenant_id": conversation.tenant_id})

        await self.store.write(op)
        self._saved()

    async def remove(self, *, conversation_id: str | None = None, team_id: str | None = None) -> int:
        async def op(tx: Tx) -> int:
            where = (t.teams_conversations.c.team_id == team_id) if team_id else (
                t.teams_conversations.c.id == conversation_id)
            removed = (await tx.execute(t.teams_conversations.delete().where(where))).rowcount
            if removed:
                tx.audit("teams.uninstalled", run_id=None, actor="teams",
                         data={"conversation_id": conversation_id, "team_id": team_id, "removed": removed})
            return removed

        return await self.store.write(op)

    async def get(self, conversation_id: str) -> Conversation | None:
        async def q(conn: Any) -> Conversation | None:
            row = (await conn.execute(
                sa.select(t.teams_conversations).where(t.teams_conversations.c.id == conversation_id,
                                                       self._allowed(t.teams_conversations.c.tenant_id)))).first()
            return Conversation.from_row(row) if row else None

        return await self.store.read(q)

    async def for_channel(self, channel_id: str) -> Conversation | None:
        """A stored reference in the team that holds `channel_id` (to start threads there)."""
        async def q(conn: Any) -> Conversation | None:
            row = (await conn.execute(
                sa.select(t.teams_conversations)
                .where(sa.or_(t.teams_conversations.c.channel_id == channel_id,
                              t.teams_conversations.c.id == channel_id),
                       self._allowed(t.teams_conversations.c.tenant_id))
                .order_by(t.teams_conversations.c.updated_at.desc()).limit(1))).first()
            return Conversation.from_row(row) if row else None

        return await self.store.read(q)

    async def personal_with(self, aad_object_id: str) -> Conversation | None:
        async def q(conn: Any) -> Conversation | None:
            row = (await conn.execute(
                sa.select(t.teams_conversations)
                .where(t.teams_conversations.c.kind == "personal",
                       t.teams_conversations.c.user_aad_object_id == aad_object_id,
                       self._allowed(t.teams_conversations.c.tenant_id))
                .order_by(t.teams_conversations.c.updated_at.desc()).limit(1))).first()
            return Conversation.from_row(row) if row else None

        return await self.store.read(q)

    async def any_in_tenant(self, tenant_id: str | None) -> Conversation | None:
        """Any reference in the tenant: its service URL is where new conversations are created."""
        async def q(conn: Any) -> Conversation | None:
            query = (sa.select(t.teams_conversations).where(self._allowed(t.teams_conversations.c.tenant_id))
                     .order_by(t.teams_conversations.c.updated_at.desc()).limit(1))
            if tenant_id:
                query = query.where(t.teams_conversations.c.tenant_id == tenant_id)
            row = (await conn.execute(query)).first()
            return Conversation.from_row(row) if row else None

        return await self.store.read(q)

    async def save_member(self, member: Member) -> None:
        self.tenants.check(member.tenant_id, f"member {member.aad_object_id}")
        async def op(tx: Tx) -> None:
            values = {"user_id": member.user_id, "tenant_id": member.tenant_id, "service_url": member.service_url,
                      "email": member.email, "user_principal_name": member.user_principal_name,
                      "name": member.name, "fetched_at": tx.now}
            updated = await tx.execute(t.teams_members.update()
                                            .where(t.teams_members.c.aad_object_id == member.aad_object_id)
                                            .values(**values))
            if updated.rowcount == 0:
                await tx.execute(t.teams_members.insert().values(aad_object_id=member.aad_object_id, **values))

        await self.store.write(op)
        self._saved()

    def _saved(self) -> None:
        for saved in self.on_saved:
            saved()

    async def member_by_object_id(self, aad_object_id: str) -> Member | None:
        return await self.store.read(lambda conn: self._member_by_object_id(conn, aad_object_id))

    async def _member_by_object_id(self, conn: Any, aad_object_id: str) -> Member | None:
        """On a read connection or in a store op's `Tx` (both have `await execute`)."""
        row = (await conn.execute(self._member_query(), {"aad_object_id": aad_object_id})).first()
        return _member(row) if row else None

    def _member_query(self) -> sa.Select[Any]:
        # Built once per allow-list: a click runs it inside its decision, and building a
        # statement (and finding the tables it needs) costs more than running it.
        tenants = self.tenants.tenants
        if self._member_select is None or self._member_select[0] is not tenants:
            self._member_select = (tenants, sa.select(t.teams_members).where(
                t.teams_members.c.aad_object_id == sa.bindparam("aad_object_id"),
                self._allowed(t.teams_members.c.tenant_id)))
        return self._member_select[1]

    async def why_unreachable(self, conn: Any, identity: str) -> str | None:
        """Why a personal card cannot be routed to `identity` (AAD object id, email or UPN):
        None when the bot has met them in an allowed tenant, else the reason for the audit
        log. A person the bot knows only in a tenant no longer allowed is refused like any
        row of that tenant (`_allowed`). On a read connection or in a store op's `Tx`."""
        allowed = sa.case((self._allowed(t.teams_members.c.tenant_id), 1), else_=0)
        rows = (await conn.execute(
            sa.select(t.teams_members.c.aad_object_id, t.teams_members.c.email,
                      t.teams_members.c.user_principal_name, t.teams_members.c.tenant_id, allowed.label("allowed"))
            .where(_candidates(identity)))).all()
        matching = sorted((r for r in rows if _names(r, identity)), key=lambda r: -r.allowed)
        row = matching[0] if matching else None  # an allowed record first, if there is one
        if row is not None and row.allowed:
            return None
        if row is not None:
            return str(TenantNotAllowed(row.tenant_id, f"the bot's record of {identity}"))
        return "the bot has not met this person in Teams"

    def known_email(self, aad_object_id: str) -> KnownEmail:
        """For `DecisionRequest.known_email`: the stored member's (email, UPN), read in the
        decision's transaction; None unless the record is one the bot would use without a
        new lookup (`ApprovalBot._member`: a user id and an email or UPN)."""
        async def lookup(tx: Any) -> tuple[str | None, str | None] | None:
            member = await self._member_by_object_id(tx, aad_object_id)
            if member is None or not member.user_id or not (member.email or member.user_principal_name):
                return None
            return member.email, member.user_principal_name

        return lookup

    async def person(self, tx: Any, identity: str) -> Reviewer | None:
        """For `Decisions.people`: the one member known by `identity` (object id, email or
        UPN), as a Reviewer carrying all three; None for nobody or for more than one."""
        rows = await self._members_named(tx, identity)
        exact = [r for r in rows if r.aad_object_id == identity]
        if len(exact) != 1 and len(rows) != 1:
            return None
        row = (exact or rows)[0]
        email = row.email or row.user_principal_name
        return Reviewer(id=row.aad_object_id, name=row.name, email=email, upn=row.user_principal_name,
                        aliases=frozenset({row.aad_object_id}))

    async def _members_named(self, conn: Any, identity: str) -> list[Any]:
        """The members of the allowed tenants `identity` names, compared as the decision
        path compares identities (`_candidates`, `_names`)."""
        rows = (await conn.execute(sa.select(t.teams_members).where(
            _candidates(identity), self._allowed(t.teams_members.c.tenant_id)))).all()
        return [r for r in rows if _names(r, identity)]

    async def member(self, identity: str) -> Member | None:
        """A person by AAD object id, email or UPN (case-insensitive), within the allowed
        tenants. Raises `AmbiguousMember` when the email or UPN names more than one person
        (a guest in two tenants, a reused address)."""
        rows = await self.store.read(lambda conn: self._members_named(conn, identity))
        exact = [r for r in rows if r.aad_object_id == identity]
        if exact:
            return _member(exact[0])
        if len(rows) > 1:
            raise AmbiguousMember(f"{identity} matches more than one person in Teams "
                                  f"({', '.join(r.aad_object_id for r in rows)}); name the reviewer by object id")
        return _member(rows[0]) if rows else None


# Emails and UPNs compare as the decision path compares identities (Python's casefold,
# `Reviewer.identities()`). SQL cannot: SQLite's lower() folds only ASCII, PostgreSQL's
# follows its locale and neither folds "ß" to "ss". So SQL only narrows the rows: for an
# ASCII value lower() is casefold, and every value outside printable ASCII (rare: the
# people the bot has met with such an address) is a candidate; `_names` decides in Python.
_OUTSIDE_ASCII = "[^ -~]"


def _candidates(identity: str) -> Any:
    folded = identity.casefold()
    email, upn = t.teams_members.c.email, t.teams_members.c.user_principal_name
    return sa.or_(t.teams_members.c.aad_object_id == identity,
                  sa.func.lower(email) == folded, sa.func.lower(upn) == folded,
                  email.regexp_match(_OUTSIDE_ASCII), upn.regexp_match(_OUTSIDE_ASCII))


def _names(row: Any, identity: str) -> bool:
    folded = identity.casefold()
    return row.aad_object_id == identity or any(
        value is not None and value.casefold() == folded for value in (row.email, row.user_principal_name))


def _member(row: Any) -> Member:
    return Member(row.aad_object_id, row.user_id, row.tenant_id, row.service_url, row.email,
                  row.user_principal_name, row.name, row.fetched_at)
