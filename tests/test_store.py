"""The store's write path: queued inserts, what a statement makes them write first, and
ops on SQLite's writer thread. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from service.store import tables as t
from service.store.db import OpSuspended, Store, Tx

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)


def _run(run_id: str) -> dict[str, Any]:
    return dict(id=run_id, kind="action", status="awaiting_approval", request=None, customer=None, requested_by=None,
                callback_url=None, metadata={}, policy={}, summary=None, failure_reason=None, created_at=NOW,
                updated_at=NOW)


def _approval(approval_id: str, run_id: str) -> dict[str, Any]:
    return dict(id=approval_id, run_id=run_id, revision=1, status="pending", action={}, policy={}, requested_by=None,
                version=0, created_at=NOW, decided_at=None, decided_by=None, approved_action=None, approved_sha256=None,
                sources=None, tool_call_id=None)


async def test_a_statement_sees_the_rows_its_op_queued_in_the_tables_it_needs(store: Store) -> None:
    run_id, approval_id = str(uuid.uuid4()), str(uuid.uuid4())

    async def op(tx: Tx) -> tuple[int, set[str], int, set[str]]:
        tx.insert(t.runs, _run(run_id))
        tx.insert(t.approvals, _approval(approval_id, run_id))
        tx.insert(t.jobs, dict(id=str(uuid.uuid4()), kind="k", run_id=run_id, payload={}, status="queued",
                               attempts=0, max_attempts=1, due_at=NOW, leased_until=None, lease_token=None,
                               last_error=None, created_at=NOW, updated_at=NOW, finished_at=None))
        # Reading runs needs the run row only: approvals and jobs stay queued.
        runs = (await tx.execute(sa.select(sa.func.count()).select_from(t.runs)
                                 .where(t.runs.c.id == run_id))).scalar_one()
        after_runs = {table.name for table in tx._inserts}
        # Reading approvals writes approvals (and its parent, runs, already written).
        approvals = (await tx.execute(sa.select(sa.func.count()).select_from(t.approvals)
                                      .where(t.approvals.c.run_id == run_id))).scalar_one()
        return runs, after_runs, approvals, {table.name for table in tx._inserts}

    runs, after_runs, approvals, left = await store.write(op)
    assert (runs, approvals) == (1, 1)
    assert after_runs == {"approvals", "jobs"} and left == {"jobs"}

    async def count_jobs(conn: Any) -> int:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t.jobs))).scalar_one()

    assert await store.read(count_jobs) == 1  # the rest went in at commit


async def test_a_delete_writes_the_queued_rows_that_reference_its_table_first(store: Store) -> None:
    run_id, approval_id = str(uuid.uuid4()), str(uuid.uuid4())

    async def setup(tx: Tx) -> None:
        tx.insert(t.runs, _run(run_id))

    await store.write(setup)

    class RefusedAtTheDelete(Exception):
        pass

    async def op(tx: Tx) -> None:
        tx.insert(t.approvals, _approval(approval_id, run_id))
        # The approval must be in its table before the delete runs, so that the foreign
        # key refuses the delete itself, not the insert at commit after the op went on.
        try:
            await tx.execute(t.runs.delete().where(t.runs.c.id == run_id))
        except sa.exc.IntegrityError:
            raise RefusedAtTheDelete() from None

    with pytest.raises(RefusedAtTheDelete):
        await store.write(op)


async def test_text_statements_write_every_queued_row_first(store: Store) -> None:
    run_id = str(uuid.uuid4())

    async def op(tx: Tx) -> int:
        tx.insert(t.runs, _run(run_id))
        return (await tx.execute(sa.text("SELECT count(*) FROM runs WHERE id = :id"), {"id": run_id})).scalar_one()

    assert await store.write(op) == 1


@sqlite_only
async def test_an_op_that_waits_on_something_else_is_refused_and_the_store_goes_on(store: Store) -> None:
    async def sleepy(tx: Tx) -> None:
        tx.audit("sleepy", run_id=None, actor="test")
        await asyncio.sleep(0)

    async def fine(tx: Tx) -> str:
        tx.audit("fine", run_id=None, actor="test")
        return "ok"

    results = await asyncio.gather(store.write(sleepy), store.write(fine), return_exceptions=True)
    assert isinstance(results[0], OpSuspended) and results[1] == "ok"

    async def kinds(conn: Any) -> list[str]:
        return list((await conn.execute(sa.select(t.audit_events.c.kind))).scalars())

    assert await store.read(kinds) == ["audit.keyed", "fine"]  # the marker opens a keyed chain


@sqlite_only
async def test_requests_read_on_a_store_thread_and_jobs_on_the_loop(store: Store) -> None:
    from service.foreground import mark_job
    from service.store.db import ThreadConnection

    async def kind(conn: Any) -> type:
        return type(conn)

    async def as_job() -> type:
        mark_job()
        return await store.read(kind)

    assert await store.read(kind) is ThreadConnection
    assert await asyncio.create_task(as_job()) is sa.ext.asyncio.AsyncConnection
    assert await store.read(kind) is ThreadConnection  # the mark stays in the job's task


def _audit_op(kind: str, *, fail: BaseException | None = None, on_rerun: BaseException | None = None,
              block: Any = None) -> Any:
    """An op writing one audit event. `fail` is raised every time (failing the whole batch,
    then itself alone), `on_rerun` when it runs again alone; `block` (a threading.Event pair) holds the
    writer thread inside its re-run until released."""
    runs = 0

    async def op(tx: Tx) -> str:
        nonlocal runs
        runs += 1
        tx.audit(kind, run_id=None, actor="test")
        if fail is not None:
            raise fail
        if runs > 1 and on_rerun is not None:
            raise on_rerun
        if runs > 1 and block is not None:
            entered, release = block
            entered.set()
            release.wait(10)
        return kind

    return op


async def _stored_kinds(store: Store) -> list[str]:
    async def kinds(conn: Any) -> list[str]:
        # The chain's own `audit.keyed` marker is not one of the ops' events.
        return sorted(k for k in (await conn.execute(sa.select(t.audit_events.c.kind))).scalars()
                      if k != "audit.keyed")

    return await store.read(kinds)


async def test_a_cancelled_error_raised_by_an_op_during_the_one_by_one_rerun_answers_everyone(store: Store) -> None:
    """The batch fails (one op raises), its ops are re-run alone, and one of them raises
    CancelledError there: its caller gets an error, the others their own answers, and the
    store keeps writing."""
    # The failing op last, so every op has run once in the batch before the re-run.
    ops = [_audit_op("a"), _audit_op("c"), _audit_op("cancels", on_rerun=asyncio.CancelledError()), _audit_op("e"),
           _audit_op("bad", fail=ValueError("boom"))]
    writes = [asyncio.ensure_future(store.write(op)) for op in ops]  # queued together: one batch
    done, pending = await asyncio.wait(writes, timeout=10)
    assert not pending, "a caller of the failed batch was left waiting"
    results = [w.exception() or w.result() for w in writes]
    assert results[:2] == ["a", "c"] and results[3] == "e", results
    assert isinstance(results[2], RuntimeError) and "cancelled" in str(results[2])
    assert isinstance(results[4], ValueError)
    assert await asyncio.wait_for(store.write(_audit_op("after")), 10) == "after"  # the writer lives on
    assert await _stored_kinds(store) == ["a", "after", "c", "e"]


@sqlite_only
async def test_closing_the_store_during_the_one_by_one_rerun_answers_every_caller(store: Store) -> None:
    """The store's writer task is cancelled while it re-runs a failed batch op by op: the op
    running gets an answer, and so does every op of the batch not yet re-run."""
    import threading

    entered, release = threading.Event(), threading.Event()
    ops = [_audit_op("a"), _audit_op("blocks", block=(entered, release)), _audit_op("c"), _audit_op("d"),
           _audit_op("bad", fail=ValueError("boom"))]
    writes = [asyncio.ensure_future(store.write(op)) for op in ops]
    try:
        assert await asyncio.to_thread(entered.wait, 10), "the re-run never reached the blocking op"
        assert store._task is not None
        store._task.cancel()  # what Store.close() does first
        done, pending = await asyncio.wait(writes, timeout=10)
        assert not pending, "callers of the batch were left waiting"
    finally:
        release.set()
    results = [w.exception() or w.result() for w in writes]
    assert results[0] == "a", results
    for r in results[1:]:  # the op being re-run, and the ones after it
        assert isinstance(r, RuntimeError) and "store closed" in str(r), results
