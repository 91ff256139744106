"""What every command does before it touches the data directory or the database, kept
light so that `countersign keys ...` and `audit ...` start in a second (service.app pulls
in the Bot Framework and LlamaIndex): the secrets generated into the data directory on
embedded defaults (API token, callback signing secret, audit key), and a database made
private, migrated (SQLite) and checked."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from .audit import AuditKeyError, ChainKey
from .callback_policy import CallbackConfigError
from .config import Settings
from .private_files import ensure_private_dir, ensure_private_sqlite
from .store.db import Store
from .store.migrate import check_migrated, is_migrated, upgrade

log = logging.getLogger("service.app")


def ensure_api_token(settings: Settings) -> Settings:
    """With no API credential configured, use (or make) a token kept in the data directory.

    The token is written to a file readable only by the owner and never logged: the log
    says where it is."""
    if settings.api_token or settings.webhook_secret:
        return settings
    path = settings.data_dir / "api-token"
    if not path.exists():
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    log.warning("no COUNTERSIGN_API_TOKEN or COUNTERSIGN_WEBHOOK_SECRET set; using the token in %s", path.resolve())
    return settings.model_copy(update={"api_token": SecretStr(path.read_text().strip())})


def ensure_callback_secret(settings: Settings) -> Settings:
    """Callbacks are always signed: with no secret configured, use (or make) one kept in
    the data directory, like the API token. Several processes must share one, so they need
    the setting (or one data directory); the log says where the secret is, never what."""
    return _ensure_secret(settings, "callback_signing_secret", "callback-signing-secret", CallbackConfigError,
                          "callbacks are signed with the secret in %s (give it to your callback receivers; "
                          "several service processes must share one)")


class SessionSecretError(ValueError):
    """The console's session secret cannot be used."""


def ensure_session_secret(settings: Settings) -> Settings:
    """The operator console's cookies are signed: with no COUNTERSIGN_SESSION_SECRET, use (or
    make) one kept in the data directory, as for callbacks."""
    return _ensure_secret(settings, "session_secret", "session-secret", SessionSecretError,
                          "console sessions are signed with the secret in %s (several service processes must "
                          "share one)")


def ensure_webhook_secret(settings: Settings) -> Settings:
    """`countersign demo` triggers its sample run through the signed webhook, as an operations
    system would: with no COUNTERSIGN_WEBHOOK_SECRET, one kept in the data directory."""
    return _ensure_secret(settings, "webhook_secret", "webhook-secret", ValueError,
                          "webhooks are signed with the secret in %s")


def _ensure_secret(settings: Settings, field: str, filename: str, error: type[Exception], used: str) -> Settings:
    if getattr(settings, field):
        return settings
    path = settings.data_dir / filename
    secret = _file_secret(path)
    variable = f"COUNTERSIGN_{field.upper()}"
    if not secret:
        raise error(f"{path.resolve()} is empty; delete it or set {variable}")
    log.warning(f"no {variable} set; {used}", path.resolve())
    return settings.model_copy(update={field: SecretStr(secret)})


def _file_secret(path: Path) -> str:
    """The secret in `path`, made first (random, 0600) if there is none."""
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # made earlier, or by another process starting at the same moment
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


AUDIT_KEY_FILE = "audit-key"


def ensure_audit_key(settings: Settings, *, create: bool = True) -> Settings:
    """The key that chains the audit log: COUNTERSIGN_AUDIT_KEY, or on SQLite (embedded
    defaults) a key generated once into the data directory, readable only by the owner.

    PostgreSQL without the setting is refused: several replicas write one chain and must
    share the key, and a key generated on one machine would not be known to the others."""
    if settings.audit_key is None:
        if not settings.is_sqlite:
            raise AuditKeyError(
                "COUNTERSIGN_AUDIT_KEY is required with PostgreSQL (the same value on every replica, kept outside "
                "the database): python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        path = settings.data_dir / AUDIT_KEY_FILE
        if not path.exists():
            if not create:
                raise AuditKeyError(f"no COUNTERSIGN_AUDIT_KEY and no {path}: cannot check the keyed audit chain")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            log.warning("no COUNTERSIGN_AUDIT_KEY set; generated the audit chain's key into %s", path.resolve())
        settings = settings.model_copy(update={"audit_key": SecretStr(path.read_text().strip())})
    assert settings.audit_key is not None
    ChainKey(settings.audit_key.get_secret_value())  # too short: refused here, at start
    return settings


def audit_key_of(settings: Settings) -> str | None:
    return settings.audit_key.get_secret_value() if settings.audit_key else None


async def prepare_database(settings: Settings, store: Store) -> None:
    if settings.is_sqlite:
        ensure_private_dir(settings.data_dir)
        database = sqlite_file(settings.effective_database_url)
        if database is not None:
            ensure_private_sqlite(database)  # before SQLite makes it (and its -wal/-shm) 0644
        if settings.auto_migrate and not await is_migrated(store.writer_engine):
            await upgrade(store.writer_engine)  # imports Alembic: only when there is something to do
    await check_migrated(store.writer_engine)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None for an in-memory database)."""
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" and not database.startswith("file:") else None
