"""Shared fixtures: real peers (SMTP, PostgreSQL, Chromium) and the service over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from sqlalchemy.engine import make_url

from service.api.deps import SERVICES
from service.app import create_app
from service.config import Settings
from service.scopes import Scope
from service.signing import HEADER, sign_v2
from service.store import tables as t
from service.store.db import Store, Tx, utcnow
from service.store.migrate import is_migrated, upgrade

from .peers.certs import TlsFiles, make_tls_files
from .peers.openai_server import ScriptedLLM
from .peers.postgres import PostgresServer
from .peers.smtp import SmtpServer

if TYPE_CHECKING:  # imported when a test asks for a browser: playwright takes 0.2 s to import
    from .peers.browser import Chromium, Tab

API_TOKEN = "test-api-token-0123456789"
WEBHOOK_SECRET = "test-webhook-secret-abcdef"
AUDIT_KEY = "test-audit-key-0123456789abcdef0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_server(tmp_path: Path, tls: TlsFiles) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp", tls, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A migrated, started store on the test's database (SQLite or PostgreSQL)."""
    await migrate_database(db_url)
    s = Store.from_url(db_url, audit_key=AUDIT_KEY)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    """A local OpenAI-compatible server answering with scripted replies."""
    server = ScriptedLLM()
    server.url = await server.start()  # type: ignore[attr-defined]
    yield server
    await server.close()


_PG_SERVERS: dict[int, PostgresServer] = {}  # by port: the session's server, for migrate_database


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer(free_port())
    server.start()
    _PG_SERVERS[server.port] = server
    yield server
    del _PG_SERVERS[server.port]
    server.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's headless Chromium under Playwright, started once per session (tests/peers/browser.py)."""
    from .peers.browser import Chromium

    browser = Chromium()
    try:
        browser.start()
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def tab(chromium: Chromium, request: pytest.FixtureRequest) -> Iterator[Tab]:
    """A fresh context and page (no cookies, no storage) for this test. `await tab.screenshot(name)`
    saves to tests/artifacts/<module>/<test>/ (emptied first), listed in the test's user_properties."""
    from .peers.browser import ARTIFACTS

    artifacts = ARTIFACTS / request.node.path.stem / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(artifacts, ignore_errors=True)
    opened = chromium.new_tab(artifacts)
    yield opened
    request.node.user_properties.extend(("screenshot", str(path)) for path in opened.screenshots)
    opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'countersign.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    yield url
    server.drop_database(url)  # after every fixture that used it (a test may have dropped it itself)


# -- migrated databases, migrated once ---------------------------------------------------------
# Migrating an empty database to the head gives the same database every time (the migrations
# are deterministic), so a test that needs a migrated database and still has an empty one
# gets a copy of one migrated once per session: a file copy on SQLite, CREATE DATABASE ...
# TEMPLATE on PostgreSQL. A database a test has already put something in (an older schema to
# upgrade, a fixture file) is migrated as before. tests/test_migrations.py, test_upgrade.py
# and the `countersign migrate` / `serve` tests still migrate for real.

