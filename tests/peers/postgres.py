"""A real PostgreSQL server started by the tests (Debian's binaries, as on the machines).

initdb refuses to run as root, so as root it runs as the `postgres` user. Each test gets
its own database on the one server (made ahead, see `_Admin`), dropped when the test ends.
A test that needs its database migrated gets a copy of a template database migrated once
(`copy_template_into`): what migrating its empty database would have made.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def find_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


# Anything a test may have made in a database: schemas of its own, or relations, types and
# functions in `public`. A database with none of these is as `CREATE DATABASE` left it.
_USER_OBJECTS = """
SELECT (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
                                            AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%')
     + (SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace)
     + (SELECT count(*) FROM pg_type WHERE typnamespace = 'public'::regnamespace)
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)
"""


class PostgresServer:
    def __init__(self, port: int) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (install Debian's postgresql package)")
        self.bindir = bindir
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="countersign-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._admin: _Admin | None = None
        self._templates: dict[str, str] = {}  # key -> template database name

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        self._run("initdb", "--no-sync", "--auth=trust", "-U", "app", "-D", str(self.data))
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o",
                  f"-k {self.dir} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                  "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200", "start")

    def stop(self) -> None:
        try:
            if self._admin is not None:
                self._admin.close()
                self._admin = None
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, name: str) -> str:
        return f"postgresql+asyncpg://app@127.0.0.1:{self.port}/{name}"

    @property
    def admin(self) -> _Admin:
        if self._admin is None:
            self._admin = _Admin(self.port)
        return self._admin

    def create_database(self) -> str:
        """A new, empty database (what `createdb` makes: a copy of template1)."""
        return self.url(self.admin.call(self.admin.take(None)))

    def drop_database(self, url: str) -> None:
        """Dropped in the background (whoever is still connected is disconnected)."""
        self.admin.drop_later(url.rsplit("/", 1)[1])

    def template(self, key: str, prepare: Callable[[str], None]) -> str:
        """The template database `key`, made once: an empty database that `prepare(url)`
        fills and leaves without a connection open. Copies of it are made ahead from then on."""
        if key not in self._templates:
            url = self.create_database()
            prepare(url)
            name = url.rsplit("/", 1)[1]
            self.admin.call(self.admin.add_template(name))
            self._templates[key] = name
        return self._templates[key]

    def is_empty(self, url: str) -> bool:
        """Nothing made in this database since `CREATE DATABASE`."""
        return self.admin.call(self.admin.count_objects(url.rsplit("/", 1)[1])) == 0

    def copy_template_into(self, url: str, template: str) -> bool:
        """Replace the empty database of `url` by a copy of `template`. False (and nothing
        changed) if it is not empty or anything is connected to it."""
        if not self.is_empty(url):
            return False
        return self.admin.call(self.admin.replace(url.rsplit("/", 1)[1], template))


class _Admin:
    """Connections to the server's `postgres` database, on a loop of their own in a thread
    (usable from plain functions and from inside a test's running loop alike).

    Making a database costs a tenth of a second or more (CREATE DATABASE copies its
    template), so a few spare ones of each kind are made ahead in the background, on a
    connection of their own, while the tests run; a test takes one (a rename at most) and
    the next is made. Each is still made by CREATE DATABASE from its template and used by
    one test only. Dropping a test's database is background work too."""

    SPARES = 3

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="pg-admin", daemon=True)
        self.thread.start()
        self.fg: Any = None  # the tests' statements
        self.bg: Any = None  # making spares, dropping
        self.fg_lock: asyncio.Lock | None = None
        self.spares: dict[str | None, list[str]] = {None: []}  # template (None: template1) -> ready databases
        self.to_drop: list[str] = []
        self.kick: asyncio.Event | None = None
        self.worker: asyncio.Task[None] | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        async def close() -> None:
            if self.worker is not None:
                self.worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.worker
            for conn in (self.fg, self.bg):
                if conn is not None:
                    await conn.close()

        self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _connect(self, database: str = "postgres") -> Any:
        import asyncpg

        return await asyncpg.connect(host="127.0.0.1", port=self.port, user="app", database=database)

    async def _fg(self) -> Any:
        if self.fg is None:
            self.fg = await self._connect()
            self.fg_lock = asyncio.Lock()
            self.kick = asyncio.Event()
            self.worker = asyncio.create_task(self._make_spares())
        return self.fg

    async def _create(self, conn: Any, template: str | None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    async def take(self, template: str | None) -> str:
        """A database made from `template` (None: template1), ready or made now."""
        conn = await self._fg()
        assert self.kick is not None and self.fg_lock is not None
        self.kick.set()
        if self.spares.get(template):
            return self.spares[template].pop(0)
        async with self.fg_lock:
            return await self._create(conn, template)

    async def add_template(self, template: str) -> None:
        await self._fg()
        assert self.kick is not None
        self.spares.setdefault(template, [])
        self.kick.set()

    async def count_objects(self, name: str) -> int:
        conn = await self._connect(name)
        try:
            return int(await conn.fetchval(_USER_OBJECTS))
        finally:
            await conn.close()

    async def replace(self, name: str, template: str) -> bool:
        import asyncpg

        conn = await self._fg()
        assert self.fg_lock is not None
        copy = await self.take(template)
        async with self.fg_lock:
            try:
                await conn.execute(f'DROP DATABASE "{name}"')  # refused while anyone is connected
            except asyncpg.ObjectInUseError:
                self.spares[template].append(copy)
                return False
            await conn.execute(f'ALTER DATABASE "{copy}" RENAME TO "{name}"')
        return True

    def drop_later(self, name: str) -> None:
        def queue() -> None:
            self.to_drop.append(name)
            if self.kick is not None:
                self.kick.set()

        self.loop.call_soon_threadsafe(queue)

    async def _make_spares(self) -> None:
        assert self.kick is not None
        self.bg = await self._connect()
        while True:
            await self.kick.wait()
            self.kick.clear()
            while True:
                short = [t for t, ready in self.spares.items() if len(ready) < self.SPARES]
                try:
                    if short:
                        template = min(short, key=lambda t: len(self.spares[t]))
                        self.spares[template].append(await self._create(self.bg, template))
                    elif self.to_drop:
                        await self.bg.execute(f'DROP DATABASE IF EXISTS "{self.to_drop.pop(0)}" WITH (FORCE)')
                    else:
                        break
                except Exception as exc:  # noqa: BLE001 (the tests make what is missing themselves)
                    print(f"tests/peers/postgres.py: making spare databases: {exc!r}", file=sys.stderr)
                    await asyncio.sleep(1)
                    break
