"""The intake floor: the least an aiohttp server can do and still meet the intake contract.

    POST /api/runs  check the webhook signature, validate the body (the service's own
                    pydantic model, unless --no-validation), then store the run, its
                    approval and two hash-chained audit events in SQLite and answer 202
                    once they are committed
    GET  /healthz   200

It is not the service and never will be: no SQLAlchemy, no job queue, no idempotency, no
metrics, no error handling beyond the happy path. It exists to answer one question in the
same run as the bare baseline: how much of the bare handler's throughput is left once the
work the issue asks for is done, with the cheapest plumbing Python has. That plumbing is:
a raw `sqlite3` connection owned by one writer thread, group commit (every request waiting
when a transaction starts goes into it: one COMMIT per batch, each statement a single
`executemany`), and one loop wake-up per batch to answer the waiting requests. Keys are
random UUIDs, as in the service, so both pay the same B-tree costs.

Run against a database made by `countersign migrate` (the bench does that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.api.schemas import RunCreate  # noqa: E402
from service.audit import event_hash  # noqa: E402
from service.domain import EmailAction  # noqa: E402
from service.policy import DEFAULT_POLICY  # noqa: E402
from service.signing import HEADER, verify  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"  # the intake bench's
POLICY = DEFAULT_POLICY  # what the service stores for a run naming no policy
POLICY_JSON = json.dumps(POLICY.to_dict())
RUN_COLUMNS = ("id", "kind", "status", "request", "customer", "requested_by", "callback_url", "metadata", "policy",
               "summary", "failure_reason", "created_at", "updated_at")
APPROVAL_COLUMNS = ("id", "run_id", "revision", "status", "action", "policy", "requested_by", "version", "created_at",
                    "decided_at", "decided_by", "approved_action", "approved_sha256", "sources", "tool_call_id")
AUDIT_COLUMNS = ("seq", "at", "run_id", "kind", "actor", "data", "prev_hash", "hash")


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@dataclass(frozen=True, slots=True)
class NewRun:
    run: tuple[Any, ...]
    approval: tuple[Any, ...]
    events: tuple[tuple[datetime, str, str, str, dict[str, Any]], ...]  # (at, run_id, kind, actor, data)


class Writer:
    """One thread, one connection, one transaction per batch of waiting runs."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop, batch_max: int = 256) -> None:
        self.loop = loop
        self.batch_max = batch_max
        self.queue: queue.SimpleQueue[tuple[asyncio.Future[None], NewRun]] = queue.SimpleQueue()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
            self.db.execute(f"PRAGMA {pragma}")
        threading.Thread(target=self._run, name="writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.batch_max:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._write([new for _, new in batch])
            self.loop.call_soon_threadsafe(_answer, [future for future, _ in batch])

    def _write(self, batch: list[NewRun]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        seq, prev = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        events = []
        for new in batch:
            for at, run_id, kind, actor, data in new.events:
                seq += 1
                digest = event_hash(prev, seq, at, run_id, kind, actor, data)
                events.append((seq, _sqlite_time(at), run_id, kind, actor, json.dumps(data), prev, digest))
                prev = digest
        db.executemany(insert_sql("runs", RUN_COLUMNS), [new.run for new in batch])
        db.executemany(insert_sql("approvals", APPROVAL_COLUMNS), [new.approval for new in batch])
        db.executemany(insert_sql("audit_events", AUDIT_COLUMNS), events)
        db.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        db.execute("COMMIT")


def _answer(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _sqlite_time(at: datetime) -> str:
    return at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")  # SQLAlchemy's SQLite format


WRITER = web.AppKey("writer", Writer)
VALIDATE = web.AppKey("validate", bool)


def parse(body: bytes, validate: bool) -> tuple[EmailAction, dict[str, Any], str | None]:
    if validate:
        data = RunCreate.model_validate_json(body)
        assert data.action is not None  # the bench sends pre-drafted actions only
        a = data.action
        action = EmailAction(to=tuple(a.to), cc=tuple(a.cc), subject=a.subject, body=a.body,
                             in_reply_to=a.in_reply_to, references=tuple(a.references))
        return action, data.metadata, data.requested_by
    raw = json.loads(body)
    a = raw["action"]
    return (EmailAction(to=tuple(a["to"]), cc=(), subject=a["subject"], body=a["body"], in_reply_to=None,
                        references=()), raw.get("metadata", {}), raw.get("requested_by"))


async def create_run(request: web.Request) -> web.Response:
    body = await request.read()
    verify(SECRET, request.headers[HEADER], body, now=time.time(), tolerance=300)
    action, metadata, requested_by = parse(body, request.app[VALIDATE])
    now = datetime.now(timezone.utc)
    at = _sqlite_time(now)
    run_id, approval_id = str(uuid.uuid4()), str(uuid.uuid4())
    new = NewRun(
        run=(run_id, "action", "awaiting_approval", None, None, requested_by, None, json.dumps(metadata), POLICY_JSON,
             None, None, at, at),
        approval=(approval_id, run_id, 1, "pending", json.dumps(action.to_dict()), POLICY_JSON, requested_by, 0, at,
                  None, None, None, None, None, None),
        events=((now, run_id, "run.created", requested_by or "api",
                 {"kind": "action", "policy": POLICY.name, "metadata": metadata}),
                (now, run_id, "approval.requested", "system",
                 {"approval_id": approval_id, "revision": 1, "content_sha256": action.content_sha256()})),
    )
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    request.app[WRITER].queue.put((future, new))
    await future
    url = f"http://{request.host}/api/runs/{run_id}"
    return web.json_response({"id": run_id, "status": "awaiting_approval", "url": url}, status=202,
                             headers={"Location": url})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database", type=Path, required=True, help="a SQLite file made by `countersign migrate`")
    parser.add_argument("--no-validation", action="store_true", help="json.loads instead of the pydantic model")
    args = parser.parse_args()

    async def start_writer(app: web.Application) -> None:
        app[WRITER] = Writer(args.database, asyncio.get_running_loop())

    app = web.Application()
    app[VALIDATE] = not args.no_validation
    app.on_startup.append(start_writer)
    app.router.add_post("/api/runs", create_run)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
