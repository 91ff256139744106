"""Callbacks cannot reach inside: the destination rules at intake and at send time, the
connection pinned to the checked addresses, the callback's own signature, and errors, logs
and audit events that carry no address, port, credential or query.

Every attack runs over real HTTP against the running service, with real aiohttp receivers
on loopback; a receiver that must not be reached is listening, so that a callback which
got through would be seen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.api.deps import SERVICES
from service.app import CALLBACKS, create_app
from service.callback_policy import CallbackConfigError, CallbackPolicy, Reach, classify, ip_literal
from service.callbacks import NO_ANSWER, REFUSED, SIGNATURE_HEADER
from service.redact import redact_url, redact_urls_in
from service.signing import HEADER, SignatureError, verify
from service.store import tables as t

from . import conftest
from .conftest import API_TOKEN, WEBHOOK_SECRET, Service, StartService, email_action, free_port
from .processes import ServiceProcess

CALLBACK_SECRET = "test-callback-secret-zyxwvu"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# ---- a real receiver ------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An aiohttp app answering every POST with the next of `answers` (then 200)."""

    host: str
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    answers: list[web.Response] = field(default_factory=list)
    server: TestServer | None = None

    async def start(self) -> Receiver:
        async def hook(request: web.Request) -> web.StreamResponse:
            self.requests.append(Received(request.path, request.query_string, dict(request.headers),
                                          await request.read()))
            return self.answers.pop(0) if self.answers else web.Response(status=200)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hook)
        self.server = TestServer(app, host=self.host, port=self.port or free_port())
        await self.server.start_server(shutdown_timeout=1)
        self.port = self.server.port or 0
        return self

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[..., Any]]:
    started: list[Receiver] = []

    async def start(host: str = "127.0.0.1", port: int = 0) -> Receiver:
        receiver = await Receiver(host, port).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.close()


# ---- helpers ------------------------------------------------------------------------------

async def ended_run(service: Service, callback_url: str, **extra: Any) -> str:
    """A run with this callback URL, cancelled at once: its end queues the callback."""
    accepted = await service.create_run({"action": email_action(), "callback_url": callback_url, **extra})
    status, payload, _ = await service.request("POST", f"/api/runs/{accepted['id']}/cancel", body={})
    assert status == 200, payload
    return accepted["id"]


def callback_job(run: dict[str, Any]) -> dict[str, Any] | None:
    jobs = [j for j in run["jobs"] if j["kind"] == "callback"]
    assert len(jobs) <= 1, jobs
    return jobs[0] if jobs else None


async def settled_callback(service: Service, run_id: str, timeout: float = 15) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run, callback job) once the job is done or dead."""
    run = await service.wait_for(run_id, lambda r: (callback_job(r) or {}).get("status") in ("done", "dead"), timeout)
    job = callback_job(run)
    assert job is not None
    return run, job


async def stored_counts(service: Service) -> dict[str, int]:
    async def q(conn: Any) -> dict[str, int]:
        return {table.name: (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one()
                for table in (t.runs, t.approvals, t.jobs, t.audit_events, t.idempotency_keys)}

    return await service.app[SERVICES].store.read(q)


def recorded_errors(run: dict[str, Any]) -> list[str]:
    """What the run shows about its callback's failure: the job's error and the dead letter's."""
    job = callback_job(run)
    dead = [e["data"]["error"] for e in run["timeline"] if e["event"] == "job.dead"]
    return [job["last_error"] if job else "", *dead]


def assert_no_network_detail(texts: list[str], *ports: int) -> None:
    for text in texts:
        for detail in ("127.0.0.1", "::1", "localhost", "http", "Connect call failed", "Errno", "ssl:",
                       *map(str, ports)):
            assert detail not in text, f"{detail!r} in {text!r}"


# ---- the rules themselves (pure) -------------------------------------------------------------

