"""The `callback` job: a signed POST telling the ops system that its run has ended.

The destination is checked by `callback_policy` when the callback is sent: the host name is
resolved here, every address judged, and the connection made to those addresses only (an
aiohttp resolver that answers with them), so a DNS answer that changes between the check
and the connection (rebinding) changes nothing. The Host header, TLS SNI and certificate
check stay on the host name. Redirects are not followed and no proxy is used.

What the run records is "refused" or "failed" (with the HTTP status when there was an
answer), never an address, a port or an OS error: a caller who reads its run must not learn
what the service's network looks like. The detail goes to the log at debug level, with the
URL redacted; a refused destination is logged with the reason, never its addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from . import metrics
from .callback_policy import CallbackPolicy, CallbackRefused, Destination, IPAddress, normalise_host
from .jobs import Job, JobHandler, PermanentError, TransientError
from .redact import redact_url, redact_urls_in
from .runs import CALLBACK_JOB, Runs
from .signing import sign
from .store.db import Op

# Not the inbound X-Countersign-Signature, and never the webhook secret: a receiver holds
# nothing that the ops API accepts.
SIGNATURE_HEADER = "X-Countersign-Callback-Signature"
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
REFUSED = "callback refused: the callback policy does not allow this destination"
NO_ANSWER = "callback failed: no HTTP answer from the receiver"

log = logging.getLogger(__name__)

# host, port -> the addresses the name resolves to
Lookup = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_lookup(host: str, port: int) -> list[IPAddress]:
    """The system resolver, through the loop (never blocking it)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class PinnedResolver(AbstractResolver):
    """Answers for one host with the addresses that were checked, and for nothing else."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if normalise_host(host) != self.host:
            raise OSError(f"the callback connection asked for {host!r}, which was not checked")
        return [ResolveResult(hostname=host, host=str(a), port=port,
                              family=socket.AF_INET6 if a.version == 6 else socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
                for a in self.addresses]

    async def close(self) -> None:
        pass


class Callbacks:
    def __init__(self, runs: Runs, policy: CallbackPolicy, *, secret: str, public_url: str, timeout: float,
                 lookup: Lookup = system_lookup) -> None:
        self.runs = runs
        self.policy = policy
        self.secret = secret
        self.public_url = public_url
        self.timeout = timeout
        self.lookup = lookup  # a seam: the tests answer for names no DNS here can give

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
        shown = redact_url(url)
        try:
            async with asyncio.timeout(self.timeout):
                destination, addresses = await self._destination(url, shown, detail.run.id)
                status, retry_after = await self._post(url, destination, addresses, body, job.id)
        except (PermanentError, TransientError):
            raise
        except Exception as exc:
            # The detail names addresses and ports: the log only, at debug.
            if not isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError)):
                log.warning("callback for run %s to %s failed unexpectedly (%s)", detail.run.id, shown,
                            type(exc).__name__)
            log.debug("callback for run %s to %s got no answer: %s: %s", detail.run.id, shown,
                      type(exc).__name__, redact_urls_in(str(exc)))
            raise TransientError(NO_ANSWER) from None
        if 200 <= status < 300:
            accepted_at = time.monotonic()

            async def record(tx: Any) -> None:
                tx.after_commit(metrics.side_effect_recorded(CALLBACK_JOB, accepted_at))
                tx.audit("callback.delivered", run_id=detail.run.id, actor="system", data={"status": status})
            return record
        if status in RETRYABLE_STATUS:
            raise TransientError(f"callback failed: the receiver answered HTTP {status}", retry_after=retry_after)
        note = " (redirects are not followed)" if 300 <= status < 400 else ""
        raise PermanentError(f"callback failed: the receiver answered HTTP {status}{note}")

    async def _destination(self, url: str, shown: str, run_id: str) -> tuple[Destination, list[IPAddress]]:
        try:
            destination = self.policy.check_url(url)
            if destination.address is not None:
                return destination, [destination.address]
            addresses = await self.lookup(destination.host, destination.port)
            if not addresses:
                raise OSError("the host name resolved to no address")
            self.policy.admit(destination, addresses)
        except CallbackRefused as exc:
            # Why, but not where: the reason names a kind of address, never one.
            log.info("callback for run %s to %s refused: the URL %s", run_id, shown, exc)
            raise PermanentError(REFUSED) from None
        return destination, addresses

    async def _post(self, url: str, destination: Destination, addresses: list[IPAddress], body: bytes,
                    job_id: str) -> tuple[int, float | None]:
        headers = {"Content-Type": "application/json", "User-Agent": "Countersign", "X-Countersign-Job": job_id,
                   SIGNATURE_HEADER: sign(self.secret, int(time.time()), body)}
        # A connector per callback: its resolver knows only this destination's checked
        # addresses, and no connection outlives the check that admitted it.
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(destination.host, addresses),
                                         use_dns_cache=False, force_close=True)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                return response.status, _retry_after(response.headers.get("Retry-After"))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff
