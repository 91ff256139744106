"""Timer lateness: 10,000 approval expiries falling due within the same minute.

Per backend (SQLite; PostgreSQL with Debian's binaries, as the tests start it): a migrated
database with `--timers` action runs awaiting approval, each approval pending under a
policy with `expire_after` (on_expiry reject), written straight into the store's tables
(bench/_common.py). Then, just before the service starts, the expiries are armed: per
approval one queued `approval.expire` job (payload `{"approval_id", "due_at"}`, as
service/timers.py enqueues them) and the approval's `expire_at`, due from `--lead` seconds
after that moment, spread evenly over `--spread` seconds. `python -m service serve`
(cwd = `--code`, default job settings) starts on it: the timers were made before the
process existed, as after a restart, so its worker has to find them, not be told.

Lateness of each timer = when its effect is committed minus its `due_at`. The effect is
the approval leaving pending (status `expired`, `decided_at` set, the run `expired`),
measured two ways:
- `decided_at - due_at`: the transaction's own timestamp, taken before its commit (a
  lower bound of the commit time);
- first seen - due_at: this process reads the decided approvals every `--poll` seconds
  (an upper bound: committed at most one poll earlier).
Also `jobs.finished_at - due_at` of the expire jobs. p50 / p90 / p99 / max over all timers
that fired; the count of those that did not fire within `--grace` seconds after the last
due time.

Timers need a service with the `approval.expire` handler (issue 12). Against code without
it the jobs are never leased (`JobQueue.lease` looks only at registered kinds) and the
bench says so and exits with status 3.

Target (issue 12): lateness p99 < 1 s, on SQLite and on PostgreSQL.

Usage: .venv/bin/python bench/timer_lateness.py [--timers 10000] [--lead 20] [--spread 60]
       [--grace 60] [--poll 0.25] [--code DIR] [--no-postgres] [--no-sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    WaitingApproval,
    clean_env,
    count_rows,
    free_port,
    git_commit,
    header,
    insert_waiting_approvals,
    log_count,
    log_warnings,
    migrate,
    percentile,
    rss_mib,
    serve,
    stop,
    timer_policy,
    verdict,
)

TOKEN = "bench-api-token-0123456789"
AUDIT_KEY = "bench-audit-key-0123456789abcdef0123456789"
CALLBACK_SECRET = "bench-callback-secret-0123456789abcdef"
EXPIRE_JOB = "approval.expire"
P99_TARGET_S = 1.0


class TimersNotHandled(RuntimeError):
    """The service never leased an expire job: it has no handler for them."""


@dataclass
class Result:
    backend: str
    timers: int
    ready_s: float
    ready_before_due: bool  # False: timers fell due while the service was starting
    arm_s: float
    decided: list[float]  # decided_at - due_at, seconds
    seen: list[float]  # first seen - due_at
    finished: list[float]  # jobs.finished_at - due_at
    not_fired: int
    statuses: dict[str, int]
    run_statuses: dict[str, int]
    rss_mib: float
    warnings: dict[str, int]
    blocked: int


def parse_time(value: Any) -> datetime:
    """A timestamp read with plain SQL: a datetime (PostgreSQL) or SQLite's stored text (naive UTC)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


