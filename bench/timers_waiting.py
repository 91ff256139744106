"""100,000 approvals waiting with timers: the service's memory and start-up against the same
service on an empty database.

Per backend (SQLite always; PostgreSQL with Debian's binaries, as the tests start it), two
migrated databases: an empty one, and one holding `--approvals` action runs awaiting
approval, each approval pending under a policy with timers (remind after 4 h, escalate
after 1 d, expire after 3 d), its `remind_at` / `escalate_at` / `expire_at` set, and three
queued timer jobs (`approval.remind`, `approval.escalate`, `approval.expire`, payload
`{"approval_id", "due_at"}`, due hours to days ahead), written straight into the store's
tables (bench/_common.py `insert_waiting_approvals`). Then, `--rounds` times, alternating
which goes first: `python -m service serve` on each (cwd = `--code`), start-up to ready
(`GET /readyz` 200, polled every 10 ms), then VmRSS sampled every 0.5 s for `--settle`
seconds idle: the last sample and the largest are reported.

Nothing is due during the bench, so a service with the timer handlers (issue 12) holds
300,000 future jobs without firing any: what is measured is what waiting costs (the
worker's sleep until the next `due_at`, the idle poll, anything loaded at start). A
service without them works the same way: `JobQueue.lease` and `has_due` only look at
registered kinds, so unknown kinds are never leased; the bench reports the timer jobs'
attempts afterwards (0 expected either way).

Target (issue 12): RSS no more than 10 MB above the same service idle with none.

Usage: .venv/bin/python bench/timers_waiting.py [--approvals 100000] [--rounds 3] [--settle 10]
       [--code DIR] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _common import (
    ROOT,
    TIMER_COLUMNS,
    clean_env,
    count_rows,
    free_port,
    git_commit,
    header,
    insert_waiting_approvals,
    log_warnings,
    median_range,
    migrate,
    rss_mib,
    serve,
    stop,
    timer_policy,
    verdict,
)

TOKEN = "bench-api-token-0123456789"
AUDIT_KEY = "bench-audit-key-0123456789abcdef0123456789"
CALLBACK_SECRET = "bench-callback-secret-0123456789abcdef"
TARGET_MB = 10.0  # the "10 MB": 10**6 bytes, compared as such
MIB = 1024 * 1024


@dataclass
class Database:
    backend: str
    label: str  # "empty" | "N waiting"
    url: str
    data_dir: Path
    ready: list[float] = field(default_factory=list)
    rss_last: list[float] = field(default_factory=list)
    rss_max: list[float] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)

    def env(self, port: int) -> dict[str, str]:
        return clean_env({"COUNTERSIGN_DATABASE_URL": self.url, "COUNTERSIGN_DATA_DIR": str(self.data_dir),
                          "COUNTERSIGN_API_TOKEN": TOKEN, "COUNTERSIGN_AUDIT_KEY": AUDIT_KEY,
                          "COUNTERSIGN_CALLBACK_SIGNING_SECRET": CALLBACK_SECRET,
                          "COUNTERSIGN_PORT": str(port), "COUNTERSIGN_LOG_LEVEL": "WARNING",
                          "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})

    def measure(self, code: Path, settle: float, log: Path) -> None:
        port = free_port()
        offset = log.stat().st_size if log.exists() else 0
        proc, seconds = serve(code, self.env(port), port, log)
        samples = []
        try:
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline:
                time.sleep(0.5)
                samples.append(rss_mib(proc.pid))
        finally:
            stop(proc)
        self.ready.append(seconds)
        self.rss_last.append(samples[-1])
        self.rss_max.append(max(samples))
        for message, n in log_warnings(log, offset).items():
            self.warnings[message] = self.warnings.get(message, 0) + n
        print(f"  {self.backend} {self.label}: ready {seconds:.2f} s, RSS {samples[-1]:.1f} MiB "
              f"(max {max(samples):.1f})", file=sys.stderr)


def schedule(count: int) -> list[dict[str, datetime]]:
    """Due times hours to days ahead (as a policy's 4h / 1d / 3d would set them), spread over an hour."""
    now = datetime.now(timezone.utc)
    out = []
    for i in range(count):
        created = now - timedelta(seconds=3600 * i / count)
        out.append({"approval.remind": created + timedelta(hours=4), "approval.escalate": created + timedelta(days=1),
                    "approval.expire": created + timedelta(days=3)})
    return out


async def prepare(backend: str, url_of: dict[str, str], tmp: Path, code: Path, approvals: int) -> list[Database]:
    empty = Database(backend, "empty", url_of["empty"], tmp / f"{backend}-empty")
    loaded = Database(backend, f"{approvals:,} waiting", url_of["loaded"], tmp / f"{backend}-loaded")
    for db in (empty, loaded):
        migrate(code, db.env(free_port()))
    print(f"{backend}: writing {approvals:,} waiting approvals with 3 timers each", file=sys.stderr)
    started = time.monotonic()
    policy = timer_policy(remind_after=timedelta(hours=4), max_reminders=3, escalate_after=timedelta(days=1),
                          escalate_to=("lead@example.com",), expire_after=timedelta(days=3))
    await insert_waiting_approvals(loaded.url, schedule(approvals), policy)
    print(f"{backend}: written in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return [empty, loaded]


async def timer_jobs(url: str) -> str:
    kinds = ", ".join(f"'{k}'" for k in TIMER_COLUMNS)
    rows = await count_rows(url, f"SELECT status, sum(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), count(*) FROM jobs "
                                 f"WHERE kind IN ({kinds}) GROUP BY status ORDER BY status")
    return "; ".join(f"{status}: {total:,} ({leased or 0:,} ever leased)" for status, leased, total in rows)


def report(databases: list[Database], args: argparse.Namespace, jobs_after: dict[str, str]) -> None:
    print("| backend | database | start-up to ready (s) | RSS idle, last sample (MiB) | RSS idle, max (MiB) | "
          "warnings logged |")
    print("|---|---|---|---|---|---|")
    for db in databases:
        print(f"| {db.backend} | {db.label} | {median_range(db.ready, '{:.2f}')} | "
              f"{median_range(db.rss_last, '{:.1f}')} | {median_range(db.rss_max, '{:.1f}')} | "
              f"{sum(db.warnings.values())} |")
    print("\n| backend | RSS above idle (median of last samples) | target | verdict | start-up to ready, waiting | "
          "< 2 s | timer jobs afterwards |")
    print("|---|---|---|---|---|---|---|")
    for empty, loaded in zip(databases[::2], databases[1::2], strict=True):
        delta_mib = statistics.median(loaded.rss_last) - statistics.median(empty.rss_last)
        delta_mb = delta_mib * MIB / 1e6
        ready = statistics.median(loaded.ready)
        print(f"| {empty.backend} | {delta_mib:+.1f} MiB ({delta_mb:+.1f} MB) | < {TARGET_MB:g} MB | "
              f"{verdict(delta_mb < TARGET_MB)} | {ready:.2f} s | {verdict(ready < 2.0)} | "
              f"{jobs_after[empty.backend]} |")
    warned = {m: n for db in databases for m, n in db.warnings.items()}
    if warned:
        print("\nWarnings and errors logged: " + "; ".join(f"`{m}` ({n}x)" for m, n in warned.items()))


async def run(args: argparse.Namespace) -> None:
    code: Path = args.code.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="countersign-bench-timers-"))
    pg = None
    try:
        databases: list[Database] = []
        urls = {name: f"sqlite+aiosqlite:///{tmp / f'sqlite-{name}' / 'countersign.db'}" for name in ("empty", "loaded")}
        for name in urls:
            (tmp / f"sqlite-{name}").mkdir(mode=0o700)
        databases += await prepare("sqlite", urls, tmp, code, args.approvals)
        if args.postgres:
            sys.path.insert(0, str(ROOT))
            from tests.peers.postgres import PostgresServer, find_bindir

            if find_bindir() is None:
                print("PostgreSQL binaries not found: SQLite only", file=sys.stderr)
            else:
                pg = PostgresServer(free_port())
                pg.start()
                urls = {name: pg.create_database() for name in ("empty", "loaded")}
                databases += await prepare("postgresql", urls, tmp, code, args.approvals)
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", file=sys.stderr)
            for empty, loaded in zip(databases[::2], databases[1::2], strict=True):
                pair = (empty, loaded) if round_no % 2 == 0 else (loaded, empty)
                for db in pair:
                    db.measure(code, args.settle, tmp / f"{db.backend}-{db.label.split()[0]}.log")
        jobs_after = {db.backend: await timer_jobs(db.url) for db in databases[1::2]}

        print(header(f"{args.approvals:,} approvals waiting with timers: memory and start-up (bench/timers_waiting.py)"))
        print(f"- service code measured: `{code}` at {git_commit(code)}")
        print(f"\n{args.rounds} rounds per database, alternating which starts first; idle {args.settle:g} s after "
              "ready, VmRSS every 0.5 s; medians (min-max). 'warnings logged' counts WARNING/ERROR lines of the "
              "service's log.\n")
        report(databases, args, jobs_after)
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--approvals", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle after ready, sampling RSS")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose service/ is run")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    os.umask(0o077)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
