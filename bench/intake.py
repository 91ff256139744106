"""Intake benchmark: signed `POST /api/runs` with a pre-drafted email, persisted on SQLite,
against a bare aiohttp handler (parse JSON, answer 202) measured in the same run.

1. Throughput: `wrk -t1 -c32 -d15s` rounds, service and bare interleaved (the order swaps
   each round); medians with min-max. Server CPU per request from /proc.
2. Latency at half the service's median maximum rate, held with `hey -q` (wrk2 is not in
   Debian): p50/p99 of every request.
3. Durability: every 202 is a stored run. The service's own count of 202s (/metrics) must
   equal the runs in SQLite afterwards, and the clients' 202s may not exceed it (requests
   cut off when a load run ends may be stored without the client seeing the 202).

Targets (the issue): service >= 35% of the bare throughput; p99 < 50 ms at half rate.

Floors (bench/intake_floor_server.py), measured in the same rounds: the cheapest plumbing
Python has doing the same work (signature, the same pydantic model, run + approval + two
hash-chained audit events committed in SQLite before the 202), once with and once without
the validation. They say how much of the bare throughput any implementation of the
contract can keep on this machine, so that the service's ratio can be read against them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (
    BENCH,
    PYTHON,
    ROOT,
    Server,
    clean_env,
    countersign_argv,
    free_port,
    header,
    make_key,
    median_range,
    percentile,
    require_tools,
    verdict,
)

sys.path.insert(0, str(ROOT))
from service.signing import HEADER, sign  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"
TOKEN = "bench-api-token-0123456789"
BODY = json.dumps({"action": {"type": "send_email", "to": ["a@example.com"], "subject": "Hi", "body": "Hello"}},
                  separators=(",", ":")).encode()
THROUGHPUT_TARGET = 0.35
FLOORS = ("floor", "floor-raw")
P99_TARGET_MS = 50.0

LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["{header}"] = "{signature}"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int  # answered
    ok: int  # answered 2xx
    errors: int  # socket errors and timeouts
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds


def signature() -> str:
    """Signed now: valid for 300 s, long enough for one load run of one precomputed body."""
    return sign(SECRET, int(time.time()), BODY)


def run_wrk(server: Server, *, seconds: float, connections: int, threads: int, workdir: Path, key: str) -> LoadResult:
    script = workdir / "post.lua"
    script.write_text(LUA.format(body=BODY.decode(), header=HEADER, signature=signature(), key=key))
    cpu = server.cpu_seconds()
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
                          server.url + "/api/runs"], capture_output=True, text=True, check=True).stdout
    cpu = server.cpu_seconds() - cpu
    match = re.search(r"^WRK (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, duration_us, status, connect, read, write, timeout, p50, p99, _max = map(int, match.group(1).split())
    return LoadResult(requests=requests, ok=requests - status, errors=connect + read + write + timeout,
                      seconds=duration_us / 1e6, p50_ms=p50 / 1000, p99_ms=p99 / 1000,
                      cpu_ms_per_request=1000 * cpu / max(requests, 1))


def run_hey(server: Server, *, rate: float, seconds: float, workers: int, workdir: Path, key: str) -> LoadResult:
    """Hold `rate` requests/s (hey: -q per worker); the latency of every request from hey's CSV."""
    body = workdir / "body.json"
    body.write_bytes(BODY)
    cpu = server.cpu_seconds()
    out = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{rate / workers:.4f}", "-m", "POST",
                          "-T", "application/json", "-H", f"{HEADER}: {signature()}",
                          "-H", f"Authorization: Bearer {key}", "-D", str(body), "-o", "csv",
                          server.url + "/api/runs"], capture_output=True, text=True, check=True).stdout
    cpu = server.cpu_seconds() - cpu
    rows = list(csv.DictReader(io.StringIO(out)))
    latencies = [float(r["response-time"]) * 1000 for r in rows]
    ok = sum(1 for r in rows if r["status-code"].startswith("2"))
    return LoadResult(requests=len(rows), ok=ok, errors=0, seconds=seconds,
                      p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
                      cpu_ms_per_request=1000 * cpu / max(len(rows), 1))


