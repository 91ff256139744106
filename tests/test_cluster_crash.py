"""Three `countersign serve` replicas on one real PostgreSQL; the replica holding a delivery is
SIGKILLed at a named point of the SMTP transaction, a surviving replica takes its work over,
and the dead one is started again on the same database afterwards.

The SMTP server (aiosmtpd, STARTTLS + AUTH) tells which replica a session comes from by the
client's TCP port (the process owning that socket), and its hooks hold or kill that replica:

(a) at RCPT TO, before the server accepted the message: no duplicate, nothing audited as an
    interrupted re-send;
(b) after the server's 250 for DATA, before the service committed `sent`: the test holds a row
    lock on the delivery, so the service's record of the 250 waits; the replica is killed
    while PostgreSQL shows it waiting. Exactly one duplicate, exactly one
    `delivery.resent_after_interruption` audit event naming it;
(c) at RCPT TO, held, while a burst of 20 racing decisions is in flight across the replicas:
    the holder is killed halfway through the burst. No duplicate.

Before a kill, the test waits until the victim has no other message between the server's
250 and its committed `sent` (its new transactions are held at RCPT), so that the only
copy in the RFC 1047 window is the one the case puts there. No timing assertions; the
deadlines only keep a broken build from hanging.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.decisions import SEND_EMAIL_JOB

from .conftest import API_TOKEN, email_action, free_port, migrate_database_sync
from .peers.smtp import SmtpServer
from .processes import ServiceProcess

REPLICAS = 3
RUNS = 9  # (a) and (b)
BURST_RUNS = 10  # (c): 20 racing decisions at once, after FIRST_RUNS
FIRST_RUNS = 4
LEASE_SECONDS = "3"  # test-sized (a takeover waits for it); heartbeats renew it every lease/3
RESENT = "delivery.resent_after_interruption"
DEADLINE = 90.0
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)


def socket_owner(port: int, peer_port: int, pids: dict[int, int]) -> int | None:
    """Which of `pids` ({pid: index}) owns the TCP socket 127.0.0.1:port -> :peer_port."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and int(cols[2].rsplit(":", 1)[1], 16) == peer_port:
                    inode = cols[9]
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for pid, index in pids.items():
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == wanted:
                    return index
            except OSError:
                continue
    return None


@dataclass
class Accepted:
    replica: int
    message_id: str
    recipient: str