@pytest.mark.parametrize(("host", "reach"), [
    ("8.8.8.8", Reach.PUBLIC), ("2606:4700::1111", Reach.PUBLIC), ("::ffff:8.8.8.8", Reach.PUBLIC),
    ("64:ff9b::808:808", Reach.PUBLIC),  # NAT64 of a public address (DNS64 networks)
    ("127.0.0.1", Reach.LOOPBACK), ("127.255.0.9", Reach.LOOPBACK), ("::1", Reach.LOOPBACK),
    ("0x7f000001", Reach.LOOPBACK), ("2130706433", Reach.LOOPBACK), ("017700000001", Reach.LOOPBACK),
    ("0177.0.0.1", Reach.LOOPBACK), ("127.1", Reach.LOOPBACK), ("0x7f.1", Reach.LOOPBACK),
    ("[::ffff:127.0.0.1]", Reach.LOOPBACK), ("::ffff:7f00:1", Reach.LOOPBACK),
    ("64:ff9b::7f00:1", Reach.LOOPBACK), ("2002:7f00:1::", Reach.LOOPBACK),  # NAT64 and 6to4 of loopback
    ("10.1.2.3", Reach.PRIVATE), ("172.16.0.1", Reach.PRIVATE), ("172.31.255.255", Reach.PRIVATE),
    ("192.168.1.1", Reach.PRIVATE), ("100.64.0.1", Reach.PRIVATE), ("fd00::1", Reach.PRIVATE),
    ("::ffff:10.0.0.1", Reach.PRIVATE),
    ("169.254.169.254", Reach.METADATA), ("fd00:ec2::254", Reach.METADATA), ("100.100.100.200", Reach.METADATA),
    ("168.63.129.16", Reach.METADATA), ("::ffff:169.254.169.254", Reach.METADATA),
    ("64:ff9b::a9fe:a9fe", Reach.METADATA), ("2852039166", Reach.METADATA),
    ("169.254.1.1", Reach.LINK_LOCAL), ("fe80::1", Reach.LINK_LOCAL), ("fe80::1%eth0", Reach.LINK_LOCAL),
    ("0.0.0.0", Reach.FORBIDDEN), ("0", Reach.FORBIDDEN), ("::", Reach.FORBIDDEN), ("224.0.0.1", Reach.FORBIDDEN),
    ("ff02::1", Reach.FORBIDDEN), ("255.255.255.255", Reach.FORBIDDEN), ("240.0.0.1", Reach.FORBIDDEN),
    ("192.0.2.1", Reach.FORBIDDEN), ("198.18.0.1", Reach.FORBIDDEN), ("fec0::1", Reach.FORBIDDEN),
    ("::7f00:1", Reach.FORBIDDEN), ("2001:db8::1", Reach.FORBIDDEN), ("2001:0:4136:e378::1", Reach.FORBIDDEN),
])
def test_addresses_are_classified(host: str, reach: Reach) -> None:
    address = ip_literal(host)
    assert address is not None
    assert classify(address) is reach


def test_names_are_not_addresses() -> None:
    assert ip_literal("ops.example.com") is None and ip_literal("1e100.net") is None
    assert ip_literal("0x7f000001") == ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize(("entry", "mentions"), [
    ("10.0.0.0/8", "CIDR"), ("169.254.169.254", "metadata"), ("[fd00:ec2::254]", "metadata"), ("fe80::1", "link-local"),
    ("0.0.0.0", "never"), ("https://ops.example.com/", "not a URL"), ("user@ops.example.com", "not a URL"),
    ("ops.example.com:8443", "neither"), ("ops..example.com", "not a host name"), ("*.com", "not a host name"),
    ("bücher.example", "ASCII"), (" ", "empty"),
])
def test_bad_allow_list_entries_are_refused(entry: str, mentions: str) -> None:
    with pytest.raises(CallbackConfigError, match=mentions) as caught:
        CallbackPolicy.from_settings(allow_http=False, allowed_hosts=["ops.example.com", entry])
    assert repr(entry) in str(caught.value)


def test_allow_list_matching() -> None:
    policy = CallbackPolicy.from_settings(allow_http=True,
                                          allowed_hosts=["Ops.Internal.", "*.corp.example", "10.0.0.5"])
    assert policy.check_url("http://ops.internal:8080/hook").allow_listed
    assert policy.check_url("https://OPS.INTERNAL./hook").allow_listed
    assert policy.check_url("https://a.b.corp.example/hook").allow_listed
    assert policy.check_url("http://10.0.0.5/hook").address == ipaddress.ip_address("10.0.0.5")
    for url in ("https://corp.example/", "https://ops.internal.evil.example/", "https://10.0.0.6/",
                "https://evilcorp.example/"):
        with pytest.raises(Exception, match="COUNTERSIGN_CALLBACK_ALLOWED_HOSTS"):
            policy.check_url(url)


