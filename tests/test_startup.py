"""`serve` starts without LlamaIndex, the OpenAI client, the Bot Framework SDK or Alembic, and
the first agent step loads the agent in a thread, never on the event loop (service/agent/loader.py).

Each case runs in a fresh interpreter: this test process has imported all of them already."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import API_TOKEN, AUDIT_KEY, StartService, free_port
from .peers.smtp import SmtpServer

HEAVY = ("llama_index.core", "workflows", "openai", "httpcore", "botbuilder.core", "alembic", "mako")

PROBE = textwrap.dedent("""
    import asyncio, importlib.abc, json, sys, threading

    FIRST = {}  # module -> the thread that imported it first

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in WATCHED and name not in FIRST:
                FIRST[name] = threading.current_thread().name
            return None

    WATCHED = set(json.loads(sys.argv[1]))
    sys.meta_path.insert(0, Watch())

    import aiohttp
    from aiohttp import web
    from service.app import create_app
    from service.config import Settings

    async def main():
        settings = Settings(data_dir=sys.argv[2], api_token=sys.argv[3], audit_key=sys.argv[4], port=int(sys.argv[5]),
                            openai_api_key=None, openai_base_url="", job_poll_seconds=0.05)
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", settings.port)
        await site.start()
        url = f"http://127.0.0.1:{settings.port}"
        at_ready = sorted(FIRST)
        headers = {"Authorization": "Bearer " + sys.argv[3]}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(url + "/readyz") as r:
                assert r.status == 200, await r.text()
            body = {"request": "Can I return my jacket?", "customer": {"email": "ann@example.com"}}
            async with http.post(url + "/api/runs", json=body) as r:
                run_id = (await r.json())["id"]
            for _ in range(1200):
                async with http.get(url + "/api/runs/" + run_id) as r:
                    status = (await r.json())["status"]
                if status != "drafting":
                    break
                await asyncio.sleep(0.05)
        await runner.cleanup()
        print(json.dumps({"at_ready": at_ready, "status": status, "first": FIRST}))

    asyncio.run(main())
""")


def test_serve_is_ready_without_the_agent_stack_and_the_first_step_loads_it_in_a_thread(tmp_path: Path) -> None:
    # A restart, not a first install: migrating needs Alembic.
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path / "data"), "COUNTERSIGN_API_TOKEN": API_TOKEN}
    subprocess.run([sys.executable, "-m", "service", "migrate"], env=env, check=True, capture_output=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), str(tmp_path / "data"), API_TOKEN, AUDIT_KEY, str(free_port())],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["at_ready"] == [], "imported before the service was ready"
    assert seen["status"] == "awaiting_approval"
    loaded = seen["first"]
    # The offline drafter still comes with LlamaIndex, its workflow engine and the OpenAI client.
    assert {"llama_index.core", "workflows", "openai"} <= set(loaded), loaded
    assert all(thread != "MainThread" for thread in loaded.values()), loaded
    assert "botbuilder.core" not in loaded and "alembic" not in loaded


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_agent_that_cannot_be_built_fails_its_runs_with_the_reason(
    start_service: StartService, smtp_server: SmtpServer
) -> None:
    """The model check used to stop `serve`; it now runs when the agent is loaded: every agent
    run fails with the reason, and the service keeps serving the rest."""
    service = await start_service(smtp_server, openai_api_key="sk-test", openai_base_url="", llm_model="no-such-model")
    for _ in range(2):  # the failed load is kept: the second run fails the same way
        accepted = await service.create_run({"request": "Can I return my jacket?",
                                             "customer": {"email": "ann@example.com"}})
        run = await service.wait_status(accepted["id"], "failed", timeout=60)
        assert "the agent could not be loaded" in run["failure_reason"]
        assert "OpenAI does not know the model 'no-such-model'" in run["failure_reason"]
    accepted = await service.create_run({"action": {"type": "send_email", "to": ["ann@example.com"],
                                                    "subject": "Your refund", "body": "Dear Ann,\n\nDone."}})
    assert (await service.run(accepted["id"]))["status"] == "awaiting_approval"


def test_serve_says_where_it_listens_and_where_the_key_is(tmp_path: Path) -> None:
    """On embedded defaults: one line on stdout with the address and the token's file, and
    the token itself nowhere in the output."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env.update(COUNTERSIGN_DATA_DIR=str(tmp_path / "data"), COUNTERSIGN_PORT=str(port))
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    token_file = (tmp_path / "data" / "api-token").resolve()
    assert line.strip() == (f"countersign: listening on http://127.0.0.1:{port} (public URL http://127.0.0.1:{port}); "
                            f"the API token is in {token_file}")
    token = token_file.read_text().strip()
    assert token not in line and token not in err
