"""Finding the people the bot has met (service/teams/conversations.py) by email or UPN:
the same case-insensitive rule as the decision path (`Reviewer.identities()`, Python's
casefold), on SQLite (whose lower() folds only ASCII) and PostgreSQL alike."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service.store import tables as t
from service.store.db import Store
from service.teams.conversations import AmbiguousMember, Conversations, Member
from service.teams.tenants import AllowedTenants

TENANT, FOREIGN = "tenant-a", "tenant-b"


def person(object_id: str, email: str | None, upn: str | None = None, tenant: str = TENANT) -> Member:
    return Member(object_id, f"29:{object_id}", tenant, "https://smba.example", email, upn, object_id)


async def test_an_email_outside_ascii_is_found_as_the_decision_path_compares_it(store: Store) -> None:
    conversations = Conversations(store, AllowedTenants([TENANT]))
    await conversations.save_member(person("aad-jorg", "JÖRG@example.com"))
    await conversations.save_member(person("aad-strasse", "Lee@example.com", upn="Straße@example.de"))
    await conversations.save_member(person("aad-ann", "Ann@Example.com"))

    for identity, found in (("jörg@example.com", "aad-jorg"), ("JÖRG@EXAMPLE.COM", "aad-jorg"),
                            ("strasse@example.de", "aad-strasse"), ("STRASSE@example.de", "aad-strasse"),
                            ("ann@example.com", "aad-ann"), ("aad-ann", "aad-ann")):
        member = await conversations.member(identity)
        assert member is not None and member.aad_object_id == found, identity
        assert await store.read(lambda conn, i=identity: conversations.why_unreachable(conn, i)) is None, identity
    assert await conversations.member("jorg@example.com") is None  # folding is not transliteration

    # Two people whose addresses casefold alike are ambiguous, whatever the database's lower().
    await conversations.save_member(person("aad-jorg-2", "jörg@example.com"))
    with pytest.raises(AmbiguousMember):
        await conversations.member("Jörg@example.com")


async def test_a_non_ascii_match_in_a_tenant_no_longer_allowed_is_refused(store: Store) -> None:
    await Conversations(store, AllowedTenants([TENANT, FOREIGN])).save_member(
        person("aad-eve", "ÉVE@example.com", tenant=FOREIGN))
    conversations = Conversations(store, AllowedTenants([TENANT]))
    assert await conversations.member("éve@example.com") is None
    reason = await store.read(lambda conn: conversations.why_unreachable(conn, "éve@example.com"))
    assert reason is not None and FOREIGN in reason

    async def count(conn: sa.AsyncConnection) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.teams_members))).scalar_one()

    assert await store.read(count) == 1