async def arm(url: str, waiting: list[WaitingApproval], *, lead: float, spread: float) -> dict[str, datetime]:
    """Queue one expire job per approval and set its `expire_at`, due from `lead` s from now over
    `spread` s: approval id -> due_at."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.store import tables as t

    start = datetime.now(timezone.utc) + timedelta(seconds=lead)
    due = {w.approval_id: start + timedelta(seconds=spread * i / len(waiting)) for i, w in enumerate(waiting)}
    now = datetime.now(timezone.utc)
    jobs = [dict(id=str(uuid.uuid4()), kind=EXPIRE_JOB, run_id=w.run_id,
                 payload={"approval_id": w.approval_id, "due_at": due[w.approval_id].isoformat()}, status="queued",
                 attempts=0, max_attempts=5, due_at=due[w.approval_id], leased_until=None, lease_token=None,
                 last_error=None, created_at=now, updated_at=now, finished_at=None) for w in waiting]
    update = (t.approvals.update().where(t.approvals.c.id == sa.bindparam("approval_id"))
              .values(expire_at=sa.bindparam("due")))
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(update, [{"approval_id": a, "due": d} for a, d in due.items()])
            await conn.execute(t.jobs.insert(), jobs)
    finally:
        await engine.dispose()
    return due


async def watch(url: str, due: dict[str, datetime], *, grace: float, poll: float, pid: int) -> tuple[dict[str, float], float]:
    """Poll the decided approvals until every timer fired or `grace` s after the last due time:
    (approval id -> first seen - due_at in s, the service's RSS at the end)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    last_due = max(due.values())
    first_due = min(due.values())
    seen: dict[str, float] = {}
    engine = create_async_engine(url)
    try:
        while True:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT id FROM approvals WHERE status != 'pending'"))).all()
            now = datetime.now(timezone.utc)
            for (approval_id,) in rows:
                if approval_id in due and approval_id not in seen:
                    seen[approval_id] = (now - due[approval_id]).total_seconds()
            if len(seen) == len(due):
                break
            if now > last_due + timedelta(seconds=grace):
                break
            if not seen and now > first_due + timedelta(seconds=grace):
                async with engine.connect() as conn:
                    leased = (await conn.execute(text(
                        f"SELECT count(*) FROM jobs WHERE kind = '{EXPIRE_JOB}' AND attempts > 0"))).scalar_one()
                if leased == 0:
                    raise TimersNotHandled(
                        f"no approval expired and no {EXPIRE_JOB} job was ever leased {grace:g} s after the first "
                        f"fell due: this service code has no handler for approval timers (issue 12's timers are "
                        f"not in it yet); nothing to measure")
            await asyncio.sleep(poll)
        return seen, rss_mib(pid)
    finally:
        await engine.dispose()


async def measure(backend: str, url: str, data_dir: Path, code: Path, args: argparse.Namespace, log: Path) -> Result:
    port = free_port()
    env = clean_env({"COUNTERSIGN_DATABASE_URL": url, "COUNTERSIGN_DATA_DIR": str(data_dir),
                     "COUNTERSIGN_API_TOKEN": TOKEN, "COUNTERSIGN_AUDIT_KEY": AUDIT_KEY,
                     "COUNTERSIGN_CALLBACK_SIGNING_SECRET": CALLBACK_SECRET,
                     "COUNTERSIGN_PORT": str(port), "COUNTERSIGN_LOG_LEVEL": "WARNING",
                     "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    migrate(code, env)
    print(f"{backend}: writing {args.timers:,} pending approvals", file=sys.stderr)
    policy = timer_policy(expire_after=timedelta(minutes=1))
    waiting = await insert_waiting_approvals(url, [{} for _ in range(args.timers)], policy)
    started = time.monotonic()
    due = await arm(url, waiting, lead=args.lead, spread=args.spread)
    arm_s = time.monotonic() - started
    print(f"{backend}: {args.timers:,} expiries armed in {arm_s:.1f} s, due from {min(due.values()):%H:%M:%S} to "
          f"{max(due.values()):%H:%M:%S} UTC; starting the service", file=sys.stderr)
    proc, ready_s = serve(code, env, port, log)
    ready_before_due = datetime.now(timezone.utc) < min(due.values())
    try:
        seen, rss = await watch(url, due, grace=args.grace, poll=args.poll, pid=proc.pid)
    finally:
        stop(proc)
    approvals = await count_rows(url, "SELECT id, status, decided_at FROM approvals")
    jobs = await count_rows(url, f"SELECT payload, finished_at, status FROM jobs WHERE kind = '{EXPIRE_JOB}'")
    runs = await count_rows(url, "SELECT status, count(*) FROM runs GROUP BY status")
    decided = [(parse_time(at) - due[a]).total_seconds() for a, status, at in approvals
               if a in due and status != "pending" and at is not None]
    finished = []
    for payload, finished_at, status in jobs:
        if status == "done" and finished_at is not None:
            approval_id = (payload if isinstance(payload, dict) else json.loads(payload))["approval_id"]
            finished.append((parse_time(finished_at) - due[approval_id]).total_seconds())
    return Result(
        backend=backend, timers=args.timers, ready_s=ready_s, ready_before_due=ready_before_due, arm_s=arm_s, decided=decided,
        seen=list(seen.values()), finished=finished, not_fired=len(due) - len(seen),
        statuses=dict(collections.Counter(status for _, status, _ in approvals)),
        run_statuses={str(s): int(n) for s, n in runs}, rss_mib=rss,
        warnings=log_warnings(log, 0),
        blocked=log_count(log, 0, "event loop was blocked"))


def quantiles(values: list[float]) -> str:
    if not values:
        return "none"
    return " / ".join(f"{percentile(values, p) * 1000:,.0f}" for p in (50, 90, 99)) + f" / {max(values) * 1000:,.0f}"


def report(results: list[Result], args: argparse.Namespace, code: Path) -> None:
    print(header(f"Timer lateness: {args.timers:,} expiries due within {args.spread:g} s (bench/timer_lateness.py)"))
    print(f"- service code measured: `{code}` at {git_commit(code)}")
    print(f"\nDue from {args.lead:g} s after arming, spread evenly over {args.spread:g} s; default job settings; "
          f"decided approvals read every {args.poll:g} s. Lateness in ms: p50 / p90 / p99 / max.\n")
    print("| backend | fired | `decided_at` - due (lower bound) | first seen - due (upper bound) | "
          "job `finished_at` - due | p99 target | verdict | approvals after | runs after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p99 = percentile(r.decided, 99) if r.decided else float("inf")
        ok = r.not_fired == 0 and p99 < P99_TARGET_S
        print(f"| {r.backend} | {r.timers - r.not_fired:,} of {r.timers:,} | {quantiles(r.decided)} | "
              f"{quantiles(r.seen)} | {quantiles(r.finished)} | < {P99_TARGET_S * 1000:,.0f} ms | {verdict(ok)} | "
              f"{r.statuses} | {r.run_statuses} |")
    print("\n| backend | start-up to ready | arming (s) | RSS at the end (MiB) | warnings logged | "
          "'event loop was blocked' |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.backend} | {r.ready_s:.2f} s | {r.arm_s:.1f} | {r.rss_mib:.0f} | {sum(r.warnings.values())} | "
              f"{r.blocked} |")
    for r in results:
        if not r.ready_before_due:
            print(f"\n**{r.backend}: the service was ready only after the first timer fell due: lateness includes "
                  "its start-up; run again with a longer --lead.**")
        if r.warnings:
            print(f"\n{r.backend}, warnings and errors logged: "
                  + "; ".join(f"`{m}` ({n}x)" for m, n in r.warnings.items()))


async def run(args: argparse.Namespace) -> int:
    code: Path = args.code.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="countersign-bench-lateness-"))
    pg = None
    results: list[Result] = []
    try:
        (tmp / "sqlite").mkdir(mode=0o700)
        targets = [("sqlite", f"sqlite+aiosqlite:///{tmp / 'sqlite' / 'countersign.db'}")] if args.sqlite else []
        if args.postgres:
            sys.path.insert(0, str(ROOT))
            from tests.peers.postgres import PostgresServer, find_bindir

            if find_bindir() is None:
                print("PostgreSQL binaries not found: SQLite only", file=sys.stderr)
            else:
                pg = PostgresServer(free_port())
                pg.start()
                targets.append(("postgresql", pg.create_database()))
        for backend, url in targets:
            try:
                results.append(await measure(backend, url, tmp / f"{backend}-data", code, args, tmp / f"{backend}.log"))
            except TimersNotHandled as exc:
                print(f"\n{backend}: {exc}", file=sys.stderr)
                print(f"timer_lateness.py: {exc}")
                return 3
        report(results, args, code)
        return 0
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--lead", type=float, default=20.0, help="seconds from arming to the first due time")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which the timers fall due")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds after the last due time to wait")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between reads of the decided approvals")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose service/ is run")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    os.umask(0o077)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
