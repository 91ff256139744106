"""The service as a separate OS process (`python -m service serve`), to kill and restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .conftest import AUDIT_KEY


class ServiceProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, *, wait_ready: bool = True, ready_timeout: float = 30, **settings: Any) -> None:
        # Every process of a test shares the audit key (PostgreSQL requires one).
        env = {**os.environ, "COUNTERSIGN_AUDIT_KEY": AUDIT_KEY, **self.env,
               **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in settings.items()}}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log)
        if not wait_ready:  # it may reach the kill point before answering /readyz
            return
        deadline = time.monotonic() + ready_timeout
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                try:
                    async with http.get(self.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "service did not become ready"
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    async def wait_dead(self) -> None:
        assert self.proc is not None
        while self.proc.poll() is None:
            await asyncio.sleep(0.02)
