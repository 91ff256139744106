"""Shared helpers for the benchmarks: tools, ports, server processes, CPU time, statistics,
the real SMTP peer (tests/peers/smtp.py) run as its own process, and `python -m service
serve` of a given checkout (its working directory, so that checkout's `service/` is
imported, not the editable install's) timed from spawn to ready, with its VmRSS."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def require_tools(*names: str) -> None:
    """Exit with install instructions when a load tool is missing (the test suite never needs them)."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        print(f"missing load tool(s): {', '.join(missing)}\n"
              f"install them as root:  apt-get update && apt-get install -y {' '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (aiosqlite's included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def countersign_argv() -> list[str]:
    script = Path(PYTHON).parent / "countersign"
    return [str(script)] if script.exists() else [PYTHON, "-m", "service"]


def make_key(env: Mapping[str, str], name: str, *scopes: str, reviewer: str | None = None) -> str:
    """An API key made with `countersign keys create` on the service's database (migrating SQLite first)."""
    argv = [*countersign_argv(), "keys", "create", "--name", name, *[a for s in scopes for a in ("--scope", s)]]
    if reviewer:
        argv += ["--reviewer", reviewer]
    out = subprocess.run(argv, env=dict(env), capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The environment without any COUNTERSIGN_* of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
    env.update(extra)
    return env


@dataclass
class Server:
    """An HTTP server in its own process (the service or a bare baseline)."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], *, port: int, env: Mapping[str, str], log: Path,
              ready_path: str = "/healthz", timeout: float = 60.0) -> Server:
        with log.open("wb") as out:
            proc = subprocess.Popen(list(argv), env=dict(env), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        server = cls(name, proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(server.url + ready_path, timeout=2):
                    return server
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"{name} not ready after {timeout} s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.1)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # aiohttp's run_app shuts down gracefully
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- statistics -------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median_range(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """'median (min-max)'."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def header(title: str) -> str:
    """A Markdown section head with the exact command, the date and a machine note."""
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(PYTHON, ROOT) if PYTHON.startswith(str(ROOT)) else PYTHON,
                                                 os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]])
    return (f"## {title}\n\n"
            f"- command: `{command}` (from `{ROOT}`)\n"
            f"- code: {code_version()}\n"
            f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- machine: {machine_note()}\n")


def code_version() -> str:
    """The commit measured, and whether service/ had uncommitted changes at the time."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "service")
    return f"commit {commit}" + (" with uncommitted changes in service/" if dirty else "")


def machine_note() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    from importlib.metadata import version

    return (f"{os.cpu_count()} CPUs ({model or 'unknown model'}), shared; load average at start {load}; "
            f"Linux {platform.release()}; Python {platform.python_version()}; aiohttp {version('aiohttp')}, "
            f"SQLAlchemy {version('sqlalchemy')}, aiosqlite {version('aiosqlite')}, aiosmtplib {version('aiosmtplib')}, "
            f"aiosmtpd {version('aiosmtpd')}")


# ---- the real SMTP peer -----------------------------------------------------------------

@dataclass
class SmtpPeer:
    """tests/peers/smtp.py's aiosmtpd server (STARTTLS + AUTH, Maildir) in its own process
    (bench/smtp_peer.py), so that it never shares a GIL with the client or the service.

    With `announce`, the peer prints the CLOCK_MONOTONIC time (comparable across processes
    on Linux) at which each message's DATA reached its `on_data` hook, keyed by Subject."""

    proc: asyncio.subprocess.Process
    settings: dict[str, Any]
    _accepted: dict[str, int] = field(default_factory=dict)
    _waiting: dict[str, asyncio.Future[int]] = field(default_factory=dict)
    _stats: asyncio.Queue[dict[str, int]] = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, directory: Path, *, announce: bool) -> SmtpPeer:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, str(BENCH / "smtp_peer.py"), "--dir", str(directory), "--port", str(free_port()),
            *(["--announce"] if announce else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if not line:
            raise RuntimeError("the SMTP peer did not start (see its stderr above)")
        peer = cls(proc, json.loads(line)["settings"])
        peer._reader = asyncio.create_task(peer._read())
        return peer

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode().rstrip("\n")
            if text.startswith("ACCEPTED "):
                _, ns, subject = text.split(" ", 2)
                waiter = self._waiting.pop(subject, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(int(ns))
                else:
                    self._accepted[subject] = int(ns)
            elif text.startswith("{"):
                self._stats.put_nowait(json.loads(text))

    async def accepted_at(self, subject: str, timeout: float = 30.0) -> int:
        """time.monotonic_ns() at which the message with this Subject reached the server's on_data."""
        if subject in self._accepted:
            return self._accepted.pop(subject)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[subject] = waiter
        return await asyncio.wait_for(waiter, timeout)

    async def stats(self) -> dict[str, int]:
        """{"connections": sessions opened so far, "messages": messages in the Maildir}."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self._stats.get(), timeout=30)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def env(self) -> dict[str, str]:
        """The service's environment variables that reach this server."""
        return {f"COUNTERSIGN_{k.upper()}": str(v) for k, v in self.settings.items()}

    async def stop(self) -> None:
        await stop_by_stdin(self.proc)
        if self._reader is not None:
            self._reader.cancel()


async def stop_by_stdin(proc: asyncio.subprocess.Process, timeout: float = 15) -> None:
    """Stop a helper process that exits when its stdin closes; kill it if it does not."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()


# ---- `countersign serve` from a checkout, timed to ready ---------------------------------

def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def git_commit(directory: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "service"], cwd=directory, capture_output=True,
                           text=True).stdout.strip()
    commit = out.stdout.strip() or "not a git checkout"
    return commit + (" with uncommitted changes in service/" if dirty else "")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def spawn_until_ready(argv: list[str], *, cwd: Path, env: dict[str, str], url: str, log: Path,
                      timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn, poll `url` every 10 ms: (the process, seconds from just before the spawn to a 200)."""
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    while True:
        if http_status(url, timeout=2.0) == 200:
            return proc, time.monotonic() - started
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() - started > timeout:
            stop(proc)
            raise RuntimeError(f"{argv} not ready after {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def serve(code: Path, env: dict[str, str], port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """`countersign serve` of the checkout `code`, ready (GET /readyz 200)."""
    return spawn_until_ready([PYTHON, "-m", "service", "serve"], cwd=code, env=env,
                             url=f"http://127.0.0.1:{port}/readyz", log=log)


def migrate(code: Path, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "-m", "service", "migrate"], cwd=code, env=env, check=True, capture_output=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # aiohttp's run_app shuts down gracefully
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_count(log: Path, offset: int, needle: str) -> int:
    """How often `needle` occurs in `log` after byte `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").count(needle)


_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+(?:\.\d+)?")


def log_warnings(log: Path, offset: int) -> dict[str, int]:
    """The service's WARNING and ERROR messages (its JSON log, service/logs.py) after byte
    `offset`, each with how often it was logged (ids and numbers as #, 100 characters)."""
    found: dict[str, int] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                # Ids and numbers vary: "job <id> (approval.expire) was taken over" counts as one.
                message = _VARYING.sub("#", str(record.get("message") or line))[:100]
                found[message] = found.get(message, 0) + 1
    return found


# ---- waiting approvals written straight into a migrated database ------------------------

TIMER_COLUMNS = {"approval.remind": "remind_at", "approval.escalate": "escalate_at", "approval.expire": "expire_at"}


@dataclass(frozen=True)
class WaitingApproval:
    run_id: str
    approval_id: str
    timers: dict[str, datetime]  # job kind -> due_at


def timer_policy(**timers: Any) -> dict[str, Any]:
    """A stored policy (service.policy.Policy.to_dict) with the given Timers fields."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from service.policy import Policy, Timers

    return Policy(name="bench", reviewers=("rita@example.com", "sam@example.com"), timers=Timers(**timers)).to_dict()


async def insert_waiting_approvals(url: str, schedule: Sequence[dict[str, datetime]], policy: dict[str, Any], *,
                                   chunk: int = 2_000, progress: bool = True) -> list[WaitingApproval]:
    """One action run awaiting approval per entry of `schedule`, with its approval pending under
    `policy`, and per timer kind in the entry one queued job (payload `approval_id` and
    `due_at`, as service/timers.py enqueues them) and the approval's `remind_at` /
    `escalate_at` / `expire_at` set to its due time. Written with the store's own tables
    (service/store/tables.py, executemany per chunk), not through the HTTP API: 100,000 in
    minutes instead of hours. No audit events (nothing at start-up reads them)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import uuid

    from sqlalchemy.ext.asyncio import create_async_engine

    from service.domain import EmailAction
    from service.store import tables as t

    now = datetime.now(timezone.utc)
    engine = create_async_engine(url)
    waiting: list[WaitingApproval] = []
    try:
        for start in range(0, len(schedule), chunk):
            runs: list[dict[str, Any]] = []
            approvals: list[dict[str, Any]] = []
            jobs: list[dict[str, Any]] = []
            for i in range(start, min(start + chunk, len(schedule))):
                run_id, approval_id, due = str(uuid.uuid4()), str(uuid.uuid4()), schedule[i]
                runs.append(dict(
                    id=run_id, kind="action", status="awaiting_approval", request=None, customer=None,
                    requested_by=None, callback_url=None, metadata={"bench": i}, policy=policy, summary=None,
                    failure_reason=None, created_at=now, updated_at=now))
                action = EmailAction(to=(f"customer{i}@example.com",), subject=f"Your refund #{i}",
                                     body=f"Dear customer {i},\n\nYour refund was issued today.\n\nSupport")
                approvals.append(dict(
                    id=approval_id, run_id=run_id, revision=1, status="pending", action=action.to_dict(),
                    policy=policy, requested_by=None, version=0, created_at=now, decided_at=None, decided_by=None,
                    approved_action=None, approved_sha256=None, sources=None, tool_call_id=None, mail_from=None,
                    mail_reply_to=None, content_hash_version=None, draft_version=1, stage=0, added_reviewers=None,
                    reminders_sent=0, escalated_at=None,
                    **{column: due.get(kind) for kind, column in TIMER_COLUMNS.items()}))
                for kind, due_at in due.items():
                    jobs.append(dict(
                        id=str(uuid.uuid4()), kind=kind, run_id=run_id,
                        payload={"approval_id": approval_id, "due_at": due_at.isoformat()}, status="queued",
                        attempts=0, max_attempts=5, due_at=due_at, leased_until=None, lease_token=None,
                        last_error=None, created_at=now, updated_at=now, finished_at=None))
                waiting.append(WaitingApproval(run_id, approval_id, dict(due)))
            async with engine.begin() as conn:
                await conn.execute(t.runs.insert(), runs)
                await conn.execute(t.approvals.insert(), approvals)
                if jobs:
                    await conn.execute(t.jobs.insert(), jobs)
            if progress and (len(waiting) % 20_000 < chunk or len(waiting) == len(schedule)):
                print(f"  {len(waiting):,} of {len(schedule):,} approvals written", file=sys.stderr)
    finally:
        await engine.dispose()
    return waiting


async def count_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of one read-only statement (bench bookkeeping: counts by status, lateness)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(text(sql))]
    finally:
        await engine.dispose()
