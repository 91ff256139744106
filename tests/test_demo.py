"""`countersign demo`, the README's first command, run headlessly as a user would: it
starts, prints where to look, the review page approves over real HTTP, the customer's
email lands in the capture mailbox, Ctrl-C stops it cleanly, and a second run on the same
data directory (with its port taken) works too."""

from __future__ import annotations

import asyncio
import contextlib
import html
import mailbox
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp

from .conftest import free_port
from .console_client import ConsoleClient

CUSTOMER = "ann.customer@example.com"


def _start(data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # No settings of this machine's: the demo's own defaults (MicrosoftAppId would mean real Teams).
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("COUNTERSIGN_", "OPENAI_", "Microsoft"))},
           **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "service", "demo", "--data-dir", str(data_dir), "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


async def _lines_until(proc: subprocess.Popen[str], last: str, timeout: float = 150) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with contextlib.suppress(TimeoutError):
        while True:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), deadline - time.monotonic())
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(last):
                return lines
    proc.kill()  # so that its stderr ends (and the reading thread with it)
    raise AssertionError(f"the demo printed {lines}; stderr: {proc.stderr.read() if proc.stderr else ''}")


async def _customer_email(box: Path, count: int, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [m["Subject"] for m in mailbox.Maildir(box, create=False) if m["To"] == CUSTOMER]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)


async def _approve(link: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(link) as r:
            assert r.status == 200
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert csrf is not None
        async with http.post(link, data={"csrf": csrf.group(1), "action": "approve", "draft_version": "1"}) as r:
            assert r.status == 200 and "Approved" in await r.text()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=30)


async def test_the_demo_runs_end_to_end_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo-data"
    port = free_port()
    proc = _start(data_dir, port)
    try:
        lines = await _lines_until(proc, "Ctrl-C stops it.")
        assert lines[1] == f"Countersign demo running at http://127.0.0.1:{port}", lines
        [review] = [line for line in lines if "Review page" in line]
        link = review.split(": ", 1)[1]
        assert link.startswith(f"http://127.0.0.1:{port}/review/")
        assert any(f"log in with the operator token in {data_dir}/api-token" in line for line in lines)
        assert any("countersign trigger --url" in line for line in lines)
        await _approve(link)
        [subject] = await _customer_email(data_dir / "demo-mailbox", 1)
        # The console, logged in with the operator token the demo names, shows the captured mail.
        console = ConsoleClient(SimpleNamespace(url=f"http://127.0.0.1:{port}"))  # type: ignore[arg-type]
        try:
            await console.login((data_dir / "api-token").read_text().strip())
            status, page, _ = await console.get("/console/mailbox")
            assert status == 200 and f'data-to="{CUSTOMER}"' in page and html.escape(subject) in page
            assert 'data-to="reviewer@demo.example"' in page
        finally:
            await console.close()
        assert _stop(proc) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()

    # Again, on the same data directory, with its port taken by someone else: the next one.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = _start(data_dir, port)
        try:
            lines = await _lines_until(proc, "Ctrl-C stops it.")
            assert lines[0] == f"countersign demo: port {port} is in use; using {port + 1}" or \
                lines[0].startswith(f"countersign demo: port {port} is in use; using "), lines
            [review] = [line for line in lines if "Review page" in line]
            await _approve(review.split(": ", 1)[1])
            assert len(await _customer_email(data_dir / "demo-mailbox", 2)) == 2
            assert _stop(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