@dataclass
class Cluster:
    """The replicas, the SMTP server's view of them, and the kill choreography."""

    services: list[ServiceProcess]
    smtp: SmtpServer
    engine: AsyncEngine
    loop: asyncio.AbstractEventLoop
    case: str
    trigger_at: int  # the n-th RCPT (a, c) or DATA (b) seen by the server
    rcpts: int = 0
    datas: int = 0
    fired: bool = False
    frozen: int | None = None  # the victim: its new transactions are held at RCPT
    released: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)  # (c): the victim is held at RCPT
    killing: int | None = None  # set just before the SIGKILL
    killed: int | None = None  # set once the process is gone
    target_recipient: str | None = None
    target_message_id: str | None = None
    recipient_of: dict[int, str] = field(default_factory=dict)  # client port -> recipient
    past_rcpt: dict[int, set[int]] = field(default_factory=lambda: collections.defaultdict(set))
    accepted: list[Accepted] = field(default_factory=list)
    lock_conn: AsyncConnection | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    # -- which replica is this SMTP session? ------------------------------------------------

    def replica_of(self, peer: tuple[str, int]) -> int | None:
        """None: the client is gone (a killed replica's last bytes, read after its death)."""
        pids = {s.proc.pid: i for i, s in enumerate(self.services) if s.proc and s.proc.poll() is None}
        return socket_owner(peer[1], self.smtp.port, pids)

    # -- hooks (run on this loop; bridged from the SMTP server's thread) --------------------

    def install(self) -> None:
        def bridge(hook: Callable[[tuple[str, int], Any], Awaitable[str | None]]) -> Callable[[Any, Any], Any]:
            async def on_smtp_thread(session: Any, arg: Any) -> str | None:
                peer = tuple(session.peer[:2])
                return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._guarded(hook, peer, arg), self.loop))
            return on_smtp_thread

        self.smtp.handler.on_rcpt_session = bridge(self.on_rcpt)
        self.smtp.handler.on_message = bridge(self.on_message)

    async def _guarded(self, hook: Callable[..., Awaitable[str | None]], peer: Any, arg: Any) -> str | None:
        try:
            return await hook(peer, arg)
        except asyncio.CancelledError:  # the client hung up (a killed replica's session)
            if self.killing is None:
                self.errors.append(AssertionError(f"{hook.__name__} {peer} {arg!r}: the client hung up before any kill"))
            raise
        except BaseException as exc:  # surfaced by the test, not swallowed by aiosmtpd
            self.errors.append(exc)
            raise

    async def on_rcpt(self, peer: tuple[str, int], address: str) -> str | None:
        replica = self.replica_of(peer)
        if replica is None:
            return "451 4.3.0 connection lost"
        if self.frozen == replica:
            await self.released.wait()
            return "451 4.3.0 connection lost"
        self.rcpts += 1
        if self.case in ("a", "c") and not self.fired and self.rcpts == self.trigger_at:
            self.fired, self.frozen, self.target_recipient = True, replica, address
            if self.case == "a":
                self.tasks.append(asyncio.create_task(self.kill_when_quiet(replica)))
            else:
                self.held.set()  # the test starts the burst and kills during it
            await self.released.wait()
            return "451 4.3.0 connection lost"
        self.recipient_of[peer[1]] = address
        self.past_rcpt[replica].add(peer[1])
        return None

    async def on_message(self, peer: tuple[str, int], content: bytes) -> str | None:
        replica = self.replica_of(peer)
        if replica is None:
            return "451 4.3.0 connection lost"
        match = MESSAGE_ID.search(content)
        assert match, content[:500]
        message_id = match.group(1).decode()
        recipient = self.recipient_of.get(peer[1], "")
        self.datas += 1
        if self.case == "b" and not self.fired and self.datas == self.trigger_at:
            self.fired, self.frozen = True, replica
            self.target_recipient, self.target_message_id = recipient, message_id
            self.past_rcpt[replica].discard(peer[1])
            await self.wait_quiet(replica)
            # Lock the delivery's row, then let the server store the message and answer 250:
            # the service's record of that 250 waits on the lock until the replica is killed.
            self.lock_conn = await self.engine.connect()
            await self.lock_conn.begin()
            rows = (await self.lock_conn.execute(sa.text("SELECT id FROM deliveries WHERE message_id = :m FOR UPDATE"),
                                                 {"m": message_id})).all()
            assert len(rows) == 1, message_id
            self.tasks.append(asyncio.create_task(self.kill_when_blocked(replica)))
        self.past_rcpt[replica].discard(peer[1])
        self.accepted.append(Accepted(replica, message_id, recipient))
        return None

    # -- the kill ---------------------------------------------------------------------------

    async def wait_quiet(self, replica: int) -> None:
        """Until no other message of `replica` is between RCPT and its committed `sent`."""
        deadline = time.monotonic() + 20
        while True:
            pending = [a.message_id for a in self.accepted if a.replica == replica]
            unsent = 0
            if pending:
                async with self.engine.connect() as conn:
                    unsent = (await conn.execute(sa.text(
                        "SELECT count(*) FROM deliveries WHERE message_id = ANY(:m) AND status <> 'sent'"),
                        {"m": pending})).scalar_one()
            if not self.past_rcpt[replica] and unsent == 0:
                return
            assert time.monotonic() < deadline, (f"replica {replica} never went quiet: in transactions "
                                                 f"{self.past_rcpt[replica]}, {unsent} of {pending} not recorded as sent")
            await asyncio.sleep(0.02)

    async def kill(self, replica: int) -> None:
        self.killing = replica
        self.services[replica].kill()
        await self.services[replica].wait_dead()
        self.killed = replica
        self.released.set()

    async def kill_when_quiet(self, replica: int) -> None:
        try:
            await self.wait_quiet(replica)
            await self.kill(replica)
        except BaseException as exc:
            self.errors.append(exc)
            self.released.set()

    async def kill_when_blocked(self, replica: int) -> None:
        try:
            assert self.lock_conn is not None
            me = (await self.lock_conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            deadline = time.monotonic() + DEADLINE
            async with self.engine.connect() as conn:
                while not (await conn.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"),
                        {"me": me})).scalar_one():
                    assert time.monotonic() < deadline, "the service never tried to record the accepted message"
                    await asyncio.sleep(0.02)
            await self.kill(replica)
            await self.lock_conn.rollback()
            await self.lock_conn.close()
        except BaseException as exc:
            self.errors.append(exc)
            self.released.set()


