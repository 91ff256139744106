#!/usr/bin/env python3
"""Set-up and run from a fresh clone with nothing but Python 3.11+:

    python3 dev.py serve   # install into .venv, then `countersign serve` on embedded defaults
    python3 dev.py test    # install with the test extras, then run the whole test suite

Installs are skipped when pyproject.toml has not changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def ensure_installed(extra: str | None) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Countersign needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extra}]" if extra else "."
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + target.encode()).hexdigest()
    stamp = VENV / f".installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", target], check=True, cwd=ROOT)
    stamp.write_text(digest)


def ensure_postgres_server() -> None:
    """The tests start a real PostgreSQL server; install Debian's if this machine has none."""
    import glob
    import shutil

    if glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("dev.py: installing the PostgreSQL server for the tests (apt-get install postgresql)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"], check=True, env=env)
        return
    sys.exit("dev.py: the tests need PostgreSQL's server binaries (initdb, pg_ctl); install your OS's postgresql package")


def ensure_node() -> None:
    """The Adaptive Card tests run the official renderer (npm `adaptivecards`) under Node."""
    import shutil

    if shutil.which("node") and shutil.which("npm"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("dev.py: installing Node.js for the card renderer tests (apt-get install nodejs npm)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"], check=True, env=env)
        return
    sys.exit("dev.py: the tests need Node.js 18+ and npm (the official Adaptive Cards renderer runs on it)")


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    rest = sys.argv[2:]
    if command == "serve":
        ensure_installed(None)
        return subprocess.call([str(BIN / "countersign"), "serve", *rest], cwd=ROOT)
    if command == "test":
        ensure_installed("test")
        ensure_postgres_server()
        ensure_node()
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    raise SystemExit(main())
