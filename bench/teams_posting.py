"""Teams card posting: event-loop stalls inside the service while 200 cards are posted to a
Bot Connector that answers every call in 300 ms.

The service runs in this process (aiohttp TestServer + `create_app`, SQLite, default job
settings), so that a ticker task on its event loop can measure stalls: it sleeps 5 ms
again and again and records how late each wake-up is (a stall of the loop shows up as
lateness). The key server and the fake Bot Connector (tests/peers, `FakeConnector.delay =
0.3`) run in a process of their own (`teams_invoke.py peers`), so their work never lands
on the measured loop; the connector stamps CLOCK_MONOTONIC when it answers each card post.

Per scenario, with a fresh service: install the bot in the channels (conversationUpdate),
1 s of quiet (the idle baseline of the same loop), create 200 runs routed to the channels
with the job worker not yet started (intake; the HTTP client shares the loop here), then
start the worker with the service's own settings and measure until every card job is
finished (posting). Scenarios: 200 distinct channels (one card each), and one channel (all
200 cards; Teams' per-conversation limits apply: 7/1 s, 8/2 s, 60/30 s).

Target (the issue): event-loop stalls under 20 ms while the cards are posted.

What-ifs (not the shipped code; the fixes suggested in RESULTS.md): `--patch-msrest` turns
msrest's ClientRetryPolicy.safe_codes into a frozenset; `--gc-freeze` calls gc.freeze() once
the service has started.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp.test_utils import TestServer
from teams_invoke import (
    APP_ID,
    APP_PASSWORD,
    BENCH_TENANTS,
    KID,
    TOKEN,
    TeamsPeers,
    create_runs,
    install,
    places,
    post_activity,
)

from _common import ROOT, cpu_seconds, free_port, header, percentile, verdict

sys.path.insert(0, str(ROOT))
from service import logs  # noqa: E402
from service.api.deps import SERVICES  # noqa: E402
from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from service.jobs import Worker  # noqa: E402
from service.store import tables as t  # noqa: E402
from service.store.db import Store  # noqa: E402
from service.teams.cards import POST_CARD_JOB  # noqa: E402

TICK = 0.005
STALL_TARGET_MS = 20.0
CONNECTOR_DELAY = 0.3


@dataclass
class Ticker:
    """Sleeps TICK again and again on the loop; records (monotonic s, lateness ms) per wake-up."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.samples.append((now, (now - started - TICK) * 1000))

    def between(self, start: float, end: float) -> list[float]:
        return [late for at, late in self.samples if start <= at <= end]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def describe(lateness: Sequence[float]) -> str:
    return (f"{len(lateness):,} | {percentile(lateness, 50):.2f} | {percentile(lateness, 99):.2f} | "
            f"{max(lateness):.1f} | {sum(x > 5 for x in lateness)} | {sum(x > STALL_TARGET_MS for x in lateness)}")


def most_in_flight(arrivals: Sequence[float], answers: Sequence[float]) -> int:
    """The most calls between arrival and answer at any moment."""
    events = sorted([(at, 1) for at in arrivals] + [(at, -1) for at in answers])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def max_in_window(stamps_s: Sequence[float], seconds: float) -> int:
    """The most stamps in any window of this length."""
    best, first = 0, 0
    for last, at in enumerate(stamps_s):
        while at - stamps_s[first] >= seconds:
            first += 1
        best = max(best, last - first + 1)
    return best


@dataclass
class Outcome:
    idle: list[float]
    intake: list[float]
    posting: list[float]
    posted_s: float  # worker start -> the connector answered the last card post
    finished_s: float  # worker start -> every card job finished (done or dead) in the database
    cpu_s: float  # this process, all threads, during posting
    jobs: Counter[str]  # the card jobs by "<status> after <N> attempts"
    connector_posted: int
    connector_failed: int
    windows: dict[str, int]  # most posts that reached the connector in any 1 s / 2 s / 30 s
    in_flight: int  # most card posts at the connector at once


