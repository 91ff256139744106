"""Decision-to-email benchmark: from `POST /api/approvals/{id}/decisions` (approve) to the
real SMTP server (tests/peers/smtp.py: aiosmtpd, STARTTLS + AUTH) holding the message.

The service runs as `countersign serve` (SQLite, default job settings) and the SMTP server
in a process of its own; its `on_data` hook stamps CLOCK_MONOTONIC when a message's DATA
arrives, right before it answers 250 (comparable with this process's time.monotonic_ns()).
Decisions are taken one at a time: the next one starts after the previous run is
`completed`. Baseline, interleaved sample by sample: a bare aiohttp handler that sends a
prebuilt message over an already open, authenticated SMTP connection (bench/bare_server.py
POST /send), timed the same way: the HTTP + SMTP floor on this machine right now.

Target (the issue): p50 < 30 ms on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

from _common import (
    BENCH,
    PYTHON,
    Server,
    SmtpPeer,
    clean_env,
    countersign_argv,
    free_port,
    header,
    make_key,
    median_range,
    percentile,
    verdict,
)

TOKEN = "bench-api-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
P50_TARGET_MS = 30.0


async def create_pending(http: aiohttp.ClientSession, service: Server, subject: str) -> tuple[str, str]:
    """(run id, approval id) of a new run awaiting approval of an email with this subject."""
    action = {"type": "send_email", "to": ["ann.customer@example.com"], "subject": subject,
              "body": "Dear Ann,\n\nYour refund was issued today.\n\nKind regards,\nSupport"}
    async with http.post(service.url + "/api/runs", json={"action": action}, headers=AUTH) as r:
        assert r.status == 202, await r.text()
        run_id = (await r.json())["id"]
    async with http.get(f"{service.url}/api/runs/{run_id}", headers=AUTH) as r:
        return run_id, (await r.json())["approvals"][0]["id"]


async def wait_completed(http: aiohttp.ClientSession, service: Server, run_id: str, timeout: float = 30) -> int:
    """Poll until the run is completed; return how many GETs that took."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        await asyncio.sleep(0.02)  # usually one poll: the run completes within ms of the SMTP reply
        async with http.get(f"{service.url}/api/runs/{run_id}", headers=AUTH) as r:
            status = (await r.json())["status"]
        if status == "completed":
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is still {status} after {timeout} s")


async def decide(http: aiohttp.ClientSession, service: Server, peer: SmtpPeer, run_id: str, approval_id: str,
                 subject: str, decider: dict[str, str]) -> tuple[float, float, int]:
    """(ms to the SMTP server's on_data, ms to the decision's HTTP answer, status polls)."""
    started = time.monotonic_ns()
    # A reviewer's own key (scope decide): the operator token may not decide.
    async with http.post(f"{service.url}/api/approvals/{approval_id}/decisions", headers=decider,
                         json={"decision": "approve"}) as r:
        assert r.status == 200, await r.text()
        await r.read()
    answered = time.monotonic_ns()
    accepted = await peer.accepted_at(subject)
    polls = await wait_completed(http, service, run_id)
    return (accepted - started) / 1e6, (answered - started) / 1e6, polls


async def bare_send(http: aiohttp.ClientSession, bare: Server, peer: SmtpPeer, subject: str) -> float:
    started = time.monotonic_ns()
    async with http.post(bare.url + "/send", json={"subject": subject}) as r:
        assert r.status == 200, await r.text()
        await r.read()
    return (await peer.accepted_at(subject) - started) / 1e6


