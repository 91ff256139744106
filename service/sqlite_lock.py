"""One `serve` process per SQLite file.

Several processes could share a SQLite file correctly (the writer takes `BEGIN
IMMEDIATE`), but every one would queue for the one write lock, with `busy_timeout`
stalls instead of group commit, and SQLite on a network file system loses locks
altogether. Replicas need PostgreSQL. A second `serve` on the same file is refused at
start with the first one's pid, through an advisory lock (`flock`) on a file beside the
database that the kernel releases when its holder exits, SIGKILL included: a stale lock
file never keeps the service down. Commands that open the database briefly (`migrate`,
`keys`, `audit`) do not take it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DatabaseInUse(RuntimeError):
    """Another `serve` process holds this SQLite database."""


class SqliteServeLock:
    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".serve-lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DatabaseInUse(
                f"another countersign serve process (pid {holder}) is using the SQLite database "
                f"{self.path.with_name(self.path.name.removesuffix('.serve-lock'))}: one process per SQLite file. "
                "Stop it, give this one its own COUNTERSIGN_DATA_DIR, or run several replicas on PostgreSQL "
                "(COUNTERSIGN_DATABASE_URL=postgresql+asyncpg://...)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None
