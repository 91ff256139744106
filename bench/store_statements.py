"""Diagnostic (no target): what one run's rows cost the SQLite writer, by how they are written.

The intake profile puts most of the event loop's time in the store writer, executing each
run's INSERTs one statement at a time. This writes the same rows (a run and its approval)
into a fresh database through the service's own engine set-up (`create_engines`: aiosqlite,
WAL, BEGIN IMMEDIATE), in transactions of --batch runs like a group commit, three ways:

    values       one `insert().values(**row)` per row, awaited (what service/runs.py does)
    constant     one constant `insert()` per row with its parameters, awaited
    executemany  one `insert()` per table per transaction with all the batch's rows

and prints wall time and process CPU (all threads) per run, modes interleaved in rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import ROOT, header, median_range

sys.path.insert(0, str(ROOT))
from service.store import tables as t  # noqa: E402
from service.store.db import create_engines  # noqa: E402

Row = dict[str, Any]


def run_rows(now: datetime) -> tuple[Row, Row]:
    run_id = str(uuid.uuid4())
    run = {"id": run_id, "kind": "action", "status": "awaiting_approval", "request": None, "customer": None,
           "requested_by": None, "callback_url": None, "metadata": {}, "policy": {"name": "default"},
           "created_at": now, "updated_at": now}
    approval = {"id": str(uuid.uuid4()), "run_id": run_id, "revision": 1, "status": "pending",
                "action": {"type": "send_email", "to": ["a@example.com"], "subject": "Hi", "body": "Hello"},
                "policy": {"name": "default"}, "requested_by": None, "version": 0, "created_at": now}
    return run, approval


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="countersign-bench-store-"))
    writer, reader = create_engines(f"sqlite+aiosqlite:///{workdir / 'bench.db'}")
    async with writer.begin() as conn:
        await conn.run_sync(t.metadata.create_all)
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for mode in ("values", "constant", "executemany"):
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(args.batches):
                    now = datetime.now(timezone.utc)
                    batch = [run_rows(now) for _ in range(args.batch)]
                    async with writer.begin() as conn:
                        if mode == "executemany":
                            await conn.execute(t.runs.insert(), [run for run, _ in batch])
                            await conn.execute(t.approvals.insert(), [approval for _, approval in batch])
                            continue
                        for run, approval in batch:
                            if mode == "values":
                                await conn.execute(t.runs.insert().values(**run))
                                await conn.execute(t.approvals.insert().values(**approval))
                            else:
                                await conn.execute(t.runs.insert(), run)
                                await conn.execute(t.approvals.insert(), approval)
                runs = args.batch * args.batches
                wall.setdefault(mode, []).append(1000 * (time.perf_counter() - started) / runs)
                cpu.setdefault(mode, []).append(1000 * (time.process_time() - cpu_started) / runs)
    finally:
        await writer.dispose()
        await reader.dispose()
        shutil.rmtree(workdir, ignore_errors=True)

    lines = [header("Store diagnostic: cost of one run's two INSERTs by statement style"),
             f"{args.batches} transactions of {args.batch} runs per mode and round, {args.rounds} rounds, "
             "medians (min-max):\n",
             "| mode | wall ms/run | CPU ms/run (all threads) |", "|---|---|---|"]
    for mode in wall:
        lines.append(f"| {mode} | {median_range(wall[mode], '{:.2f}')} | {median_range(cpu[mode], '{:.2f}')} |")
    ratio = statistics.median(cpu["values"]) / statistics.median(cpu["executemany"])
    lines += ["", f"- executemany per table uses 1/{ratio:.0f} of the CPU per run of one `.values()` statement per row"]
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="runs per transaction (group commit batch)")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
