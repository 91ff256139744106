#!/usr/bin/env python3
"""Set-up and run from a fresh clone with nothing but Python 3.11+:

    python3 dev.py demo    # install into .venv, then `countersign demo`: the product with a sample request
    python3 dev.py serve   # install into .venv, then `countersign serve` on embedded defaults
    python3 dev.py test    # install with the test extras, then ruff, mypy and the whole test suite
    python3 dev.py test --no-lint -k NAME   # pytest only (arguments after `test` go to pytest)
    python3 dev.py lint    # ruff and mypy only
    python3 dev.py lock    # re-resolve constraints.txt: the newest versions pyproject.toml allows

Every install takes its exact versions from constraints.txt (the tested set; the README
says how to update it), and is skipped when neither that file nor pyproject.toml has
changed since the last one.
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
CONSTRAINTS = ROOT / "constraints.txt"


def ensure_installed(extra: str | None) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 (dev.py runs under whatever python3 a clone has)
        sys.exit(f"Countersign needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extra}]" if extra else "."
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes() + target.encode()
    ).hexdigest()
    stamp = VENV / f".installed-{extra or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"dev.py: installing {target} into .venv from {CONSTRAINTS.name}", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q", "--no-input"]
    # The pinned pip first: it knows --build-constraint, which pins setuptools for the
    # editable build too (-c alone does not reach the isolated build environment).
    subprocess.run([*pip, "install", "-c", str(CONSTRAINTS), "pip"], check=True)
    # pip's -q does not reach the build backend: setuptools would print its box about
    # editable installs on every install (the project is installed editable on purpose).
    env = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}
    subprocess.run([*pip, "install", "-c", str(CONSTRAINTS), "--build-constraint", str(CONSTRAINTS),
                    "-e", target], check=True, cwd=ROOT, env=env)
    stamp.write_text(digest)


def lint() -> int:
    """ruff, then mypy, as configured in pyproject.toml; the first failure stops."""
    for tool, args in (("ruff", ["check", "--quiet"]), ("mypy", [])):
        code = subprocess.call([str(BIN / tool), *args], cwd=ROOT)
        if code:
            print(f"dev.py: {tool} found problems (see above); `dev.py test --no-lint ...` runs pytest alone")
            return code
    return 0


def lock() -> int:
    """Resolve pyproject.toml afresh in a scratch virtualenv and write its exact set to constraints.txt."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="countersign-lock-") as scratch:
        python = Path(scratch) / ("Scripts" if os.name == "nt" else "bin") / "python"
        venv.EnvBuilder(with_pip=True).create(scratch)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "--no-input"]
        subprocess.run([*pip, "install", "--upgrade", "pip", "setuptools"], check=True)
        env = {**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"}
        subprocess.run([*pip, "install", "-e", ".[test]"], check=True, cwd=ROOT, env=env)
        frozen = subprocess.run([*pip, "freeze", "--all", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
    pins = sorted((line for line in frozen.splitlines() if line and not line.startswith("#")), key=str.lower)
    CONSTRAINTS.write_text(LOCK_HEADER + "\n".join(pins) + "\n")
    print(f"dev.py: wrote {len(pins)} pins to {CONSTRAINTS.name}; run `python3 dev.py test`, then commit it")
    return 0


LOCK_HEADER = """\
# The exact versions Countersign is tested with: dev.py and CI install from this file
# (pip install -c constraints.txt -e .[test]). Regenerate with `python3 dev.py lock`, or
# edit one line to move one package; see the README's Development section.
"""


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
                       "the card tests run the official Adaptive Cards renderer, the Teams demo test the Agents Playground")
    # Playwright drives this browser (executable_path). Its wheel brings no browser and its install
    # downloads none; only `playwright install` would, and nothing here runs it.
    ensure_system_tool(Path("/usr/bin/chromium").exists(), ["chromium"],
                       "the page tests drive a real headless Chromium through Playwright")


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    rest = sys.argv[2:]
    if command in ("serve", "demo"):
        ensure_installed(None)
        return subprocess.call([str(BIN / "countersign"), command, *rest], cwd=ROOT)
    if command == "lock":
        return lock()
    if command == "lint":
        ensure_installed("test")
        return lint()
    if command == "test":
        ensure_installed("test")
        # Lint is skipped only when asked, so CI's `dev.py test -q` always runs it.
        if "--no-lint" in rest:
            rest.remove("--no-lint")
        elif code := lint():
            return code
        ensure_test_tools()
        return subprocess.call([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT)
    print(__doc__)
    return 0 if command == "help" else 2


if __name__ == "__main__":
    raise SystemExit(main())
