"""The `callback` job: a signed POST telling the ops system that its run has ended."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from .jobs import Job, JobHandler, PermanentError, TransientError
from .runs import Runs
from .signing import HEADER, sign
from .store.db import Op

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Callbacks:
    def __init__(self, runs: Runs, session: aiohttp.ClientSession, *, secret: str | None, public_url: str, timeout: float) -> None:
        self.runs = runs
        self.session = session
        self.secret = secret
        self.public_url = public_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def handler(self) -> JobHandler:
        return JobHandler(run=self.run, cancel_with_run=False)

    async def run(self, job: Job) -> Op[None] | None:
        detail = await self.runs.get(job.payload["run_id"])
        url = detail.callback_url
        if not url:
            return None
        body = json.dumps({
            "event": f"run.{job.payload['status']}",
            "run": {
                "id": detail.run.id, "status": detail.run.status.value, "url": f"{self.public_url}/api/runs/{detail.run.id}",
                "summary": detail.run.summary, "failure_reason": detail.run.failure_reason,
                "metadata": detail.run.metadata, "updated_at": detail.run.updated_at.isoformat(),
            },
        }, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "Countersign", "X-Countersign-Job": job.id}
        if self.secret:
            headers[HEADER] = sign(self.secret, int(time.time()), body)
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=self.timeout,
                                         allow_redirects=False) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"callback to {url} failed: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            async def record(tx: Any) -> None:
                tx.audit("callback.delivered", run_id=detail.run.id, actor="system", data={"status": status})
            return record
        if status in RETRYABLE_STATUS:
            raise TransientError(f"callback to {url} answered HTTP {status}", retry_after=retry_after)
        raise PermanentError(f"callback to {url} answered HTTP {status}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
