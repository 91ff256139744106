"""Engines and the one way state is written: `Store.write(op)`, committed in groups.

Every state change is an async function of a `Tx`. Concurrent writes queue up and one
writer task runs as many as are waiting in a single transaction (group commit), then
answers each caller once that transaction is durable. SQLite has one writer anyway; this
turns a commit per request into a commit per batch. If a batch fails, its ops are run
again one transaction each, so one bad op never fails its neighbours.

Ops must be pure database work (no network calls, no waiting on anything but `tx`)
because they may run twice, and because on SQLite they run in the writer's own thread:
SQLite is a library, not a server, so a whole batch is handed to one thread holding a
plain `sqlite3` connection, and the event loop hears back once per batch instead of
twice per statement. `Tx.execute` is a coroutine either way; on that thread it never
suspends, and an op that does is refused (`OpSuspended`).

Writes that record an external side effect already done (an SMTP server's 250, a posted
card, a sent callback) and lease renewals are `urgent`: they skip the jobs' hold for
foreground requests and make up the next batch ahead of everything queued, so the time
between the peer's acceptance and the durable record is at most the batch in flight plus
their own commit. A process killed in that window repeats the side effect.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import visitors

from ..audit import KEYED_ALG, MARKER_KIND, AuditEvent, AuditKeyError, ChainKey, marker_data
from ..foreground import Foreground, in_job
from ..redact import redact_data, redact_urls_in
from . import tables as t

log = logging.getLogger(__name__)
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# NaN/Infinity are not JSON: PostgreSQL refuses them and no reader could parse them back.
_JSON_OPTIONS: dict[str, Any] = {"json_serializer": functools.partial(json.dumps, allow_nan=False)}


def create_engines(url: str) -> tuple[AsyncEngine, AsyncEngine]:
    """(writer, reader). On PostgreSQL they are the same engine."""
    if not url.startswith("sqlite"):
        engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, **_JSON_OPTIONS)
        return engine, engine
    writer = create_async_engine(url, pool_size=1, max_overflow=0, **_JSON_OPTIONS)
    reader = create_async_engine(url, pool_size=5, max_overflow=5, **_JSON_OPTIONS)
    _sqlite_setup(writer.sync_engine, begin="BEGIN IMMEDIATE")
    _sqlite_setup(reader.sync_engine, begin="BEGIN")
    return writer, reader


def create_sqlite_thread_engine(url: str, *, pool_size: int, begin: str) -> sa.Engine:
    """A plain engine on the same SQLite file, for the store's own threads."""
    sync_url = sa.make_url(url).set(drivername="sqlite")
    engine = sa.create_engine(sync_url, pool_size=pool_size, max_overflow=0, **_JSON_OPTIONS)
    _sqlite_setup(engine, begin=begin)
    return engine


@dataclass(frozen=True, slots=True)
class ThreadConnection:
    """What a read function gets on a store thread: `await conn.execute(...)` as on an
    AsyncConnection, run at once on a plain connection."""

    conn: sa.Connection

    @property
    def dialect(self) -> sa.Dialect:
        return self.conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self.conn.execute(statement, parameters)


def _sqlite_setup(engine: sa.Engine, begin: str) -> None:
    # pysqlite's own transaction handling is turned off so that the writer can take the
    # write lock at BEGIN (IMMEDIATE): a deferred transaction that reads then writes can
    # fail with SQLITE_BUSY when another process (the CLI) holds the lock.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)


_AUDIT_HEAD = sa.select(t.audit_head.c.seq, t.audit_head.c.hash, t.audit_head.c.alg).where(
    t.audit_head.c.id == 1)  # seeded by 0001
_AUDIT_HEAD_LOCKED = _AUDIT_HEAD.with_for_update()
_AUDIT_HEAD_MOVE = t.audit_head.update().where(t.audit_head.c.id == 1).values(
    seq=sa.bindparam("seq", type_=t.audit_head.c.seq.type), hash=sa.bindparam("hash", type_=t.audit_head.c.hash.type),
    alg=sa.bindparam("alg", type_=t.audit_head.c.alg.type))
