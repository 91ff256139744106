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


def ensure_system_tool(present: bool, packages: list[str], why: str) -> None:
    """Install Debian packages the tests need when this machine lacks them (as root, with apt)."""
    import shutil

    if present:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print(f"dev.py: installing {' '.join(packages)} ({why})")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)
        return
    sys.exit(f"dev.py: the tests need {' and '.join(packages)} ({why}); install them with your OS's package manager")


def ensure_test_tools() -> None:
    import glob
    import shutil

    ensure_system_tool(bool(glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")),
                       ["postgresql"], "the tests start a real PostgreSQL server")
    ensure_system_tool(bool(shutil.which("node") and shutil.which("npm")), ["nodejs", "npm"],
                       "the card tests run the official Adaptive Cards renderer")


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    rest = sys.argv[2:]
    if command == "serve":
        ensure_installed(None)
        return subprocess.call([str(BIN / "countersign"), "serve", *rest], cwd=ROOT)
    if command == "test":
        ensure_installed("test")
        ensure_test_tools()
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    raise SystemExit(main())