async def scenario(channels: int, cards: int, peers: TeamsPeers, workdir: Path, timeout: float, *,
                   gc_freeze: bool = False) -> Outcome:
    settings = Settings(data_dir=workdir / "data", api_token=TOKEN, microsoft_app_id=APP_ID,
                        microsoft_app_password=APP_PASSWORD, bot_openid_metadata_url=peers.metadata_url,
                        bot_token_url=f"{peers.connector_url}/oauth2/v2.0/token", log_level="WARNING",
                        teams_allowed_tenants=BENCH_TENANTS.split(","))
    app = create_app(settings, run_workers=False)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    if gc_freeze:
        gc.collect()
        gc.freeze()
    url = str(server.make_url("")).rstrip("/")
    services = app[SERVICES]
    worker = Worker(services.jobs, concurrency=settings.worker_concurrency, poll_seconds=settings.job_poll_seconds,
                    timeout_seconds=settings.job_timeout_seconds)
    ticker = Ticker()
    before = await peers.stats()

    async def unfinished() -> int:
        async def q(conn: Any) -> int:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(t.jobs).where(
                t.jobs.c.kind == POST_CARD_JOB, t.jobs.c.status == "queued"))).scalar_one())
        return await services.store.read(q)

    try:
        async with aiohttp.ClientSession() as http:
            rooms = places(channels, 1)
            token = peers.tokens.token(KID)
            for place in rooms:
                status, _ = await post_activity(http, url, install(place, peers.connector_url), token)
                assert status == 200, status
            ticker.start()
            idle_start = time.monotonic()
            await asyncio.sleep(1.0)
            intake_start = time.monotonic()
            await create_runs(http, url, [rooms[i % channels] for i in range(cards)], concurrency=8)
            intake_end = start = time.monotonic()
            cpu = cpu_seconds(os.getpid())
            print(f"posting {cards} cards to {channels} channel(s)", file=sys.stderr)
            worker.start()
            while await unfinished() and time.monotonic() - start < timeout:
                await asyncio.sleep(0.1)
            end = time.monotonic()
            cpu = cpu_seconds(os.getpid()) - cpu
    finally:
        await ticker.stop()
        await worker.stop()
        await server.close()

    async def card_jobs(conn: Any) -> Counter[str]:
        rows = (await conn.execute(sa.select(t.jobs.c.status, t.jobs.c.attempts).where(
            t.jobs.c.kind == POST_CARD_JOB))).all()
        return Counter(f"{r.status} after {r.attempts} attempt{'s' if r.attempts != 1 else ''}" for r in rows)

    # The store is closed with the app; read the outcome through a fresh one.
    store = Store.from_url(settings.effective_database_url)
    try:
        jobs = await store.read(card_jobs)
    finally:
        await store.close()
    stats = await peers.stats()
    stamps = [ns / 1e9 for ns in stats["posted_ns"][len(before["posted_ns"]):]]
    arrivals = sorted(stats["arrived_s"][len(before["arrived_s"]):])
    return Outcome(
        idle=ticker.between(idle_start, intake_start), intake=ticker.between(intake_start, intake_end),
        posting=ticker.between(start, end), posted_s=(stamps[-1] - start) if stamps else float("nan"),
        finished_s=end - start, cpu_s=cpu, jobs=jobs, connector_posted=len(stamps),
        connector_failed=stats["failed"] - before["failed"],
        windows={f"{w:g} s": max_in_window(arrivals, w) for w in (1.0, 2.0, 30.0)} if channels == 1 else {},
        in_flight=most_in_flight(arrivals, stamps))


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-teams-posting-"))
    logs.configure("WARNING")  # as `countersign serve` does, into a file instead of stderr
    logging.getLogger().handlers[0].setStream(open(workdir / "service.log", "w"))  # noqa: SIM115
    if args.patch_msrest:
        from msrest.universal_http.requests import ClientRetryPolicy

        ClientRetryPolicy.safe_codes = frozenset(ClientRetryPolicy.safe_codes)  # type: ignore[assignment]
    peers = await TeamsPeers.start(workdir / "peers", delay=CONNECTOR_DELAY)
    outcomes: dict[int, Outcome] = {}
    try:
        for channels in args.channels:
            outcomes[channels] = await scenario(channels, args.cards, peers, workdir / f"c{channels}", args.timeout,
                                                gc_freeze=args.gc_freeze)
    finally:
        await peers.stop()

    defaults = {name: Settings.model_fields[name].default for name in ("worker_concurrency", "job_timeout_seconds")}
    what_if = [name for name, on in (("msrest patched", args.patch_msrest), ("gc.freeze()", args.gc_freeze)) if on]
    title = f"Teams card posting: event-loop stalls while {args.cards} cards go to a {CONNECTOR_DELAY * 1000:.0f} ms"
    lines = [header(title + " Bot Connector" + (f" (what-if: {', '.join(what_if)})" if what_if else "")),
             f"Service in-process (TestServer + `create_app`, SQLite, worker_concurrency="
             f"{defaults['worker_concurrency']}, job_timeout_seconds={defaults['job_timeout_seconds']:g}, default "
             f"backoff and max attempts); a ticker on its "
             f"loop sleeps {TICK * 1000:g} ms again and again, lateness of each wake-up in ms; key server and fake "
             f"connector (answers after {CONNECTOR_DELAY:g} s) in their own process. Idle: 1 s before the runs are "
             f"created. Intake: the {args.cards} `POST /api/runs` (+ GET) from an HTTP client on the same loop, worker "
             "not started. Posting: from the worker's start until every card job is finished.\n",
             "| cards to | phase | wake-ups | p50 | p99 | max | > 5 ms | > 20 ms |",
             "|---|---|---|---|---|---|---|---|"]
    for channels, o in outcomes.items():
        where = f"{channels} channel{'s' if channels != 1 else ''}"
        lines += [f"| {where} | idle | {describe(o.idle)} |", f"| {where} | intake | {describe(o.intake)} |",
                  f"| {where} | **posting** | {describe(o.posting)} |"]
    lines.append("")
    for channels, o in outcomes.items():
        where = f"{channels} channel{'s' if channels != 1 else ''}"
        stall = max(o.posting)
        lines.append(
            f"- {args.cards} cards to {where}: max stall while posting **{stall:.1f} ms**, p99 "
            f"{percentile(o.posting, 99):.2f} ms; target < {STALL_TARGET_MS:g} ms: {verdict(stall < STALL_TARGET_MS)}. "
            f"Connector had {o.connector_posted} of {args.cards} cards {o.posted_s:.1f} s after the worker started "
            f"({o.connector_posted / o.posted_s:.1f} cards/s, at most {o.in_flight} posts at the connector at once); "
            f"every card job finished after {o.finished_s:.1f} s: {dict(o.jobs)}; {o.connector_failed} failed "
            f"connector calls; this process's CPU while posting {o.cpu_s * 1000 / max(o.connector_posted, 1):.1f} ms "
            "per card (all threads)"
            + (f"; most posts arriving at the connector in any window: {o.windows} (Teams allows 7 / 8 / 60)"
               if o.windows else ""))
    print("\n".join(lines))
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=200)
    parser.add_argument("--channels", type=int, nargs="+", default=[200, 1],
                        help="one scenario per value: the cards are spread over this many channels")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the card jobs per scenario")
    parser.add_argument("--patch-msrest", action="store_true",
                        help="what-if: msrest's ClientRetryPolicy.safe_codes as a frozenset")
    parser.add_argument("--gc-freeze", action="store_true", help="what-if: gc.freeze() once the service has started")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
