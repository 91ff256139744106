"""Migrations create exactly the schema the code uses; `serve` refuses an unmigrated database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store.db import Store
from service.store.migrate import NotMigrated, check_migrated, head_revision, upgrade
from service.store.tables import metadata


async def test_migrations_match_the_tables(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        try:
            await check_migrated(store.writer_engine)
            raise AssertionError("an empty database must not pass the migration check")
        except NotMigrated as exc:
            assert "countersign migrate" in str(exc)
        await upgrade(store.writer_engine)
        await upgrade(store.writer_engine)  # idempotent
        await check_migrated(store.writer_engine)
        async with store.writer_engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        assert diff == []
    finally:
        await store.close()


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path), "COUNTERSIGN_AUTO_MIGRATE": "false",
           "COUNTERSIGN_API_TOKEN": "x" * 20, "COUNTERSIGN_PORT": "0"}
    result = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run `countersign migrate` first" in result.stderr
    migrated = subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, capture_output=True, text=True,
                              timeout=60)
    assert migrated.returncode == 0 and f"migrated to {head_revision()}" in migrated.stdout


def test_the_head_read_from_the_files_is_alembics() -> None:
    """`serve` and `/readyz` read the head without Alembic (service/store/migrate.py); it must be
    the one Alembic migrates to."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from service.store.migrate import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_checking_a_migrated_database_imports_no_alembic(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from service.store.db import Store\n"
        "from service.store.migrate import upgrade\n"
        f"url = 'sqlite+aiosqlite:///{tmp_path / 'c.db'}'\n"
        "async def main():\n"
        "    store = Store.from_url(url)\n"
        "    await upgrade(store.writer_engine)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    check = (
        "import asyncio, sys\n"
        "from service.store.db import Store\n"
        "from service.store.migrate import check_migrated\n"
        f"url = 'sqlite+aiosqlite:///{tmp_path / 'c.db'}'\n"
        "async def main():\n"
        "    store = Store.from_url(url)\n"
        "    await check_migrated(store.writer_engine)\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('alembic', 'mako') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
