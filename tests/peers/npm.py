"""Test-only npm packages (tests/cards_js, tests/playground_js): each directory's
package.json pins exact versions and its package-lock.json the whole tree, installed with
`npm ci` from the lock when `node_modules/` does not match it (never at the tests' run time
otherwise). Node.js is needed: the tests fail, not skip, without it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def node_modules_match_lock(directory: Path) -> bool:
    lock = json.loads((directory / "package-lock.json").read_text())
    for path, entry in lock["packages"].items():
        if not path:
            continue
        manifest = directory / path / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text()).get("version") != entry.get("version"):
            return False
    return True


def ensure_npm_packages(directory: Path, why: str) -> str:
    """`node`'s path, once `directory`'s locked packages are installed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js is not installed: {why} needs `node` (18+) and `npm` ({directory.name}). "
                    "Install Node.js; these tests do not skip.", pytrace=False)
    if not node_modules_match_lock(directory):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"`npm` is not installed; it is needed to install {directory} (npm ci)", pytrace=False)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0 or not node_modules_match_lock(directory):
            pytest.fail(f"`npm ci` in {directory} failed:\n{done.stdout}\n{done.stderr}", pytrace=False)
    return node