def describe(ms: list[float]) -> str:
    return (f"{statistics.median(ms):.1f} | {percentile(ms, 90):.1f} | {percentile(ms, 99):.1f} | "
            f"{min(ms):.1f}-{max(ms):.1f}")


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-decision-"))
    peer = await SmtpPeer.start(workdir / "smtp", announce=True)
    service_port, bare_port = free_port(), free_port()
    smtp = peer.settings
    service_env = clean_env({"COUNTERSIGN_DATA_DIR": str(workdir / "data"), "COUNTERSIGN_API_TOKEN": TOKEN,
                             "COUNTERSIGN_LOG_LEVEL": "WARNING", "COUNTERSIGN_PORT": str(service_port), **peer.env()})
    bare_argv = [PYTHON, str(BENCH / "bare_server.py"), "--port", str(bare_port), "--smtp-host", smtp["smtp_host"],
                 "--smtp-port", str(smtp["smtp_port"]), "--smtp-username", smtp["smtp_username"],
                 "--smtp-password", smtp["smtp_password"], "--smtp-ca-file", smtp["smtp_ca_file"]]
    decider = {"Authorization": f"Bearer {make_key(service_env, 'rita', 'decide', reviewer='rita@example.com')}"}
    service_ms: list[float] = []
    answer_ms: list[float] = []
    bare_ms: list[float] = []
    cpu_ms = 0.0
    polls = 0
    try:
        with (Server.start("service", [*countersign_argv(), "serve"], port=service_port, env=service_env,
                           log=workdir / "service.log") as service,
              Server.start("bare", bare_argv, port=bare_port, env=clean_env({}), log=workdir / "bare.log") as bare):
            async with aiohttp.ClientSession() as http:
                total = args.warmup + args.decisions
                subjects = [f"bench-{i}-{uuid.uuid4().hex[:12]}" for i in range(total)]
                pending = [await create_pending(http, service, s) for s in subjects]  # not timed
                for i, (subject, (run_id, approval_id)) in enumerate(zip(subjects, pending)):
                    cpu = service.cpu_seconds()
                    to_smtp, to_answer, n_polls = await decide(http, service, peer, run_id, approval_id, subject,
                                                               decider)
                    cpu = service.cpu_seconds() - cpu
                    floor = await bare_send(http, bare, peer, "bare-" + subject)
                    await asyncio.sleep(args.gap)
                    if i >= args.warmup:
                        service_ms.append(to_smtp)
                        answer_ms.append(to_answer)
                        bare_ms.append(floor)
                        cpu_ms += cpu * 1000
                        polls += n_polls
            smtp_stats = await peer.stats()
    finally:
        await peer.stop()

    n = args.decisions
    q = n // 4
    blocks = [statistics.median(service_ms[k * q:(k + 1) * q]) for k in range(4)] if q >= 2 else []
    p50 = statistics.median(service_ms)
    lines = [header("Decision to email: approve over HTTP -> message at the SMTP server (STARTTLS + AUTH)"),
             f"{n} decisions one at a time after {args.warmup} warm-up ones, each followed by one bare send "
             f"(interleaved){f' and {args.gap:g} s of quiet' if args.gap else ''}; milliseconds:\n",
             "| measured | p50 | p90 | p99 | min-max |", "|---|---|---|---|---|",
             f"| Countersign: decision POST -> SMTP on_data | {describe(service_ms)} |",
             f"| Countersign: decision POST -> its HTTP answer | {describe(answer_ms)} |",
             f"| bare: POST -> send on an open SMTP connection -> on_data | {describe(bare_ms)} |",
             "",
             f"- p50 decision -> email: **{p50:.1f} ms** = {p50 / statistics.median(bare_ms):.1f}x the bare floor "
             f"({statistics.median(bare_ms):.1f} ms)"
             + (f"; p50 of each quarter of the samples {median_range(blocks, '{:.1f}')} ms" if blocks else "")
             + f"; target p50 < {P50_TARGET_MS:g} ms: {verdict(p50 < P50_TARGET_MS)}",
             f"- service CPU per decision (the decision, the job, recording `sent`, and {polls / n:.1f} "
             f"`GET /api/runs/{{id}}` on average waiting for `completed`): {cpu_ms / n:.1f} ms",
             f"- the SMTP server received {smtp_stats['messages']} messages over {smtp_stats['connections']} "
             f"connections ({args.warmup + n} from the service, as many from the bare baseline)"]
    print("\n".join(lines))
    shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds of quiet after each decision: > 2 s makes the pool check its idle connection "
                             "with NOOP, > smtp_idle_seconds (10 s) makes it reconnect")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
