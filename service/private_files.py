"""The data directory and what the service writes into it are readable by the owner alone:
the database holds customer emails, MIME and references, and the directory holds the
generated credentials.

New directories are made 0700 and files 0600. Existing ones that are looser (made by an
older version, or by a umask of 022) are tightened when the service starts, with a warning
naming each path, so an upgrade closes what was open. Only the data directory itself, the
files directly in it, its `index` tree and the SQLite database with its -wal/-shm/-journal
files are touched: nothing else of a directory the setting might point at.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
# For the `countersign` process as a whole, so what libraries write (SQLite, the index
# persisters) is private too.
UMASK = 0o077
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def ensure_private_dir(path: Path) -> None:
    """Create `path` 0700 (its parents as usual), or tighten it and its files if looser."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass  # another process starting at the same moment
        os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask: be exact
        return
    st = path.stat()
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH) or st.st_uid != os.geteuid():
        # A shared directory (/tmp, another user's): not ours to change, and not private either.
        log.warning("the data directory %s is shared (mode %o, owner uid %d): it is left as it is; point "
                    "COUNTERSIGN_DATA_DIR at a directory of the service's own", path.resolve(),
                    stat.S_IMODE(st.st_mode), st.st_uid)
        return
    make_private(path)
    for child in path.iterdir():
        if child.is_file() and not child.is_symlink():
            make_private(child)
    index = path / "index"
    if index.is_dir() and not index.is_symlink():
        make_private_tree(index, warn=True)


def ensure_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 if missing (before a library such as SQLite opens
    it with 0644 and copies that mode onto its companions), or tighten it if looser."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        make_private(path)
    else:
        os.close(fd)


def ensure_private_sqlite(database: Path) -> None:
    """The SQLite file, 0600 before SQLite first opens it: SQLite gives its -wal and -shm
    files the database file's mode. Companions left looser by an older version are tightened."""
    database.parent.mkdir(parents=True, exist_ok=True)
    ensure_private_file(database)
    for suffix in SQLITE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            make_private(companion)


def make_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700. Directories that already exist are
    left as they are: one the service did not make (say the home directory holding the data
    directory) is not its to tighten; its own data directory is checked at start."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: not ours either
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask: be exact


def make_private_tree(root: Path, *, warn: bool = False) -> None:
    """Directories 0700 and files 0600 under `root` (and `root` itself), e.g. an index a
    library has just persisted with its own modes."""
    for dirpath, _dirnames, filenames in os.walk(root):
        make_private(Path(dirpath), warn=warn)
        for name in filenames:
            make_private(Path(dirpath) / name, warn=warn)


def make_private(path: Path, *, warn: bool = True) -> None:
    """`path` 0700 (a directory) or 0600 (a file) if any group or other bit is set."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
        return
    target = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
    try:
        os.chmod(path, target)
    except PermissionError:  # not ours (a directory made by root for the service): say so, run on
        log.warning("%s is readable by others (mode %o) and cannot be changed by this user; make it %o",
                    path.resolve(), stat.S_IMODE(st.st_mode), target)
        return
    if warn:
        log.warning("%s was readable by others (mode %o); made it %o", path.resolve(), stat.S_IMODE(st.st_mode),
                    target)
