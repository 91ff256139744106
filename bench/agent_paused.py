"""Paused agent runs: memory of the service holding 10,000 runs that wait for a decision,
snapshot size per run, and resume latency from the database.

Part 1 runs `countersign serve` (SQLite, the offline drafter: the LLM costs nothing, so
what is measured is the service) and reads its resident memory (VmRSS) once warm and idle,
then after N agent runs have each drafted and paused at their approval. Baseline in the
same run: the bare aiohttp server's idle RSS (bench/bare_server.py).

Part 2 stops the service and, in this process, resumes paused runs one after another
through the service's own `agent.step` handler (service.agent.runner.AgentRunner) on the
same database: load the snapshot, restore the LlamaIndex context, deliver the decision (a
rejection: the agent reads the reason, answers, the run ends), snapshot or finish, commit.
The offline drafter's answer is the only "LLM call" and takes microseconds. Baseline,
interleaved run by run: reading the same snapshot row by primary key through the same store.

Targets (the issue): under 100 MB above idle for 10,000 paused runs; resume p50 < 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from _common import BENCH, PYTHON, ROOT, Server, clean_env, countersign_argv, free_port, header, percentile, verdict

TOKEN = "bench-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RSS_TARGET_MB = 100.0
P50_TARGET_MS = 20.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def count_paused(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("select count(*) from approvals where status = 'pending'").fetchone()[0]


async def create_runs(service: Server, count: int, concurrency: int = 32) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    requests = ["Can I still return the jacket I bought three weeks ago?", "My parcel has not moved for ten days.",
                "Is a broken tent zip covered by the warranty?", "How do I cancel my club membership?"]

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            body = {"request": requests[i % len(requests)],
                    "customer": {"email": f"customer{i}@example.com", "name": f"Customer {i}"}}
            async with http.post(service.url + "/api/runs", json=body, headers=AUTH) as r:
                assert r.status == 202, await r.text()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))


async def wait_paused(db: Path, expected: int, pid: int, timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while (paused := count_paused(db)) < expected:
        if paused != last and paused // 1000 != last // 1000:
            print(f"  {paused:,} paused, RSS {rss_mb(pid):.0f} MB", file=sys.stderr)
        last = paused
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {paused} of {expected} runs paused after {timeout} s")
        await asyncio.sleep(0.5)


async def settle_rss(pid: int, seconds: float = 3.0) -> float:
    """RSS once it stops moving (the allocator returns freed arenas lazily)."""
    await asyncio.sleep(seconds)
    return rss_mb(pid)


async def resume_latencies(data_dir: Path, resumes: int) -> tuple[list[float], list[float], list[float]]:
    """(resume total ms, of which commit ms, baseline snapshot read ms), one resume per run."""
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    from service.agent.runner import AgentRunner
    from service.app import audit_key_of, build_workflow, ensure_audit_key
    from service.config import Settings
    from service.jobs import Job, JobQueue, JobStatus
    from service.runs import AGENT_JOB, GatedOutcome, Runs
    from service.store import tables as t
    from service.store.db import Store

    settings = ensure_audit_key(Settings(data_dir=data_dir, api_token=TOKEN, openai_api_key=None, openai_base_url=""))
    store = Store.from_url(settings.effective_database_url, audit_key=audit_key_of(settings))
    await store.start()
    try:
        jobs = JobQueue(store)
        runs = Runs(store, jobs)
        runner = AgentRunner(store, runs, build_workflow(settings), timeout_seconds=60)
        runs.on_gated_outcome = runner.on_gated_outcome

        async def q(conn: sa.AsyncConnection) -> list[tuple[str, str, str]]:
            rows = await conn.execute(sa.select(t.approvals.c.run_id, t.approvals.c.id, t.approvals.c.tool_call_id)
                                      .where(t.approvals.c.status == "pending").limit(resumes))
            return [tuple(r) for r in rows]

        paused = await store.read(q)
        totals, commits, baseline = [], [], []
        for i, (run_id, approval_id, tool_call_id) in enumerate(paused):
            async def read_snapshot(conn: sa.AsyncConnection, run_id: str = run_id) -> object:
                return (await conn.execute(sa.select(t.agent_snapshots).where(
                    t.agent_snapshots.c.run_id == run_id))).first()

            outcome = GatedOutcome(run_id=run_id, approval_id=approval_id, tool_call_id=tool_call_id,
                                   status="rejected", reason="Please mention the order number.")
            job = Job(id=f"bench-{i}", kind=AGENT_JOB, run_id=run_id,
                      payload={"run_id": run_id, "outcome": outcome.to_dict()}, status=JobStatus.QUEUED,
                      attempts=1, max_attempts=1, due_at=None)  # type: ignore[arg-type]
            started = time.perf_counter()
            await store.read(read_snapshot)
            baseline.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            op = await runner.run(job)
            assert op is not None, f"run {run_id} did not resume"
            committing = time.perf_counter()
            await store.write(op)
            done = time.perf_counter()
            totals.append((done - started) * 1000)
            commits.append((done - committing) * 1000)
        return totals, commits, baseline
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="countersign-bench-agent-"))
    data_dir = tmp / "data"
    db = data_dir / "countersign.db"
    try:
        bare_port = free_port()
        with Server.start("bare", [PYTHON, str(BENCH / "bare_server.py"), "--port", str(bare_port)],
                          port=bare_port, env=clean_env({}), log=tmp / "bare.log") as bare:
            bare_rss = await settle_rss(bare.proc.pid, 1.0)

        port = free_port()
        env = clean_env({"COUNTERSIGN_DATA_DIR": str(data_dir), "COUNTERSIGN_API_TOKEN": TOKEN,
                         "COUNTERSIGN_PORT": str(port), "COUNTERSIGN_LOG_LEVEL": "WARNING",
                         "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
        with Server.start("service", [*countersign_argv(), "serve"], port=port, env=env, log=tmp / "service.log") as service:
            pid = service.proc.pid
            print(f"warming up with {args.warmup} runs", file=sys.stderr)
            await create_runs(service, args.warmup)
            await wait_paused(db, args.warmup, pid)
            idle = await settle_rss(pid)
            print(f"idle RSS {idle:.0f} MB; creating {args.runs:,} agent runs", file=sys.stderr)
            started = time.monotonic()
            await create_runs(service, args.runs)
            await wait_paused(db, args.warmup + args.runs, pid)
            elapsed = time.monotonic() - started
            loaded = await settle_rss(pid)
        with sqlite3.connect(db) as conn:
            sizes = [row[0] for row in conn.execute("select length(snapshot) from agent_snapshots")]
            in_memory = conn.execute("select count(*) from agent_snapshots").fetchone()[0]

        print(f"resuming {args.resumes:,} runs in this process", file=sys.stderr)
        totals, commits, baseline = await resume_latencies(data_dir, args.resumes)

        delta = loaded - idle
        p50 = statistics.median(totals)
        print(header("Paused agent runs: memory, snapshot size, resume latency"))
        print(f"Service: `countersign serve`, SQLite, offline drafter, default worker settings. "
              f"{args.runs:,} agent runs created over HTTP (32 at a time) and drafted to their approval in "
              f"{elapsed:.0f} s ({args.runs / elapsed:,.0f} runs/s); {in_memory:,} snapshots stored.\n")
        print("| measure | value | baseline (same run) | target | verdict |")
        print("|---|---|---|---|---|")
        print(f"| RSS idle (after {args.warmup} warm-up runs) | {idle:.0f} MB | bare aiohttp idle {bare_rss:.0f} MB | | |")
        print(f"| RSS with {args.runs:,} runs paused | {loaded:.0f} MB | | | |")
        print(f"| RSS above idle | {delta:+.0f} MB ({delta * 1024 / args.runs:+.2f} KB per run) | | "
              f"< {RSS_TARGET_MB:.0f} MB | {verdict(delta < RSS_TARGET_MB)} |")
        print(f"| snapshot size per run (JSON in the database) | median {statistics.median(sizes) / 1024:.1f} KB, "
              f"max {max(sizes) / 1024:.1f} KB | | | |")
        print(f"| resume from the database, p50 ({len(totals):,} runs) | {p50:.1f} ms | snapshot row read "
              f"{statistics.median(baseline):.2f} ms | < {P50_TARGET_MS:.0f} ms | {verdict(p50 < P50_TARGET_MS)} |")
        print(f"| resume p90 / p99 | {percentile(totals, 90):.1f} / {percentile(totals, 99):.1f} ms | | | |")
        print(f"| of which the commit (snapshot CAS, run finished, audit) p50 | {statistics.median(commits):.1f} ms | | | |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--resumes", type=int, default=1_000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