_AUDIT_MARKER = sa.select(t.audit_events).where(t.audit_events.c.kind == MARKER_KIND).order_by(
    t.audit_events.c.seq).limit(1)


@dataclass
class Tx:
    """One transaction as seen by an op: the connection, buffered inserts and audit events.

    `insert` only queues a row; the queue is written one `executemany` per table (in
    foreign-key order) at commit, or earlier for the tables a statement run through
    `execute` needs: those it names and the tables they reference (and, for a DELETE, the
    tables referencing them). So an op never reads or updates around a row it queued,
    and the inserts of a whole batch cost a statement per table, not one per op.
    """

    conn: AsyncConnection | sa.Connection  # a plain Connection on the SQLite writer's thread
    now: datetime = field(default_factory=utcnow)
    _inserts: dict[sa.Table, list[dict[str, Any]]] = field(default_factory=dict)
    _audit: list[tuple[str | None, str, str, dict[str, Any]]] = field(default_factory=list)
    _after_commit: list[Callable[[], None]] = field(default_factory=list)
    audit_key: ChainKey | None = None
    _key_chain: bool = False

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    def insert(self, table: sa.Table, row: dict[str, Any]) -> None:
        self._inserts.setdefault(table, []).append(row)

    def queued(self, table: sa.Table, row_id: str) -> dict[str, Any] | None:
        """The row with `id` this transaction queued and has not written yet (to amend in
        place: an UPDATE would write every queued row first), or None."""
        for row in reversed(self._inserts.get(table, ())):
            if row.get("id") == row_id:
                return row
        return None

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if self._inserts:
            needed = _tables_needed(statement)
            if needed is None:
                await self.flush_inserts()
            else:
                for table in _TABLES_IN_FK_ORDER:
                    if table in needed and table in self._inserts:
                        await self._run(table.insert(), self._inserts.pop(table))
        return await self._run(statement, parameters)

    async def _run(self, statement: Any, parameters: Any = None) -> Any:
        if isinstance(self.conn, sa.Connection):
            return self.conn.execute(statement, parameters)
        return await self.conn.execute(statement, parameters)

    async def flush_inserts(self) -> None:
        if not self._inserts:
            return
        pending, self._inserts = self._inserts, {}
        for table in _TABLES_IN_FK_ORDER:
            rows = pending.pop(table, None)
            if rows:
                await self._run(table.insert(), rows)

    async def flush(self) -> list[AuditEvent]:
        await self.flush_inserts()
        return await self.flush_audit()

    def audit(self, kind: str, *, run_id: str | None, actor: str, data: dict[str, Any] | None = None) -> None:
        # The one way into the audit log: no URL in it keeps its credentials.
        self._audit.append((run_id, kind, redact_urls_in(actor), redact_data(data or {})))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction is durable (wake workers, count metrics)."""
        self._after_commit.append(callback)

    def key_chain(self) -> None:
        """At commit, start the keyed part of the chain if it has not started (no event needed)."""
        self._key_chain = True

    async def flush_audit(self) -> list[AuditEvent]:
        if not self._audit and not self._key_chain:
            return []
        if self.audit_key is None:
            raise AuditKeyError("this store was opened without an audit key; audit events cannot be written")
        head = (await self._run(_AUDIT_HEAD if self.dialect == "sqlite" else _AUDIT_HEAD_LOCKED)).one()
        seq, prev = head.seq, head.hash
        pending = list(self._audit)
        if head.alg is None:  # the first keyed event: the marker closing the legacy part
            pending.insert(0, (None, MARKER_KIND, "system", marker_data(head.seq)))
        events = []
        for run_id, kind, actor, data in pending:
            seq += 1
            digest = self.audit_key.event_hash(prev, seq, self.now, run_id, kind, actor, data)
            events.append(AuditEvent(seq, self.now, run_id, kind, actor, data, prev, digest, KEYED_ALG))
            prev = digest
        self._audit.clear()
        self._key_chain = False
        if not events:
            return []
        await self._run(
            t.audit_events.insert(),
            [
                {"seq": e.seq, "at": e.at, "run_id": e.run_id, "kind": e.kind, "actor": e.actor,
                 "data": e.data, "prev_hash": e.prev_hash, "hash": e.hash, "alg": e.alg}
                for e in events
            ],
        )
        await self._run(_AUDIT_HEAD_MOVE, {"seq": seq, "hash": prev, "alg": KEYED_ALG})
        return events


_TABLES_IN_FK_ORDER = t.metadata.sorted_tables  # a topological sort: worth doing once


def _related(table: sa.Table, step: Callable[[sa.Table], set[sa.Table]]) -> frozenset[sa.Table]:
    seen, todo = {table}, [table]
    while todo:
        for other in step(todo.pop()) - seen:
            seen.add(other)
            todo.append(other)
    return frozenset(seen)


def _parents(table: sa.Table) -> set[sa.Table]:
    return {fk.column.table for fk in table.foreign_keys}


def _children(table: sa.Table) -> set[sa.Table]:
    return {other for other in _TABLES_IN_FK_ORDER if table in _parents(other)}


_WITH_PARENTS = {table: _related(table, _parents) for table in _TABLES_IN_FK_ORDER}
_WITH_CHILDREN = {table: _related(table, _children) for table in _TABLES_IN_FK_ORDER}


def _tables_needed(statement: Any) -> frozenset[sa.Table] | None:
    """Tables whose queued rows must be written before `statement` runs; None: all of them
    (a statement naming no table we know, such as text)."""
    cached = getattr(statement, "_countersign_needs", False)
    if cached is not False:
        return cast("frozenset[sa.Table] | None", cached)
    named = {e for e in visitors.iterate(statement) if isinstance(e, sa.Table)}
    needed: frozenset[sa.Table] | None = None
    if named and named <= _WITH_PARENTS.keys():
        closure = _WITH_CHILDREN if isinstance(statement, sa.Delete) else {}
        named |= {child for n in named for child in closure.get(n, ())}
        needed = frozenset().union(*(_WITH_PARENTS[n] for n in named))
    try:  # statements built once (module constants) keep the answer
        statement._countersign_needs = needed
    except AttributeError:
        pass
    return needed


Op = Callable[[Tx], Awaitable[T]]


class OpSuspended(RuntimeError):
    """A store op waited on something other than its transaction (see the module doc)."""


def _drive(awaitable: Awaitable[T]) -> T:
    """Run a coroutine that never suspends to its end, on the calling thread."""
    steps = awaitable.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    steps.close()
    raise OpSuspended("a store op or read waited on something other than its connection; "
                      "they must be pure database work")


@dataclass
class _Pending:
    op: Op[Any]
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class SqliteThreads:
    """SQLite's writes in one thread (one connection); the reads of requests in two more.

    Jobs' reads stay on the event loop (aiosqlite): in threads, several at once took the
    GIL from the loop for 20-60 ms while cards were posted (bench/RESULTS.md), against
    under 10 ms on the loop, and a job does not need the lower latency."""

    write_engine: sa.Engine
    read_engine: sa.Engine
    writer: concurrent.futures.ThreadPoolExecutor
    readers: concurrent.futures.ThreadPoolExecutor

    @classmethod
    def open(cls, url: str, readers: int = 2) -> SqliteThreads:
        return cls(create_sqlite_thread_engine(url, pool_size=1, begin="BEGIN IMMEDIATE"),
                   create_sqlite_thread_engine(url, pool_size=readers, begin="BEGIN"),
                   concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer"),
                   concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="store-reader"))

    async def close(self) -> None:
        # Each thread finishes what it runs first. The writer's connection is closed on its
        # own thread; the readers' once their threads have stopped.
        await asyncio.wrap_future(self.writer.submit(self.write_engine.dispose))
        self.writer.shutdown(wait=False)
        await asyncio.to_thread(self.readers.shutdown, wait=True)
        self.read_engine.dispose()


class Store:
    def __init__(self, writer: AsyncEngine, reader: AsyncEngine, batch_max: int = 256,
                 threads: SqliteThreads | None = None, audit_key: ChainKey | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        # Every transaction's `now` (and so every due time and timer) comes from here: tests
        # move a controlled clock instead of sleeping.
        self.clock = clock
        self.writer_engine = writer  # migrations, and reads and writes too unless `threads` is set
        self.reader_engine = reader
        self.batch_max = batch_max
        self._queue: collections.deque[_Pending] = collections.deque()
        self._urgent: collections.deque[_Pending] = collections.deque()
        self._queued = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._threads = threads
        # Audit events are chained with it; a store without one can read, and write no event.
        self.audit_key = audit_key
        # Set where the app is wired: jobs' reads and writes wait while requests are answered.
        self.foreground: Foreground | None = None

    @classmethod
    def from_url(cls, url: str, batch_max: int = 256, audit_key: str | None = None,
                 clock: Callable[[], datetime] = utcnow) -> Store:
        writer, reader = create_engines(url)
        return cls(writer, reader, batch_max, SqliteThreads.open(url) if url.startswith("sqlite") else None,
                   ChainKey(audit_key) if audit_key is not None else None, clock=clock)

    async def key_audit_chain(self) -> None:
        """At start: begin the keyed chain (the audit.keyed marker) if it has not begun, and
        refuse a key other than the one the chain was keyed with (replicas must share it)."""
        key = self.audit_key
        if key is None:
            raise AuditKeyError("no audit key configured")

        async def op(tx: Tx) -> None:
            row = (await tx.execute(_AUDIT_MARKER)).first()
            if row is None:
                tx.key_chain()
                return
            marker = AuditEvent(row.seq, row.at, row.run_id, row.kind, row.actor, row.data, row.prev_hash,
                                row.hash, row.alg)
            if marker.alg != KEYED_ALG or not key.check(marker):
                raise AuditKeyError(
                    f"COUNTERSIGN_AUDIT_KEY is not the key this audit log was keyed with (marker event {row.seq}); "
                    "every process must use the same key")

        await self.write(op)

    @property
    def dialect(self) -> str:
        return self.writer_engine.dialect.name

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._writer_loop(), name="store-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for pending in [*self._urgent, *self._queue]:
            _settle(pending.future, exc=RuntimeError("store closed before the write ran"))
        self._urgent.clear()
        self._queue.clear()
        if self._threads is not None:
            await self._threads.close()
        await self.writer_engine.dispose()
        if self.reader_engine is not self.writer_engine:
            await self.reader_engine.dispose()

    async def read(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """`fn(conn)` in one read transaction; `conn` has `await conn.execute(...)` and
        `conn.dialect` (an AsyncConnection, or a ThreadConnection for a request on SQLite)."""
        background = in_job()
        if self.foreground is not None and background:
            await self.foreground.wait_clear()
        if self._threads is not None and not background:
            return await asyncio.wrap_future(self._threads.readers.submit(self._read_in_thread, fn))
        async with self.reader_engine.connect() as conn:
            return await fn(conn)

    def _read_in_thread(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        assert self._threads is not None
        with self._threads.read_engine.connect() as conn:
            return _drive(fn(ThreadConnection(conn)))

    async def write(self, op: Op[T], *, urgent: bool = False) -> T:
        """Run `op` in the next batch that has room for it; `urgent`: in the very next one,
        ahead of queued ops, and never held back for foreground requests (see module doc)."""
        if self.foreground is not None and in_job() and not urgent:
            await self.foreground.wait_clear()
        if self._task is None:
            # Not started (CLI, tests of one op): run it directly in its own transaction.
            return await self._run_alone(op)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._queue).append(_Pending(op, future))
        self._queued.set()
        return await future

    async def write_apart(self, op: Op[T]) -> T:
        """Run `op` now in a transaction of its own, beside the writer's batches. On
        PostgreSQL a batch can wait on a row lock (another replica's transaction, an
        operator's `SELECT ... FOR UPDATE`); what must not wait with it (lease renewals:
        a replica whose writes are stuck must not also lose its leases, or the jobs it is
        in the middle of run twice) goes here. SQLite has one writer, so there it is an
        urgent write."""
        if self._threads is not None:
            return await self.write(op, urgent=True)
        return await self._run_alone(op)

    def _next_batch(self) -> list[_Pending]:
        # Urgent ops go alone: a batch of them commits as fast as the database allows,
        # not after the ops of a burst queued before them.
        source = self._urgent or self._queue
        batch: list[_Pending] = []
        while source and len(batch) < self.batch_max:
            pending = source.popleft()
            if not pending.future.cancelled():
                batch.append(pending)
        return batch

    async def _run_alone(self, op: Op[T]) -> T:
        if self._threads is not None:
            tx, [result] = await self._in_thread([op])
        else:
            async with self.writer_engine.begin() as conn:
                tx = Tx(conn, now=self.clock(), audit_key=self.audit_key)
                result = await op(tx)
                await tx.flush()
        for callback in tx._after_commit:
            _safe_call(callback)
        return result

    async def _writer_loop(self) -> None:
        while True:
            if not self._urgent and not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            try:
                try:
                    await self._run_batch(batch)
                except asyncio.CancelledError:
                    if _being_cancelled():
                        raise
                    await self._run_one_by_one(batch)  # an op raised it, not `close()`: like any failure
                except Exception:  # the batch is rolled back; isolate the op that failed
                    await self._run_one_by_one(batch)
            finally:
                # However this batch ended (the store closing mid-batch or mid re-run included),
                # every caller gets an answer: no `await store.write()` waits forever.
                for p in batch:
                    _settle(p.future, exc=RuntimeError("store closed while the write ran; "
                                                       "it may or may not have been committed"))

    async def _run_one_by_one(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            log.debug("write batch of %d failed; running its ops one by one", len(batch))
        for p in batch:
            try:
                result = await self._run_alone(p.op)
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # the store is closing: the loop's `finally` answers the rest
                _settle(p.future, exc=RuntimeError("the write was cancelled while it ran (rolled back)"))
            except Exception as exc:  # the caller gets its own error
                _settle(p.future, exc=exc)
            else:
                _settle(p.future, result=result)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        results: list[Any] = []
        if self._threads is not None:
            tx, results = await self._in_thread([p.op for p in batch])
        else:
            async with self.writer_engine.begin() as conn:
                tx = Tx(conn, now=self.clock(), audit_key=self.audit_key)
                for p in batch:
                    results.append(await p.op(tx))
                await tx.flush()
        for callback in tx._after_commit:
            _safe_call(callback)
        for p, result in zip(batch, results, strict=True):
            _settle(p.future, result=result)


    async def _in_thread(self, ops: list[Op[Any]]) -> tuple[Tx, list[Any]]:
        assert self._threads is not None
        return await asyncio.wrap_future(self._threads.writer.submit(self._run_in_thread, ops))

    def _run_in_thread(self, ops: list[Op[Any]]) -> tuple[Tx, list[Any]]:
        assert self._threads is not None
        with self._threads.write_engine.begin() as conn:
            tx = Tx(conn, now=self.clock(), audit_key=self.audit_key)
            results = [_drive(op(tx)) for op in ops]
            _drive(tx.flush())
        return tx, results


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (`Store.close()`), rather than an
    op having raised `CancelledError` of its own (a driver timeout, a cancelled await)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _settle(future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _safe_call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # a failing notification must not undo a committed write
        log.exception("after-commit callback failed")
