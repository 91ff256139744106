"""How many SQL statements one idle `countersign serve` replica issues per minute on PostgreSQL.

Starts its own PostgreSQL (tests/peers/postgres.py's binaries and settings, plus
`log_statement=all` with the database name in every log line), migrates a fresh database,
starts one replica with the default settings (only the database URL, an API token, a data
directory and a port set), lets it settle, then counts over `--minutes`:

- statements: the PostgreSQL log's `statement:` and `execute` lines of that database (every
  statement the replica sent, BEGIN/COMMIT included), by kind;
- transactions: `xact_commit + xact_rollback` of that database in `pg_stat_database` (read
  from another database, so the reading is not counted).

`--code DIR` runs the service code of another checkout (e.g. a `git worktree` of an older
commit) with this script: `serve` starts with DIR as its working directory.

Usage: .venv/bin/python bench/idle_load.py [--minutes 1] [--settle 15] [--code DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench._common import ROOT, free_port, header  # noqa: E402
from tests.peers.postgres import PostgresServer  # noqa: E402
from tests.processes import ServiceProcess  # noqa: E402


class LoggingPostgres(PostgresServer):
    def start(self) -> None:
        self._run("initdb", "--no-sync", "--auth=trust", "-U", "app", "-D", str(self.data))
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o",
                  f"-k {self.dir} -c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                  "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                  "-c log_statement=all -c log_line_prefix='db=%d '", "start")

    @property
    def log(self) -> Path:
        return self.dir / "log"


STATEMENT = re.compile(r"^db=(\S*) LOG:  (?:statement|execute [^:]*): (.*)$")


def statements(log: Path, start: int, end: int, db: str) -> collections.Counter[str]:
    with log.open("rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    kinds: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = STATEMENT.match(line)
        if m and m.group(1) == db:
            sql = re.sub(r"\s+", " ", m.group(2).strip())
            kinds[re.sub(r"\$\d+|'[^']*'|\b\d+\b", "?", sql)[:90]] += 1
    return kinds


async def xacts(engine: sa.ext.asyncio.AsyncEngine, db: str) -> int:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int((await conn.execute(sa.text(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"), {"d": db})).scalar_one())


def git_commit(directory: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after /readyz before counting")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose service/ is run")
    args = parser.parse_args()
    code = args.code.resolve()
    print(header("Idle load: SQL statements of one idle replica on PostgreSQL (bench/idle_load.py)"))
    print(f"- service code measured: `{code}` at commit {git_commit(code)}\n")
    work = Path(tempfile.mkdtemp(prefix="countersign-idle-"))
    pg = LoggingPostgres(free_port())
    pg.start()
    try:
        url = pg.create_database()
        db = url.rsplit("/", 1)[1]
        port = free_port()
        env = {"COUNTERSIGN_DATABASE_URL": url, "COUNTERSIGN_API_TOKEN": "idle-api-token-0123456789",
               "COUNTERSIGN_DATA_DIR": str(work / "data"), "COUNTERSIGN_PORT": str(port),
               "COUNTERSIGN_LOG_LEVEL": "WARNING"}
        base = {k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")}
        subprocess.run([sys.executable, "-m", "service", "migrate"], env={**base, **env}, check=True,
                       capture_output=True, cwd=code)
        os.chdir(code)  # `serve` imports the service package from its working directory
        service = ServiceProcess(env, port, work / "service.log")
        await service.start(ready_timeout=120)
        stats = create_async_engine(url.rsplit("/", 1)[0] + "/postgres")
        try:
            await asyncio.sleep(args.settle)
            start_offset, start_x, t0 = pg.log.stat().st_size, await xacts(stats, db), time.monotonic()
            await asyncio.sleep(args.minutes * 60)
            end_offset, end_x, t1 = pg.log.stat().st_size, await xacts(stats, db), time.monotonic()
        finally:
            service.kill()
            await stats.dispose()
        kinds = statements(pg.log, start_offset, end_offset, db)
        minutes = (t1 - t0) / 60
        total = sum(kinds.values())
        print(f"Window: {minutes:.2f} min, starting {args.settle:.0f} s after /readyz, default settings.\n")
        print(f"- statements: **{total / minutes:.1f} per minute** ({total} in the window)")
        print(f"- transactions (pg_stat_database xact_commit + xact_rollback): {(end_x - start_x) / minutes:.1f} per minute")
        print("\n| statement | per minute |\n|---|---|")
        for kind, n in kinds.most_common():
            print(f"| `{kind}` | {n / minutes:.1f} |")
    finally:
        pg.stop()


if __name__ == "__main__":
    asyncio.run(main())