def server_202s(service: Server) -> int:
    pattern = r'^countersign_http_requests_total\{method="POST",route="/api/runs",status="202"\} (\S+)$'
    match = re.search(pattern, service.get("/metrics"), re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def stored(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 (fixed names)
                for table in ("runs", "approvals", "audit_events")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved wrk rounds per target")
    parser.add_argument("--duration", type=float, default=15, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--half-rate-rounds", type=int, default=3)
    parser.add_argument("--hey-workers", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args()
    require_tools("wrk", "hey")

    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-intake-"))
    service_port, bare_port = free_port(), free_port()
    floor_ports = {name: free_port() for name in FLOORS}
    for name in FLOORS:  # each floor stores into its own database, with the service's schema
        subprocess.run([*countersign_argv(), "migrate"], env=clean_env({"COUNTERSIGN_DATA_DIR": str(workdir / name)}),
                       check=True, capture_output=True)
    service_env = clean_env({"COUNTERSIGN_DATA_DIR": str(workdir / "data"), "COUNTERSIGN_WEBHOOK_SECRET": SECRET,
                             "COUNTERSIGN_API_TOKEN": TOKEN, "COUNTERSIGN_LOG_LEVEL": "WARNING",
                             "COUNTERSIGN_PORT": str(service_port)})
    # A signature is accepted once now, and wrk replays one request: the service is fed a
    # `runs:create` key (one indexed read per request); the floors still check the signature.
    key = make_key(service_env, "bench-intake", "runs:create")
    client_ok = 0
    results: dict[str, list[LoadResult]] = {"bare": [], "service": [], **{name: [] for name in FLOORS}}
    floor_ok = dict.fromkeys(FLOORS, 0)
    half: list[LoadResult] = []
    with (Server.start("service", [*countersign_argv(), "serve"], port=service_port, env=service_env,
                       log=workdir / "service.log") as service,
          Server.start("bare", [PYTHON, str(BENCH / "bare_server.py"), "--port", str(bare_port)], port=bare_port,
                       env=clean_env({}), log=workdir / "bare.log") as bare,
          Server.start("floor", [PYTHON, str(BENCH / "intake_floor_server.py"), "--port", str(floor_ports["floor"]),
                                 "--database", str(workdir / "floor" / "countersign.db")],
                       port=floor_ports["floor"], env=clean_env({}), log=workdir / "floor.log") as floor,
          Server.start("floor-raw", [PYTHON, str(BENCH / "intake_floor_server.py"), "--port",
                                     str(floor_ports["floor-raw"]), "--no-validation",
                                     "--database", str(workdir / "floor-raw" / "countersign.db")],
                       port=floor_ports["floor-raw"], env=clean_env({}), log=workdir / "floor-raw.log") as floor_raw):
        load = {"seconds": args.duration, "connections": args.connections, "threads": args.threads, "workdir": workdir,
                "key": key}
        servers = [bare, service, floor, floor_raw]
        for server in servers:  # warm-up, not recorded
            warm = run_wrk(server, **{**load, "seconds": 3})
            client_ok += warm.ok if server is service else 0
            if server.name in FLOORS:
                floor_ok[server.name] += warm.ok
        for round_no in range(args.rounds):
            order = servers[round_no % len(servers):] + servers[:round_no % len(servers)]
            for server in order:
                result = run_wrk(server, **load)
                results[server.name].append(result)
                client_ok += result.ok if server is service else 0
                if server.name in FLOORS:
                    floor_ok[server.name] += result.ok
                print(f"round {round_no + 1} {server.name:8} {result.rps:9,.0f} req/s  p50 {result.p50_ms:6.1f} ms  "
                      f"p99 {result.p99_ms:6.1f} ms  cpu {result.cpu_ms_per_request:.3f} ms/req  "
                      f"non-2xx {result.requests - result.ok}  socket errors {result.errors}", file=sys.stderr)
        rate = statistics.median(r.rps for r in results["service"]) / 2
        for _ in range(args.half_rate_rounds):
            result = run_hey(service, rate=rate, seconds=args.duration, workers=args.hey_workers, workdir=workdir, key=key)
            half.append(result)
            client_ok += result.ok
            print(f"half rate {rate:,.0f}/s: achieved {result.rps:,.0f}/s p50 {result.p50_ms:.1f} ms "
                  f"p99 {result.p99_ms:.1f} ms non-2xx {result.requests - result.ok}", file=sys.stderr)
        answered_202 = server_202s(service)
    counts = stored(workdir / "data" / "countersign.db")
    floor_counts = {name: stored(workdir / name / "countersign.db") for name in FLOORS}

    bare_rps = [r.rps for r in results["bare"]]
    service_rps = [r.rps for r in results["service"]]
    ratio = statistics.median(service_rps) / statistics.median(bare_rps)
    round_ratios = [s / b for s, b in zip(service_rps, bare_rps)]
    p99s = [r.p99_ms for r in half]
    durable = counts["runs"] == answered_202 and client_ok <= counts["runs"] and counts["approvals"] == counts["runs"]
    lines = [header("Intake: signed POST /api/runs on SQLite vs a bare aiohttp handler"),
             f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, {args.rounds} interleaved rounds "
             f"per target, medians (min-max):\n",
             "| target | requests/s | p50 ms | p99 ms | server CPU ms/request | non-2xx |",
             "|---|---|---|---|---|---|"]
    labels = {"bare": "bare aiohttp: parse JSON, answer 202",
              "floor-raw": "floor: signature, json.loads, store run + approval + 2 audit events (raw sqlite3)",
              "floor": "floor: the same with the service's pydantic validation",
              "service": "Countersign: signed webhook, validate, store run + approval + 2 audit events"}
    bare_median = statistics.median(bare_rps)
    for name, label in labels.items():
        rs = results[name]
        share = "" if name == "bare" else f" ({statistics.median(r.rps for r in rs) / bare_median:.1%} of bare)"
        lines.append(f"| {label} | {median_range([r.rps for r in rs])}{share} | "
                     f"{median_range([r.p50_ms for r in rs], '{:.1f}')} | {median_range([r.p99_ms for r in rs], '{:.1f}')}"
                     f" | {median_range([r.cpu_ms_per_request for r in rs], '{:.3f}')} | "
                     f"{sum(r.requests - r.ok for r in rs)} |")
    lines += [
        "",
        f"- throughput: service/bare = **{ratio:.1%}** of the bare handler (per-round ratios "
        f"{min(round_ratios):.1%}-{max(round_ratios):.1%}); target >= {THROUGHPUT_TARGET:.0%}: "
        f"{verdict(ratio >= THROUGHPUT_TARGET)}",
        f"- latency at half rate: `hey -z {args.duration:g}s -c {args.hey_workers} -q {rate / args.hey_workers:.2f}` "
        f"= {rate:,.0f} requests/s offered, {median_range([r.rps for r in half])} achieved, "
        f"p50 {median_range([r.p50_ms for r in half], '{:.1f}')} ms, p99 **{median_range(p99s, '{:.1f}')} ms** over "
        f"{args.half_rate_rounds} runs, server CPU {median_range([r.cpu_ms_per_request for r in half], '{:.3f}')} "
        f"ms/request; target p99 < {P99_TARGET_MS:g} ms: {verdict(statistics.median(p99s) < P99_TARGET_MS)}",
        f"- stored: the service answered {answered_202:,} x 202 (its /metrics), the clients saw {client_ok:,}; SQLite "
        f"holds {counts['runs']:,} runs, {counts['approvals']:,} approvals, {counts['audit_events']:,} audit events: "
        f"{'every accepted request was stored' if durable else '**MISMATCH**'}",
        "- floors: " + "; ".join(
            f"{name} {statistics.median(r.rps for r in results[name]) / bare_median:.1%} of bare (per-round "
            f"{min(f.rps / b.rps for f, b in zip(results[name], results['bare'])):.1%}-"
            f"{max(f.rps / b.rps for f, b in zip(results[name], results['bare'])):.1%}), its clients saw "
            f"{floor_ok[name]:,} x 202, its SQLite holds {floor_counts[name]['runs']:,} runs"
            for name in ("floor-raw", "floor")),
    ]
    print("\n".join(lines))
    if args.keep:
        print(f"\n(data kept in {workdir})", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
