"""Start-up to ready and idle memory of `countersign serve`, and the first agent draft after it.

Per round, for each checkout (`--code LABEL=DIR`, default this one) and each configuration
(`offline`: no OPENAI_* settings, the offline drafter; `llm`: an OpenAI-compatible server
configured, `OPENAI_BASE_URL` pointing at a port nobody listens on, never called), in an
order that rotates each round:

- start-up to ready: from just before `python -m service serve` is spawned (cwd = the
  checkout, so its `service/` is imported) to the first `GET /readyz` answering 200
  (polled every 10 ms), on an SQLite database migrated beforehand (a restart, not a first
  install);
- RSS (VmRSS of /proc/PID/status) at ready and after `--settle` seconds idle;
- offline only: one agent run (`POST /api/runs` with a `request`) right after the idle
  reading, and the time until its approval is pending (the offline drafter answers in
  microseconds, so this is the agent stack's first load plus one step), then the RSS;
- the service's log is searched for "event loop was blocked" (service/loop_lag.py).

Baseline in the same run, once per round: the bare aiohttp server (bench/bare_server.py)
from spawn to `/healthz` 200, and its RSS.

Target (issue 12): start-up to ready under 2 s.

Usage: .venv/bin/python bench/startup.py [--rounds 5] [--settle 3] [--code LABEL=DIR ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    BENCH,
    PYTHON,
    ROOT,
    clean_env,
    free_port,
    git_commit,
    header,
    log_count,
    median_range,
    migrate,
    rss_mib,
    serve,
    spawn_until_ready,
    stop,
    verdict,
)

TOKEN = "bench-api-token-0123456789"
READY_TARGET_S = 2.0
CONFIGS = ("offline", "llm")


def api(url: str, method: str = "GET", body: object | None = None) -> dict[str, object]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def first_draft_seconds(base: str, timeout: float = 60.0) -> float:
    """One agent run, right now: seconds until its approval is pending."""
    started = time.monotonic()
    accepted = api(base + "/api/runs", "POST", {"request": "Can I still return the jacket I bought three weeks ago?",
                                                 "customer": {"email": "ann@example.com", "name": "Ann"}})
    while True:
        run = api(f"{base}/api/runs/{accepted['id']}")
        if run["status"] == "awaiting_approval":
            return time.monotonic() - started
        if run["status"] in ("failed", "cancelled", "completed", "rejected", "expired"):
            raise RuntimeError(f"the agent run ended {run['status']}: {run}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"no draft after {timeout} s: {run}")
        time.sleep(0.01)


@dataclass
class Target:
    label: str
    code: Path
    config: str
    data_dir: Path
    ready: list[float] = field(default_factory=list)
    rss_ready: list[float] = field(default_factory=list)
    rss_idle: list[float] = field(default_factory=list)
    draft: list[float] = field(default_factory=list)
    rss_after_draft: list[float] = field(default_factory=list)
    blocked: int = 0

    def env(self, port: int) -> dict[str, str]:
        values = {"COUNTERSIGN_DATA_DIR": str(self.data_dir), "COUNTERSIGN_API_TOKEN": TOKEN,
                  "COUNTERSIGN_PORT": str(port), "COUNTERSIGN_LOG_LEVEL": "WARNING",
                  "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
        if self.config == "llm":
            values.update({"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1", "OPENAI_API_KEY": "sk-bench",
                           "COUNTERSIGN_LLM_MODEL": "gpt-4o-mini"})
        return clean_env(values)

    def migrate(self) -> None:
        migrate(self.code, self.env(free_port()))

    def measure(self, settle: float, log: Path) -> None:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        offset = log.stat().st_size if log.exists() else 0
        proc, seconds = serve(self.code, self.env(port), port, log)
        try:
            self.ready.append(seconds)
            self.rss_ready.append(rss_mib(proc.pid))
            time.sleep(settle)
            self.rss_idle.append(rss_mib(proc.pid))
            if self.config == "offline":
                self.draft.append(first_draft_seconds(base))
                time.sleep(1.0)
                self.rss_after_draft.append(rss_mib(proc.pid))
        finally:
            stop(proc)
        self.blocked += log_count(log, offset, "event loop was blocked")
        print(f"  {self.label}/{self.config}: ready {seconds:.2f} s, RSS {self.rss_ready[-1]:.0f} -> "
              f"{self.rss_idle[-1]:.0f} MiB" + (f", first draft {self.draft[-1]:.2f} s" if self.draft else ""),
              file=sys.stderr)


def parse_code(value: str) -> tuple[str, Path]:
    label, sep, directory = value.partition("=")
    if not sep:
        label, directory = Path(value).name, value
    path = Path(directory).resolve()
    if not (path / "service" / "__main__.py").exists():
        raise argparse.ArgumentTypeError(f"{path} has no service/__main__.py")
    return label, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle after ready before the idle RSS")
    parser.add_argument("--code", type=parse_code, action="append",
                        help="LABEL=DIR of a checkout to measure (repeatable; default: this one)")
    args = parser.parse_args()
    codes: list[tuple[str, Path]] = args.code or [("this", ROOT)]
    tmp = Path(tempfile.mkdtemp(prefix="countersign-bench-startup-"))
    try:
        targets = [Target(label, code, config, tmp / f"{label}-{config}")
                   for label, code in codes for config in CONFIGS]
        for target in targets:
            target.migrate()
        bare_ready: list[float] = []
        bare_rss: list[float] = []
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", file=sys.stderr)
            port = free_port()
            proc, seconds = spawn_until_ready([PYTHON, str(BENCH / "bare_server.py"), "--port", str(port)], cwd=ROOT,
                                              env=clean_env({}), url=f"http://127.0.0.1:{port}/healthz",
                                              log=tmp / "bare.log")
            bare_ready.append(seconds)
            bare_rss.append(rss_mib(proc.pid))
            stop(proc)
            shift = round_no % len(targets)
            for target in targets[shift:] + targets[:shift]:
                target.measure(args.settle, tmp / f"{target.label}-{target.config}.log")

        print(header("Start-up to ready and idle memory (bench/startup.py)"))
        for label, code in codes:
            print(f"- `{label}`: `{code}` at {git_commit(code)}")
        print(f"\n{args.rounds} rounds, interleaved; medians (min-max). Baseline: the bare aiohttp server, spawn to "
              f"`/healthz` 200: {median_range(bare_ready, '{:.2f}')} s, RSS {median_range(bare_rss)} MiB.\n")
        print("| code | configuration | start-up to ready (s) | x bare | RSS at ready (MiB) | "
              f"RSS idle after {args.settle:g} s (MiB) | first agent draft after ready (s) | RSS after it (MiB) | "
              f"'event loop was blocked' | ready < {READY_TARGET_S:g} s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        bare = statistics.median(bare_ready)
        for t in targets:
            ready = statistics.median(t.ready)
            draft = median_range(t.draft, "{:.2f}") if t.draft else "n/a"
            after = median_range(t.rss_after_draft) if t.rss_after_draft else "n/a"
            print(f"| {t.label} | {t.config} | {median_range(t.ready, '{:.2f}')} | {ready / bare:.1f}x | "
                  f"{median_range(t.rss_ready)} | {median_range(t.rss_idle)} | {draft} | {after} | {t.blocked} | "
                  f"{verdict(ready < READY_TARGET_S)} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