async def _api(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        return r.status, await r.json(content_type=None)


async def _decide(http: aiohttp.ClientSession, service: ServiceProcess, approval_id: str, kind: str,
                  reviewer: str) -> int | None:
    """The decision's status code, or None if the replica died under it."""
    body: dict[str, Any] = {"decision": kind, "reviewer": {"id": reviewer}}
    if kind == "reject":
        body["reason"] = "not this one"
    try:
        status, payload = await _api(http, "POST", f"{service.url}/api/approvals/{approval_id}/decisions", body)
    except (TimeoutError, aiohttp.ClientError):
        return None
    assert status in (200, 201, 409), (status, payload)
    return status


async def _audit(http: aiohttp.ClientSession, service: ServiceProcess) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await _api(http, "GET", f"{service.url}/api/audit?after={after}&limit=5000")
        assert status == 200, page
        events += page["items"]
        if page["next_after"] is None:
            return events
        after = page["next_after"]


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("case", ["a", "b", "c"])
async def test_replica_killed_while_holding_a_delivery(tmp_path: Path, db_url: str, smtp_server: SmtpServer,
                                                       case: str) -> None:
    rng = random.Random(f"cluster-crash-{case}")
    env = {
        "COUNTERSIGN_DATABASE_URL": db_url, "COUNTERSIGN_API_TOKEN": API_TOKEN,
        "COUNTERSIGN_API_TOKEN_MAY_DECIDE_ON_BEHALF": "true", "COUNTERSIGN_LOG_LEVEL": "WARNING",
        "COUNTERSIGN_JOB_POLL_SECONDS": "0.05", "COUNTERSIGN_JOB_BACKOFF_BASE_SECONDS": "0.05",
        "COUNTERSIGN_JOB_BACKOFF_MAX_SECONDS": "0.2", "COUNTERSIGN_JOB_LEASE_SECONDS": LEASE_SECONDS,
        **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp_server.settings().items()},
    }
    migrate_database_sync(db_url)  # as `countersign migrate` would (tests/conftest.py)
    services = []
    for i in range(REPLICAS):
        port = free_port()
        services.append(ServiceProcess({**env, "COUNTERSIGN_DATA_DIR": str(tmp_path / f"data{i}"),
                                        "COUNTERSIGN_PORT": str(port)}, port, tmp_path / f"replica{i}.log"))
    engine = create_async_engine(db_url, pool_size=4)
    cluster = Cluster(services, smtp_server, engine, asyncio.get_running_loop(), case,
                      trigger_at=rng.randint(1, 2) if case == "c" else rng.randint(2, 4))
    cluster.install()
    total = FIRST_RUNS + BURST_RUNS if case == "c" else RUNS
    try:
        await asyncio.gather(*(s.start(ready_timeout=DEADLINE) for s in services))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            runs: list[tuple[str, str]] = []  # (run id, approval id)
            for i in range(total):
                at = rng.choice(services)
                status, accepted = await _api(http, "POST", at.url + "/api/runs", {"action": email_action(
                    subject=f"Case {case} reply {i}", to=[f"customer{i}@example.com"])})
                assert status == 202, accepted
                status, run = await _api(http, "GET", f"{at.url}/api/runs/{accepted['id']}")
                runs.append((accepted["id"], run["approvals"][0]["id"]))

            def racing(index: int) -> list[Awaitable[int | None]]:
                """Two decisions for one approval at two different replicas: the first runs
                always approve (so there is a delivery to kill), later ones sometimes race a rejection."""
                first, second = rng.sample(services, 2)
                kinds = ["approve", "approve" if index < FIRST_RUNS or rng.random() < 0.6 else "reject"]
                rng.shuffle(kinds)
                return [_decide(http, first, runs[index][1], kinds[0], "rita"),
                        _decide(http, second, runs[index][1], kinds[1], "rob")]

            if case in ("a", "b"):
                for start in range(0, total, 3):  # waves of three runs, six racing requests
                    await asyncio.gather(*(d for i in range(start, min(start + 3, total)) for d in racing(i)))
            else:
                await asyncio.gather(*(d for i in range(FIRST_RUNS) for d in racing(i)))
                await asyncio.wait_for(cluster.held.wait(), DEADLINE)
                burst = [asyncio.ensure_future(d) for i in range(FIRST_RUNS, total) for d in racing(i)]
                done = 0
                pending = set(burst)
                while done < len(burst) // 2:  # kill halfway through the burst's answers
                    finished, pending = await asyncio.wait(pending, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
                    assert finished, "the burst stalled"
                    done += len(finished)
                assert cluster.frozen is not None
                await cluster.wait_quiet(cluster.frozen)
                await cluster.kill(cluster.frozen)
                await asyncio.gather(*burst)

            deadline = time.monotonic() + DEADLINE
            while cluster.killed is None:
                assert not cluster.errors, cluster.errors
                assert time.monotonic() < deadline, f"case {case}: the kill point was never reached"
                await asyncio.sleep(0.05)
            killed = cluster.killed
            survivor = services[(killed + 1) % REPLICAS]

            # Every run reaches its outcome while the killed replica is still dead.
            while True:
                assert not cluster.errors, cluster.errors
                details = [(await _api(http, "GET", f"{survivor.url}/api/runs/{r}"))[1] for r, _ in runs]
                if all(d["status"] in ("completed", "rejected") for d in details):
                    break
                assert time.monotonic() < deadline, [(d["id"], d["status"]) for d in details]
                await asyncio.sleep(0.1)
            assert services[killed].proc is not None and services[killed].proc.poll() is not None
            events = await _audit(http, survivor)
            messages = smtp_server.messages()
            accepted_before_restart = list(cluster.accepted)

            # The dead replica comes back on the same database and changes nothing.
            await services[killed].start(ready_timeout=DEADLINE)
            for (run_id, _), before in zip(runs, details, strict=True):
                status, after = await _api(http, "GET", f"{services[killed].url}/api/runs/{run_id}")
                assert status == 200 and after["status"] == before["status"], after
            assert not cluster.errors, cluster.errors
    finally:
        cluster.released.set()
        for s in services:
            s.kill()
        for task in cluster.tasks:
            task.cancel()
        if cluster.lock_conn is not None:
            await cluster.lock_conn.close()
        await engine.dispose()

    # One outcome per run: completed with one delivery sent, or rejected with none.
    sent_ids = []
    for d in details:
        assert len(d["decisions"]) == 1, (d["id"], d["decisions"])
        kind = d["decisions"][0]["kind"]
        if kind == "approve":
            assert d["status"] == "completed" and len(d["deliveries"]) == 1, d
            delivery = d["deliveries"][0]
            assert delivery["status"] == "sent" and delivery["sent_sha256"] == delivery["approved_sha256"], delivery
            sent_ids.append(delivery["message_id"])
        else:
            assert kind == "reject" and d["status"] == "rejected" and d["deliveries"] == [], d
        assert all(j["status"] == "done" for j in d["jobs"] if j["kind"] == SEND_EMAIL_JOB), d["jobs"]

    # The emails at the SMTP server: one per approved run, plus exactly the audited re-sends.
    counts = collections.Counter(m["Message-ID"] for m in messages)
    resent = [e for e in events if e["kind"] == RESENT]
    assert set(counts) == set(sent_ids), (counts, sent_ids)
    assert sum(counts.values()) == len(sent_ids) + len(resent), (counts, resent)
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    if case == "b":
        assert duplicates == {cluster.target_message_id: 2}, duplicates
        assert len(resent) == 1 and cluster.target_message_id in repr(resent[0]["data"]), resent
    else:
        assert duplicates == {} and resent == [], (duplicates, resent)

    # A surviving replica sent the killed one's delivery, while the killed one was dead.
    target = [a for a in accepted_before_restart if a.recipient == cluster.target_recipient]
    assert target and target[-1].replica != killed, (target, killed)
    assert len(target) == (2 if case == "b" else 1), target
    if case == "b":
        assert target[0].replica == killed
    # Where the delivery records its attempts (attempt_log), a possible duplicate is marked
    # exactly where the server got the message twice.
    for d in details:
        for delivery in d["deliveries"]:
            if "attempt_log" in delivery:
                flagged = any(a.get("possible_duplicate") for a in delivery["attempt_log"])
                assert flagged == (delivery["message_id"] in duplicates), delivery