def test_urls_are_redacted() -> None:
    assert redact_url("https://user:pw@Ops.Example.com:8443/hook/x?token=s3cret#frag") == \
        "https://ops.example.com:8443/hook/x"
    assert redact_url("http://[::1]:80/a?b=c") == "http://[::1]:80/a"
    assert redact_url("not a url") == "<unparseable URL>" and redact_url("http://h:99999/") == "<unparseable URL>"
    assert redact_urls_in("failed: https://u:p@h.example/x?t=1, then (postgresql+asyncpg://a:b@db/x).") == \
        "failed: https://h.example/x, then (postgresql+asyncpg://db/x)."


# ---- at intake -----------------------------------------------------------------------------

# (URL, text the field's message mentions). Each is refused with 422 naming `callback_url`.
REFUSED_AT_INTAKE: list[tuple[str, str]] = [
    ("http://127.0.0.1:8080/hook", "https"),  # plain http, COUNTERSIGN_CALLBACK_ALLOW_HTTP off
    ("http://ops.example.com/hook", "https"),
    ("https://127.0.0.1:8080/hook", "loopback"),
    ("https://[::1]/hook", "loopback"),
    ("https://0x7f000001/hook", "loopback"),
    ("https://2130706433/hook", "loopback"),
    ("https://017700000001/hook", "loopback"),
    ("https://0177.0.0.1/hook", "loopback"),
    ("https://127.1/hook", "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://[64:ff9b::7f00:1]/hook", "loopback"),
    ("https://10.0.0.5/hook", "private"),
    ("https://172.16.3.4/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://100.64.1.1/hook", "private"),
    ("https://[fd00::1]/hook", "private"),
    ("https://169.254.169.254/latest/meta-data/", "metadata"),
    ("https://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("https://[::ffff:169.254.169.254]/", "metadata"),
    ("https://169.254.10.10/", "link-local"),
    ("https://[fe80::1]/", "link-local"),
    ("https://0.0.0.0/", "never"),
    ("https://224.0.0.1/", "never"),
    ("https://user:pw@ops.example.com/hook", "user name or password"),
    ("https://user@ops.example.com/hook", "user name or password"),
    ("https://:pw@ops.example.com/hook", "user name or password"),
    ("https://ops.example.com:0/hook", "port"),
]


@SQLITE_ONLY
async def test_forbidden_callback_urls_are_refused_at_intake(start_service: StartService) -> None:
    service = await start_service(None, worker_concurrency=0)
    before = await stored_counts(service)
    for url, mentions in REFUSED_AT_INTAKE:
        for auth in ("token", "webhook"):
            status, payload, headers = await service.request(
                "POST", "/api/runs", body={"action": email_action(), "callback_url": url}, auth=auth,
                headers={"Idempotency-Key": f"k-{auth}-{url}"[:255]})
            assert status == 422, (url, payload)
            assert headers["Content-Type"].startswith("application/problem+json")
            assert payload["status"] == 422 and payload["request_id"] == headers["X-Request-Id"]
            errors = [e for e in payload["errors"] if e["field"] == "callback_url"]
            assert errors and mentions in errors[0]["message"], (url, payload)
            assert "pw" not in json.dumps(payload), payload  # the answer does not echo credentials
    assert await stored_counts(service) == before
    status, page, _ = await service.request("GET", "/api/runs")
    assert status == 200 and page["items"] == []
    # A host name cannot be judged yet (its DNS may change): it is accepted here, and judged
    # on its addresses when the callback is sent (the tests below).
    for url in ("https://ops.example.com/hook?ticket=42", "https://localhost/hook", "https://8.8.8.8/hook"):
        await service.create_run({"action": email_action(), "callback_url": url})


@SQLITE_ONLY
async def test_the_allow_list_is_enforced_at_intake(start_service: StartService) -> None:
    service = await start_service(None, worker_concurrency=0, callback_allowed_hosts=["ops.example.com", "10.0.0.5"])
    before = await stored_counts(service)
    for url, mentions in [("https://other.example.com/hook", "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS"),
                          ("https://8.8.8.8/hook", "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS"),
                          ("https://10.0.0.6/hook", "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS"),
                          ("http://ops.example.com/hook", "https"),
                          ("https://u:p@ops.example.com/hook", "user name")]:
        status, payload, _ = await service.request("POST", "/api/runs",
                                                   body={"action": email_action(), "callback_url": url})
        assert status == 422 and any(e["field"] == "callback_url" and mentions in e["message"]
                                     for e in payload["errors"]), (url, payload)
    assert await stored_counts(service) == before
    # Listed: a private address on purpose.
    await service.create_run({"action": email_action(), "callback_url": "https://10.0.0.5/hook"})
    await service.create_run({"action": email_action(), "callback_url": "https://ops.example.com/hook"})


@SQLITE_ONLY
async def test_settings_that_cannot_work_stop_the_service(tmp_path: Path, db_url: str) -> None:
    for overrides, mentions in [
        ({"callback_allowed_hosts": ["169.254.169.254"]}, "metadata"),
        ({"callback_allowed_hosts": ["10.0.0.0/8"]}, "CIDR"),
        ({"callback_signing_secret": WEBHOOK_SECRET}, "must differ"),
        ({"callback_signing_secret": API_TOKEN}, "must differ"),
    ]:
        with pytest.raises(CallbackConfigError, match=mentions):
            create_app(conftest.test_settings(tmp_path, db_url, None, **overrides))
    # And `serve` says so and exits 2, before listening.
    env = {**os.environ, "COUNTERSIGN_DATA_DIR": str(tmp_path / "serve"), "COUNTERSIGN_API_TOKEN": API_TOKEN,
           "COUNTERSIGN_PORT": str(free_port()), "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS": '["fd00:ec2::254"]'}
    result = subprocess.run([sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS entry 'fd00:ec2::254' is a cloud metadata address" in result.stderr


# ---- at send time -----------------------------------------------------------------------------

@SQLITE_ONLY
async def test_a_name_resolving_to_loopback_is_refused_and_never_contacted(
    start_service: StartService, receivers: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """`localhost` is in /etc/hosts everywhere; the receiver listens on every address it
    resolves to, so a callback that got through would arrive."""
    caplog.set_level(logging.DEBUG)
    receiver = await receivers("localhost")
    service = await start_service(None, callback_allow_http=True, callback_signing_secret=CALLBACK_SECRET)
    run_id = await ended_run(service, receiver.url("/hook?token=q-s3cret", host="localhost"))
    run, job = await settled_callback(service, run_id)
    assert job["status"] == "dead" and job["attempts"] == 1  # a refusal is not retried
    assert job["last_error"] == f"PermanentError: {REFUSED}"
    dead = [e for e in run["timeline"] if e["event"] == "job.dead"]
    assert [e["data"]["error"] for e in dead] == [job["last_error"]]
    assert_no_network_detail(recorded_errors(run), receiver.port)
    assert "127.0.0.1" not in json.dumps(run)
    await asyncio.sleep(0.3)
    assert receiver.requests == []
    # The log says why, with the URL redacted, and never the address the name resolved to.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("service")]
    refused = [m for m in ours if "refused" in m and run_id in m]
    assert refused and "loopback" in refused[0] and f"http://localhost:{receiver.port}/hook" in refused[0]
    for message in ours:
        assert "127.0.0.1" not in message and "q-s3cret" not in message, message


@SQLITE_ONLY
async def test_names_resolving_inside_are_refused(start_service: StartService) -> None:
    """No DNS here answers with a private or metadata address for a public-looking name, so
    the service's resolution function (the `Callbacks.lookup` seam) answers instead; the
    policy and everything after it are the real ones. Refused destinations are never
    connected to (none of these addresses exists here; the refusal comes first)."""
    service = await start_service(None, callback_signing_secret=CALLBACK_SECRET)
    answers = {
        "private.example.com": ["10.0.0.7"], "shared.example.com": ["100.64.0.9"],
        "metadata.example.com": ["169.254.169.254"], "aws6.example.com": ["fd00:ec2::254"],
        "mapped.example.com": ["::ffff:127.0.0.1"], "nat64.example.com": ["64:ff9b::a00:1"],
        "mixed.example.com": ["8.8.8.8", "10.0.0.7"],  # one bad answer refuses the host
        "ula.example.com": ["fd12:3456::1"], "zero.example.com": ["0.0.0.0"],
    }
    asked: list[tuple[str, int]] = []

    async def lookup(host: str, port: int) -> list[Any]:
        asked.append((host, port))
        return [ipaddress.ip_address(a) for a in answers[host]]

    service.app[CALLBACKS].lookup = lookup
    runs = {host: await ended_run(service, f"https://{host}:8443/hook") for host in answers}
    for host, run_id in runs.items():
        run, job = await settled_callback(service, run_id)
        assert job["status"] == "dead" and job["attempts"] == 1, (host, job)
        assert job["last_error"] == f"PermanentError: {REFUSED}", (host, job)
        for address in answers[host]:
            assert address not in json.dumps(run), (host, address)
    assert sorted(asked) == sorted((host, 8443) for host in answers)


@SQLITE_ONLY
async def test_the_connection_goes_to_the_address_that_was_checked(
    start_service: StartService, receivers: Callable[..., Any]
) -> None:
    """DNS rebinding: the name answers one address when checked and another when connected.

    The attack in the issue answers a public address first and loopback after; no public
    address can be reached from here, so the first answer is a loopback receiver the
    allow-list admits (the `Callbacks.lookup` seam answers for the name) and every later
    answer is a second receiver on 127.0.0.2. A service that resolved again to connect (or
    let aiohttp resolve the name) would reach the second receiver, or nobody."""
    checked = await receivers("127.0.0.1")
    rebound = await receivers("127.0.0.2", checked.port)
    service = await start_service(None, callback_allow_http=True, callback_allowed_hosts=["rebind.test"],
                                  callback_signing_secret=CALLBACK_SECRET)
    asked: list[tuple[str, int]] = []

    async def lookup(host: str, port: int) -> list[Any]:
        asked.append((host, port))
        return [ipaddress.ip_address("127.0.0.1" if len(asked) == 1 else "127.0.0.2")]

    service.app[CALLBACKS].lookup = lookup
    run_id = await ended_run(service, f"http://rebind.test:{checked.port}/hook")
    _, job = await settled_callback(service, run_id)
    assert job["status"] == "done", job
    assert asked == [("rebind.test", checked.port)]
    assert len(checked.requests) == 1 and rebound.requests == []
    assert checked.requests[0].headers["Host"] == f"rebind.test:{checked.port}"  # the name, not the address


@SQLITE_ONLY
async def test_the_allow_list_admits_a_local_receiver_and_callbacks_have_their_own_signature(
    start_service: StartService, receivers: Callable[..., Any]
) -> None:
    receiver = await receivers("127.0.0.1")
    service = await start_service(None, callback_allow_http=True, callback_allowed_hosts=["127.0.0.1", "localhost"],
                                  callback_signing_secret=CALLBACK_SECRET)
    by_address = await ended_run(service, receiver.url("/hook?token=q-s3cret#part"))
    by_name = await ended_run(service, receiver.url("/named", host="localhost"))
    for run_id in (by_address, by_name):
        run, job = await settled_callback(service, run_id)
        assert job["status"] == "done" and "callback.delivered" in [e["event"] for e in run["timeline"]]
    assert sorted(r.path for r in receiver.requests) == ["/hook", "/named"]
    assert next(r for r in receiver.requests if r.path == "/hook").query == "token=q-s3cret"
    run = await service.run(by_address)
    assert run["callback_url"] == f"http://127.0.0.1:{receiver.port}/hook"  # shown without its query

    for received in receiver.requests:
        payload = json.loads(received.body)
        assert payload["event"] == "run.cancelled"
        signature = received.headers[SIGNATURE_HEADER]
        verify(CALLBACK_SECRET, signature, received.body, now=time.time(), tolerance=300)
        with pytest.raises(SignatureError):
            verify(WEBHOOK_SECRET, signature, received.body, now=time.time(), tolerance=300)
        assert HEADER not in received.headers
        assert "Authorization" not in received.headers

    # What a receiver holds opens nothing: the callback's body and signature, replayed to the
    # ops API under either header, are refused and create nothing.
    received = receiver.requests[0]
    before = await stored_counts(service)
    job_id = received.headers["X-Countersign-Job"]
    for header in (HEADER, SIGNATURE_HEADER):
        for path in ("/api/runs", f"/api/jobs/{job_id}/retry"):
            status, payload, _ = await service.request("POST", path, raw=received.body, auth="none",
                                                       headers={header: received.headers[SIGNATURE_HEADER]})
            assert status == 401, (header, path, payload)
    assert await stored_counts(service) == before


@SQLITE_ONLY
async def test_without_a_secret_callbacks_are_signed_with_a_generated_one(
    start_service: StartService, receivers: Callable[..., Any], tmp_path: Path
) -> None:
    receiver = await receivers("127.0.0.1")
    service = await start_service(None, callback_allow_http=True, callback_allowed_hosts=["127.0.0.1"],
                                  callback_signing_secret=None)
    path = tmp_path / "data" / "callback-signing-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    assert len(secret) >= 32 and secret not in (WEBHOOK_SECRET, API_TOKEN)
    _, job = await settled_callback(service, await ended_run(service, receiver.url()))
    assert job["status"] == "done"
    received = receiver.requests[0]
    verify(secret, received.headers[SIGNATURE_HEADER], received.body, now=time.time(), tolerance=300)


@SQLITE_ONLY
async def test_failures_are_recorded_without_network_detail(
    start_service: StartService, receivers: Callable[..., Any]
) -> None:
    receiver = await receivers("127.0.0.1")
    receiver.answers = [web.Response(status=404),
                        web.Response(status=302, headers={"Location": receiver.url("/final")}),
                        web.Response(status=503, headers={"Retry-After": "0"})]
    closed = free_port()
    service = await start_service(None, callback_allow_http=True, callback_allowed_hosts=["127.0.0.1"],
                                  callback_signing_secret=CALLBACK_SECRET, job_max_attempts=2)
    not_found = await ended_run(service, receiver.url("/gone"))
    _, job = await settled_callback(service, not_found)
    assert job["status"] == "dead"
    assert job["last_error"] == "PermanentError: callback failed: the receiver answered HTTP 404"
    redirected = await ended_run(service, receiver.url("/moved"))
    _, job = await settled_callback(service, redirected)
    assert job["last_error"] == ("PermanentError: callback failed: the receiver answered HTTP 302 "
                                 "(redirects are not followed)")
    assert [r.path for r in receiver.requests] == ["/gone", "/moved"]  # /final never asked for
    unavailable = await ended_run(service, receiver.url("/busy"))
    _, job = await settled_callback(service, unavailable)
    assert job["status"] == "done" and job["attempts"] == 2  # 503 then 200

    nobody = await ended_run(service, f"http://127.0.0.1:{closed}/hook")
    run, job = await settled_callback(service, nobody)
    assert (job["status"], job["attempts"]) == ("dead", 2)
    assert job["last_error"] == f"TransientError: {NO_ANSWER}"
    assert_no_network_detail(recorded_errors(run), closed)


async def test_old_runs_with_credentials_in_their_url_are_refused_and_never_shown(
    start_service: StartService, receivers: Callable[..., Any], db_url: str
) -> None:
    """A run stored before user names and passwords were refused (written into the store
    directly, as an older version did) is not called, and its URL is shown redacted."""
    receiver = await receivers("127.0.0.1")
    service = await start_service(None, callback_allow_http=True, callback_allowed_hosts=["127.0.0.1"],
                                  callback_signing_secret=CALLBACK_SECRET)
    old_url = receiver.url("/hook?token=old-s3cret").replace("http://", "http://olduser:oldpw@")
    accepted = await service.create_run({"action": email_action()})

    async def backdate(tx: Any) -> None:
        await tx.execute(t.runs.update().where(t.runs.c.id == accepted["id"]).values(callback_url=old_url))
        # And a dead job whose error quoted the URL, as errors used to.
        now = datetime.now(timezone.utc)
        tx.insert(t.jobs, dict(id="00000000-0000-4000-8000-00000000dead", kind="callback", run_id=accepted["id"],
                               payload={"run_id": accepted["id"], "status": "completed"}, status="dead", attempts=8,
                               max_attempts=8, due_at=now, leased_until=None, lease_token=None,
                               last_error=f"TransientError: callback to {old_url} failed: ClientConnectorError",
                               created_at=now, updated_at=now, finished_at=now))

    await service.app[SERVICES].store.write(backdate)
    status, payload, _ = await service.request("POST", f"/api/runs/{accepted['id']}/cancel", body={})
    assert status == 200, payload
    run = await service.wait_for(accepted["id"], lambda r: any(
        j["status"] == "dead" and j["id"] != "00000000-0000-4000-8000-00000000dead" for j in r["jobs"]))
    new_job = next(j for j in run["jobs"] if j["id"] != "00000000-0000-4000-8000-00000000dead")
    assert new_job["last_error"] == f"PermanentError: {REFUSED}" and new_job["attempts"] == 1
    assert run["callback_url"] == f"http://127.0.0.1:{receiver.port}/hook"
    status, dead, _ = await service.request("GET", f"/api/jobs?run_id={accepted['id']}&status=dead")
    for text in (json.dumps(run), json.dumps(dead)):
        assert "oldpw" not in text and "olduser" not in text and "old-s3cret" not in text
    assert receiver.requests == []


# ---- logs and the audit log, as a separate process writes them ----------------------------------

async def test_logs_and_audit_export_hold_no_credentials_or_queries(
    tmp_path: Path, receivers: Callable[..., Any]
) -> None:
    """`countersign serve` at debug level, every kind of callback outcome, then the log file
    and `countersign audit export` are searched for the credentials and queries."""
    receiver = await receivers("127.0.0.1")
    receiver.answers = [web.Response(status=302, headers={"Location": receiver.url("/final?token=loc-s3cret")})]
    port, closed = free_port(), free_port()
    data = tmp_path / "data"
    env = {"COUNTERSIGN_DATA_DIR": str(data), "COUNTERSIGN_API_TOKEN": API_TOKEN, "COUNTERSIGN_PORT": str(port),
           "COUNTERSIGN_LOG_LEVEL": "DEBUG", "COUNTERSIGN_CALLBACK_SIGNING_SECRET": CALLBACK_SECRET,
           "COUNTERSIGN_CALLBACK_ALLOW_HTTP": "true", "COUNTERSIGN_CALLBACK_ALLOWED_HOSTS": '["127.0.0.1"]',
           "COUNTERSIGN_JOB_POLL_SECONDS": "0.05", "COUNTERSIGN_JOB_BACKOFF_BASE_SECONDS": "0.05",
           "COUNTERSIGN_JOB_BACKOFF_MAX_SECONDS": "0.2", "COUNTERSIGN_JOB_MAX_ATTEMPTS": "2"}
    log_file = tmp_path / "service.log"
    service = ServiceProcess(env, port, log_file)
    await service.start()
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async def end(url: str) -> str:
                async with http.post(service.url + "/api/runs",
                                     json={"action": email_action(), "callback_url": url}) as r:
                    assert r.status == 202, await r.text()
                    run_id = (await r.json())["id"]
                async with http.post(f"{service.url}/api/runs/{run_id}/cancel", json={}) as r:
                    assert r.status == 200, await r.text()
                return run_id

            runs = [await end(receiver.url("/moved?token=redirect-s3cret#frag-s3cret")),
                    await end(receiver.url("/ok?token=ok-s3cret")),
                    await end(f"http://127.0.0.1:{closed}/hook?token=closed-s3cret")]
            # The old run: stored with credentials by an earlier version, then cancelled.
            async with http.post(service.url + "/api/runs", json={"action": email_action()}) as r:
                old = (await r.json())["id"]
            engine = sa.create_engine(f"sqlite:///{data / 'countersign.db'}")
            with engine.begin() as conn:
                conn.execute(t.runs.update().where(t.runs.c.id == old).values(
                    callback_url=receiver.url("/old?token=old-s3cret").replace("http://", "http://olduser:oldpw@")))
            engine.dispose()
            async with http.post(f"{service.url}/api/runs/{old}/cancel", json={}) as r:
                assert r.status == 200
            runs.append(old)
            deadline = time.monotonic() + 20
            for run_id in runs:
                while True:
                    async with http.get(f"{service.url}/api/runs/{run_id}") as r:
                        run = await r.json()
                    job = callback_job(run)
                    if job and job["status"] in ("done", "dead"):
                        break
                    assert time.monotonic() < deadline, run
                    await asyncio.sleep(0.05)
                assert "s3cret" not in json.dumps(run) and "oldpw" not in json.dumps(run)
            async with http.get(f"{service.url}/api/audit?limit=5000") as r:
                assert r.status == 200
                audit_answer = await r.text()
    finally:
        service.kill()
        await service.wait_dead()
    assert sorted(r.path for r in receiver.requests) == ["/moved", "/ok"]
    exported = subprocess.run([sys.executable, "-m", "service", "audit", "export", "--format", "jsonl"],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {"job.dead", "callback.delivered"} <= {e["kind"] for e in events}
    log = log_file.read_text()
    assert "refused" in log and f"http://127.0.0.1:{receiver.port}/old" in log  # redacted, but there
    for text in (exported.stdout, audit_answer, log):
        for secret in ("s3cret", "oldpw", "olduser", CALLBACK_SECRET, API_TOKEN):
            assert secret not in text, secret
