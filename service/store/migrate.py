"""Schema migrations (Alembic), applied programmatically on a live connection.

Checking that a database is migrated (every start, every `/readyz`) needs no Alembic: the
stored revision is one row of `alembic_version`, and the head is read from the migration
files' `revision` / `down_revision` lines (tests/test_migrations.py checks it equals
Alembic's). Alembic itself (with Mako and Pygments, ~0.2 s of imports) is loaded only to
migrate.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


class NotMigrated(RuntimeError):
    """The database schema is missing or older than this version of Countersign."""


def _config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration of this code: the revision no other migration revises."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        values = _module_constants(path)
        revision = values.get("revision")
        if not isinstance(revision, str):
            raise RuntimeError(f"{path} has no revision")
        revisions.add(revision)
        down = values.get("down_revision")  # None, one revision, or several (a merge)
        if isinstance(down, str):
            revised.add(down)
        elif isinstance(down, (tuple, list)):
            revised.update(str(d) for d in down)
    heads = revisions - revised
    if len(heads) != 1:
        raise RuntimeError(f"expected one head migration in {MIGRATIONS_DIR}, found {sorted(heads) or 'none'}")
    return heads.pop()


def _module_constants(path: Path) -> dict[str, object]:
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision") and value is not None:
            values[target.id] = ast.literal_eval(value)
    return values


async def upgrade(engine: AsyncEngine) -> None:
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), "head"))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: never migrated), read without Alembic."""
    def read(conn: Connection) -> str | None:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        stored = list(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
        if len(stored) > 1:
            raise NotMigrated(f"database records several migration heads {sorted(stored)}; expected one")
        return stored[0] if stored else None

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def is_migrated(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head_revision()


async def check_migrated(engine: AsyncEngine) -> None:
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise NotMigrated(
            f"database is at migration {current or 'none'}, this version needs {head}: "
            "run `countersign migrate` first"
        )
