"""`countersign trigger` as a subprocess: usage errors are clear exit-2 messages (never a
traceback) that touch nothing, and `--request TEXT --to ADDRESS` starts an agent run."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import API_TOKEN, Service

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def _trigger(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "trigger", *args, env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["COUNTERSIGN_DATA_DIR"] = str(tmp_path / "cli-data")
    env.update(extra)
    return env


@pytest.mark.parametrize("args", [
    ["--request", "Can I return the jacket?"],                                  # no customer: the TypeError
    ["--request", "Can I return the jacket?", "--to", "a@example.com", "--to", "b@example.com"],
    ["--request", "Can I return the jacket?", "--to", "a@example.com", "--subject", "S"],
    ["--to", "a@example.com", "--subject", "S"],                                # no body
], ids=["request_without_to", "request_with_two_to", "request_with_subject", "email_without_body"])
async def test_trigger_usage_errors_are_clear_and_touch_nothing(tmp_path: Path, args: list[str]) -> None:
    # Nothing listens on this URL: a usage error must be reported before any request is tried.
    code, out, err = await _trigger([*args, "--url", "http://127.0.0.1:9"], _env(tmp_path), tmp_path)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "TypeError" not in err, err
    assert err.startswith("countersign trigger: ") and "--to" in err, err
    assert out == ""
    assert not (tmp_path / "cli-data").exists(), "a usage error generated a token into the data dir"


@sqlite_only
async def test_trigger_request_with_to_starts_an_agent_run(service: Service, tmp_path: Path) -> None:
    env = _env(tmp_path, COUNTERSIGN_API_TOKEN=API_TOKEN)
    code, out, err = await _trigger(["--url", service.url, "--request", "Can I return the jacket I bought?",
                                     "--to", "ann@example.com"], env, tmp_path)
    assert code == 0, (out, err)
    accepted = json.loads(out)
    run = await service.run(accepted["id"])
    assert run["kind"] == "agent" and run["customer"]["email"] == "ann@example.com"
    assert run["request"] == "Can I return the jacket I bought?"
