"""Soak: three `countersign serve` replicas on one PostgreSQL, 60 runs, racing decisions, one
replica SIGKILLed at a random moment halfway through the decisions, then restarted.

The random version of tests/test_cluster_crash.py, with the DEFAULT job settings (lease,
poll, backoff: nothing test-sized). Per seed, and summarised over the seeds:

- duplicates per kill: copies beyond the first of each Message-ID at the real STARTTLS+AUTH
  aiosmtpd server (tests/peers/smtp.py, on a thread of this process), and the audit log's
  `delivery.resent_after_interruption` events (if the code has them);
- takeover time: from the SIGKILL (wall clock) to the `finished_at` of the last job that the
  dead replica held leased at the kill and that another replica leased again and finished
  (the dead one is restarted only after every run reached its outcome, so no job of its can
  be finished by itself);
- the 250-to-committed window under the decision burst: the `countersign_side_effect_record_seconds`
  histogram (kind `send_email`) of the replicas alive at the end (the killed incarnation's
  observations die with it; p50/p99 interpolated within the buckets, as histogram_quantile
  does), and, for every commit, the SMTP server's wall-clock time of the 250 to the
  delivery's `sent_at` (the recording transaction's timestamp, taken before its commit: a
  lower bound of the window).

Usage: .venv/bin/python bench/soak.py [--seeds 10] [--runs 60] [--first-seed 1] [--code DIR]
Needs the test extras (aiosmtpd) and Debian's PostgreSQL binaries (as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench._common import ROOT, free_port, header, percentile  # noqa: E402
from tests.peers.certs import make_tls_files  # noqa: E402
from tests.peers.postgres import PostgresServer  # noqa: E402
from tests.peers.smtp import SmtpServer  # noqa: E402
from tests.processes import ServiceProcess  # noqa: E402

API_TOKEN = "soak-api-token-0123456789"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
REPLICAS = 3


@dataclass
class SeedResult:
    seed: int
    victim: int
    approved: int
    emails: int
    duplicates: int
    resent_audited: int
    victim_jobs: int
    takeover_s: float | None
    window_ms: list[float] = field(default_factory=list)  # 250 -> sent_at
    histogram: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    completed_s: float = 0.0
    outcomes_ok: bool = True
    notes: list[str] = field(default_factory=list)


def parse_histogram(text: str, kind: str) -> dict[float, float]:
    buckets: dict[float, float] = {}
    pattern = re.compile(r'^countersign_side_effect_record_seconds_bucket\{(.*)\} ([0-9.e+-]+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("kind") != kind:
            continue
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    return buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total == 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / max(count - prev_count, 1e-12))
        prev_bound, prev_count = bound, count
    return bounds[-1]


async def api(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        return r.status, await r.json(content_type=None)


async def decide(http: aiohttp.ClientSession, service: ServiceProcess, approval_id: str, kind: str,
                 reviewer: str) -> int | None:
    body: dict[str, Any] = {"decision": kind, "reviewer": {"id": reviewer}}
    if kind == "reject":
        body["reason"] = "not this one"
    try:
        return (await api(http, "POST", f"{service.url}/api/approvals/{approval_id}/decisions", body))[0]
    except (TimeoutError, aiohttp.ClientError):
        return None  # the replica died under it; the racing request at another replica decides


async def one_seed(seed: int, runs_n: int, pg: PostgresServer, work: Path, tls: Any) -> SeedResult:
    rng = random.Random(seed)
    smtp = SmtpServer(work / f"smtp{seed}", tls, free_port())
    accepted: list[tuple[float, str]] = []  # (wall time of the 250, Message-ID)
    lock = threading.Lock()

    def on_message(session: Any, content: bytes) -> None:
        m = MESSAGE_ID.search(content)
        with lock:
            accepted.append((time.time(), m.group(1).decode() if m else ""))

    smtp.handler.on_message = on_message
    smtp.start()
    db_url = pg.create_database()
    env = {
        "COUNTERSIGN_DATABASE_URL": db_url, "COUNTERSIGN_API_TOKEN": API_TOKEN,
        "COUNTERSIGN_API_TOKEN_MAY_DECIDE_ON_BEHALF": "true", "COUNTERSIGN_LOG_LEVEL": "WARNING",
        **{f"COUNTERSIGN_{k.upper()}": str(v) for k, v in smtp.settings().items()},
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    subprocess.run([sys.executable, "-m", "service", "migrate"], env={**base_env, **env}, check=True,
                   capture_output=True)
    services = []
    for i in range(REPLICAS):
        port = free_port()
        services.append(ServiceProcess({**env, "COUNTERSIGN_DATA_DIR": str(work / f"s{seed}-data{i}"),
                                        "COUNTERSIGN_PORT": str(port)}, port, work / f"s{seed}-replica{i}.log"))
    engine = create_async_engine(db_url)
    victim = rng.randrange(REPLICAS)
    result = SeedResult(seed, victim, 0, 0, 0, 0, 0, None)
    try:
        await asyncio.gather(*(s.start(ready_timeout=120) for s in services))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            runs: list[tuple[str, str]] = []
            for i in range(runs_n):
                at = rng.choice(services)
                status, body = await api(http, "POST", at.url + "/api/runs", {"action": {
                    "type": "send_email", "to": [f"customer{i}@example.com"], "subject": f"Soak {seed} reply {i}",
                    "body": "Dear customer,\n\nYour refund was issued today.\n\nKind regards,\nSupport"}})
                assert status == 202, body
                status, run = await api(http, "GET", f"{at.url}/api/runs/{body['id']}")
                runs.append((body["id"], run["approvals"][0]["id"]))
            print(f"seed {seed}: {runs_n} runs created; victim replica {victim}",
                  file=sys.stderr)

            kill_wall = 0.0
            held: list[Any] = []
            started = time.monotonic()
            requests = []
            for i in range(runs_n):
                first, second = rng.sample(services, 2)
                kinds = ["approve", "approve" if rng.random() < 0.7 else "reject"]
                rng.shuffle(kinds)
                requests += [decide(http, first, runs[i][1], kinds[0], "rita"),
                             decide(http, second, runs[i][1], kinds[1], "rob")]
            # The burst: every decision in flight at once; the kill comes when a random share
            # (40-60%) of them has been answered, i.e. halfway through the decisions.
            burst = [asyncio.ensure_future(r) for r in requests]
            kill_after = round(len(burst) * rng.uniform(0.4, 0.6))
            pending, answered = set(burst), 0
            while answered < kill_after:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                answered += len(done)
            result.notes.append(f"killed after {answered}/{len(burst)} decision answers")
            kill_wall = time.time()
            services[victim].kill()
            await services[victim].wait_dead()
            # Which jobs did the dead replica hold? Leased now; later leased again (below).
            async with engine.connect() as conn:
                held = (await conn.execute(sa.text(
                    "SELECT id, attempts FROM jobs WHERE status = 'queued' AND lease_token IS NOT NULL "
                    "AND leased_until > now()"))).all()
            await asyncio.gather(*burst)

            survivor = services[(victim + 1) % REPLICAS]
            deadline = time.monotonic() + 600
            while True:
                details = [(await api(http, "GET", f"{survivor.url}/api/runs/{r}"))[1] for r, _ in runs]
                if all(d["status"] in ("completed", "rejected", "failed") for d in details):
                    break
                if time.monotonic() > deadline:
                    result.notes.append("not every run finished within 600 s")
                    break
                await asyncio.sleep(0.2)
            result.completed_s = time.monotonic() - started
            ids = [h.id for h in held]
            async with engine.connect() as conn:
                rows = (await conn.execute(sa.text(
                    "SELECT id, attempts, status, extract(epoch FROM finished_at) AS fin FROM jobs WHERE id = ANY(:ids)"),
                    {"ids": ids})).all() if ids else []
                sent_at = dict((await conn.execute(sa.text(
                    "SELECT message_id, extract(epoch FROM sent_at) FROM deliveries WHERE sent_at IS NOT NULL"))).all())
            before = {h.id: h.attempts for h in held}
            taken = [r for r in rows if r.attempts > before[r.id] and r.status == "done"]
            result.victim_jobs = len(taken)
            if taken:
                result.takeover_s = max(float(r.fin) for r in taken) - kill_wall
            for r in rows:
                if r.attempts > before[r.id] and r.status != "done":
                    result.notes.append(f"job {r.id} of the dead replica is {r.status}")

            events: list[dict[str, Any]] = []
            after = 0
            while True:
                _, page = await api(http, "GET", f"{survivor.url}/api/audit?after={after}&limit=5000")
                events += page["items"]
                if page["next_after"] is None:
                    break
                after = page["next_after"]
            result.resent_audited = sum(1 for e in events if e["kind"] == "delivery.resent_after_interruption")
            for i, s in enumerate(services):
                if i != victim:
                    async with http.get(s.url + "/metrics") as r:
                        for le, n in parse_histogram(await r.text(), "send_email").items():
                            result.histogram[le] = result.histogram.get(le, 0.0) + n

            # The dead replica comes back on the same database.
            await services[victim].start(ready_timeout=120)
            status, _ = await api(http, "GET", f"{services[victim].url}/api/runs/{runs[0][0]}")
            if status != 200:
                result.notes.append(f"the restarted replica answered {status}")

        counts = collections.Counter(mid for _, mid in accepted)
        result.emails = sum(counts.values())
        result.duplicates = sum(n - 1 for n in counts.values())
        first_accept: dict[str, float] = {}
        for at, mid in accepted:
            first_accept[mid] = at  # the last accepted copy is the one whose record committed
        result.window_ms = [(float(sent_at[mid]) - at) * 1000 for mid, at in first_accept.items() if mid in sent_at]
        for d in details:
            kinds = [x["kind"] for x in d["decisions"]]
            if kinds == ["approve"]:
                result.approved += 1
                ok = d["status"] == "completed" and len(d["deliveries"]) == 1 and d["deliveries"][0]["status"] == "sent"
            else:
                ok = kinds == ["reject"] and d["status"] == "rejected" and not d["deliveries"]
            if not ok:
                result.outcomes_ok = False
                result.notes.append(f"run {d['id']}: {d['status']}, decisions {kinds}")
        if set(counts) != {d["deliveries"][0]["message_id"] for d in details if d["deliveries"]}:
            result.notes.append("the Message-IDs at the server differ from the runs' deliveries")
    finally:
        for s in services:
            s.kill()
        await engine.dispose()
        smtp.stop()
    return result


def fmt(x: float | None, spec: str = "{:.1f}") -> str:
    return "n/a" if x is None else spec.format(x)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="checkout whose service/ is run (e.g. a `git worktree` of an older commit)")
    args = parser.parse_args()
    code = args.code.resolve()
    print(header("Soak: three replicas on PostgreSQL, one SIGKILLed during the decisions (bench/soak.py)"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True).stdout.strip()
    print(f"- service code measured: `{code}` at commit {commit or 'unknown'}\n")
    os.chdir(code)  # `migrate` and `serve` import the service package from their working directory
    work = Path(tempfile.mkdtemp(prefix="countersign-soak-"))
    tls = make_tls_files(work)
    pg = PostgresServer(free_port())
    pg.start()
    results: list[SeedResult] = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = await one_seed(seed, args.runs, pg, work, tls)
            results.append(r)
            print(f"seed {seed}: duplicates {r.duplicates}, takeover {fmt(r.takeover_s)} s, {r.notes}", file=sys.stderr)
    finally:
        pg.stop()

    print(f"\n{args.runs} runs per seed, all decided in one burst (two racing requests each, at two "
          f"different replicas, 70% approve/approve, 30% approve/reject); default job settings.\n")
    print("| seed | killed replica | approved runs | emails at server | duplicates | audited re-sends | "
          "dead replica's jobs taken over | takeover after SIGKILL (s) | 250 -> sent_at p50 / p99 (ms) | "
          "all runs done after (s) | outcomes | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        w = r.window_ms
        print(f"| {r.seed} | {r.victim} | {r.approved} | {r.emails} | {r.duplicates} | {r.resent_audited} | "
              f"{r.victim_jobs} | {fmt(r.takeover_s)} | "
              f"{fmt(percentile(w, 50) if w else None)} / {fmt(percentile(w, 99) if w else None)} | "
              f"{r.completed_s:.1f} | {'one each' if r.outcomes_ok else 'WRONG'} | {'; '.join(r.notes)} |")
    takeovers = [r.takeover_s for r in results if r.takeover_s is not None]
    windows = [x for r in results for x in r.window_ms]
    hist: dict[float, float] = {}
    for r in results:
        for le, n in r.histogram.items():
            hist[le] = hist.get(le, 0.0) + n
    dup = [r.duplicates for r in results]
    print(f"\n- kills: {len(results)}; duplicates per kill: mean {statistics.mean(dup):.2f}, max {max(dup)}, "
          f"total {sum(dup)} (audited as re-sent after interruption: {sum(r.resent_audited for r in results)})")
    if takeovers:
        print(f"- takeover after SIGKILL: median {statistics.median(takeovers):.1f} s, max {max(takeovers):.1f} s "
              f"over {len(takeovers)} kills with jobs to take over (target < 15 s: "
              f"{'**met**' if max(takeovers) < 15 else '**MISSED**'})")
    else:
        print("- takeover after SIGKILL: no kill left a leased job behind")
    if windows:
        print(f"- 250 -> sent_at (server clock vs the recording transaction's timestamp, {len(windows)} emails): "
              f"p50 {percentile(windows, 50):.1f} ms, p99 {percentile(windows, 99):.1f} ms, max {max(windows):.1f} ms")
    p50, p99 = histogram_quantile(0.5, hist), histogram_quantile(0.99, hist)
    total = hist.get(float("inf"), 0.0)
    if total:
        print(f"- countersign_side_effect_record_seconds{{kind=\"send_email\"}} of the surviving replicas "
              f"({total:.0f} observations): p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (interpolated in buckets)")
    else:
        print("- countersign_side_effect_record_seconds{kind=\"send_email\"}: not exposed by this commit (no observations)")
    ok = all(r.outcomes_ok for r in results)
    print("- outcomes: " + ("every run ended with one decision and, if approved, one sent delivery" if ok
                            else "SOME RUNS WRONG (see notes)"))


if __name__ == "__main__":
    asyncio.run(main())