def _in_a_thread(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to the end on a loop of its own (callable inside a running loop too)."""
    result: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(fn()))  # type: ignore[arg-type]
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return result[0]


async def _migrate(url: str) -> None:
    s = Store.from_url(url)
    try:
        await upgrade(s.writer_engine)
    finally:
        await s.close()


_SQLITE_TEMPLATE: list[Path] = []


def _sqlite_template() -> Path:
    if not _SQLITE_TEMPLATE:
        path = Path(tempfile.mkdtemp(prefix="countersign-sqlite-template-")) / "migrated.db"
        _in_a_thread(lambda: _migrate(f"sqlite+aiosqlite:///{path}"))
        leftovers = [p.name for p in path.parent.iterdir() if p != path]
        assert not leftovers, leftovers  # closed cleanly: no -wal/-shm to copy along
        _SQLITE_TEMPLATE.append(path)
    return _SQLITE_TEMPLATE[0]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for path in _SQLITE_TEMPLATE:
        shutil.rmtree(path.parent, ignore_errors=True)


def copy_migrated_sqlite(database: Path) -> bool:
    """Put a migrated database at `database` if there is no file there yet. Made 0600, as
    the service makes its database file before SQLite opens it (ensure_private_sqlite)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(_sqlite_template().read_bytes())
    return True


def copy_migrated_postgres(db_url: str) -> bool:
    """Replace the test's PostgreSQL database, if still empty, by a copy of the migrated template."""
    server = _PG_SERVERS[make_url(db_url).port]
    template = server.template("migrated", lambda url: _in_a_thread(lambda: _migrate(url)))
    return server.copy_template_into(db_url, template)


def _sqlite_path(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite+aiosqlite:///"))


async def migrate_database(db_url: str) -> None:
    """The test's database migrated to the head: copied from the template while it is still
    empty, else migrated by Alembic (a no-op if it is at the head already)."""
    if db_url.startswith("sqlite"):
        copied = copy_migrated_sqlite(_sqlite_path(db_url))
    else:
        copied = copy_migrated_postgres(db_url)
    if not copied:
        s = Store.from_url(db_url)
        try:
            if not await is_migrated(s.writer_engine):
                await upgrade(s.writer_engine)
        finally:
            await s.close()


def migrate_database_sync(db_url: str) -> None:
    """migrate_database for plain functions (what `countersign migrate` would have done)."""
    _in_a_thread(lambda: migrate_database(db_url))


def test_settings(tmp_path: Path, db_url: str, smtp: SmtpServer | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data", "database_url": db_url, "auto_migrate": True,
        "api_token": API_TOKEN, "webhook_secret": WEBHOOK_SECRET, "audit_key": AUDIT_KEY, "public_url": "http://countersign.test",
        "job_poll_seconds": 0.05, "job_backoff_base_seconds": 0.05, "job_backoff_max_seconds": 0.5,
        "job_max_attempts": 4, "mail_from": "Support Team <support@example.com>",
        "mail_reply_to": "help@example.com", "message_id_domain": "countersign.example.com",
        # Hermetic: the offline drafter unless a test points the agent at its own LLM server.
        "openai_api_key": None, "openai_base_url": "",
    }
    if smtp is not None:
        values.update(smtp.settings())
    values.update(overrides)
    if not str(values["database_url"]).startswith("sqlite"):
        values["auto_migrate"] = False
    return Settings(**values)


def signed(method: str, path: str, body: bytes, secret: str = WEBHOOK_SECRET, *, at: int | None = None) -> dict[str, str]:
    """The v2 signature header for a request to `path` (which may carry a query string)."""
    bare, _, query = path.partition("?")
    return {HEADER: sign_v2(secret, int(time.time()) if at is None else at, method, bare, query, body)}


@dataclass
class Service:
    url: str
    settings: Settings
    http: aiohttp.ClientSession
    app: Any
    # An API key with decide:on-behalf, made at start: how an integration decides through the API.
    decider_key: str = ""
    # Stops this service before the test ends (one serve per SQLite file: the next one needs it).
    stop: Callable[[], Awaitable[None]] | None = None

    async def request(self, method: str, path: str, *, body: Any = None, raw: bytes | None = None,
                      auth: str = "token", headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """`auth`: "token" (the operator token), "webhook" (a v2 signature), "decider" (the
        on-behalf key), "none", or an API key itself."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        h = {"Content-Type": "application/json"}
        if auth == "token":
            h["Authorization"] = f"Bearer {API_TOKEN}"
        elif auth == "webhook":
            h.update(signed(method, path, data))
        elif auth == "decider":
            h["Authorization"] = f"Bearer {self.decider_key}"
        elif auth != "none":
            h["Authorization"] = f"Bearer {auth}"
        h.update(headers or {})
        async with self.http.request(method, self.url + path, data=data, headers=h) as r:
            text = await r.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            return r.status, payload, r.headers

    async def create_run(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        status, payload, _ = await self.request("POST", "/api/runs", body=body, **kw)
        assert status == 202, payload
        return payload

    async def run(self, run_id: str) -> dict[str, Any]:
        status, payload, _ = await self.request("GET", f"/api/runs/{run_id}")
        assert status == 200, payload
        return payload

    async def decide(self, approval_id: str, body: dict[str, Any], auth: str = "decider") -> tuple[int, Any]:
        status, payload, _ = await self.request("POST", f"/api/approvals/{approval_id}/decisions", body=body, auth=auth)
        return status, payload

    async def make_key(self, name: str, *scopes: Scope, reviewer: str | None = None) -> str:
        """A new API key, made as `countersign keys create` makes it."""
        created = await self.app[SERVICES].keys.create(name=name, scopes=frozenset(scopes), reviewer=reviewer,
                                                       expires_in=None, created_by="test")
        return created.secret

    async def wait_for(self, run_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = await self.run(run_id)
            if predicate(run):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not reach the expected state: {json.dumps(run, indent=1)[:3000]}")
            await asyncio.sleep(0.05)

    async def wait_status(self, run_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
        return await self.wait_for(run_id, lambda r: r["status"] == status, timeout)


StartService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service(tmp_path: Path, db_url: str) -> AsyncIterator[StartService]:
    started: list[tuple[TestServer, aiohttp.ClientSession]] = []
    count = [0]  # services started so far (each makes its own decide key)

    async def start(smtp: SmtpServer | None = None, *, clock: Callable[[], datetime] = utcnow,
                    **overrides: Any) -> Service:
        settings = test_settings(tmp_path, db_url, smtp, **overrides)
        if not settings.is_sqlite:
            await migrate_database(settings.effective_database_url)
        elif settings.auto_migrate and settings.effective_database_url == db_url:
            copy_migrated_sqlite(_sqlite_path(db_url))  # else the service migrates the file it finds
        app = create_app(settings, clock=clock)  # a controlled clock moves time in timer tests
        server = TestServer(app, host="127.0.0.1", port=free_port())
        await server.start_server(shutdown_timeout=2)
        http = aiohttp.ClientSession()
        started.append((server, http))
        service = Service(str(server.make_url("")).rstrip("/"), settings, http, app)
        count[0] += 1
        service.decider_key = await service.make_key(f"decider-{count[0]}", Scope.DECIDE_ON_BEHALF)
        entry = (server, http)

        async def stop() -> None:
            if entry in started:
                started.remove(entry)
                await http.close()
                await server.close()

        service.stop = stop
        return service

    yield start
    for server, http in reversed(started):
        await http.close()
        await server.close()


@pytest.fixture
async def service(start_service: StartService, smtp_server: SmtpServer) -> Service:
    return await start_service(smtp_server)


def email_action(**overrides: Any) -> dict[str, Any]:
    action = {"type": "send_email", "to": ["ann.customer@example.com"], "subject": "Your refund",
              "body": "Dear Ann,\n\nYour refund was issued today.\n\nKind regards,\nSupport"}
    action.update(overrides)
    return action


class _LostCompareAndSet:
    rowcount = 0


def cas_always_loses(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every compare-and-set on an approval row loses, as if another writer
    always committed first (`monkeypatch.undo()` ends it): what a caller gets when the
    decision path gives up. Our own code is patched here, not a peer."""
    execute = Tx.execute

    async def losing(self: Tx, statement: Any, parameters: Any = None) -> Any:
        if isinstance(statement, sa.Update) and statement.table is t.approvals:
            return _LostCompareAndSet()
        return await execute(self, statement, parameters)

    monkeypatch.setattr(Tx, "execute", losing)
