"""`/console/audit`: the audit log, newest first, with the result of `audit verify`; and its
export as JSON lines, exactly as stored (`audit:read`; the export itself is audited)."""

from __future__ import annotations

import json
import re

from aiohttp import web

from ..scopes import Scope
from ..store.db import Tx
from . import queries
from .pages import CONSOLE, HEADERS, error_page, page, render
from .sessions import VIA, Session

PAGE_SIZE = 100

_NUMBER = re.compile(r"[0-9]{1,18}", re.ASCII)  # str.isdigit() also takes "²", which int() refuses


@page(Scope.AUDIT_READ)
async def audit_log(request: web.Request, session: Session) -> web.StreamResponse:
    console = request.app[CONSOLE]
    before_text = request.query.get("before")
    before = None
    if before_text:
        if not _NUMBER.fullmatch(before_text):
            return error_page(request, 422, "Page not valid", "before must be an event number.")
        before = int(before_text)
    events = await queries.audit_page(console.services.store, before, PAGE_SIZE)
    checked = await console.audit.result(fresh=request.query.get("verify") == "now")
    older = events[-1].seq if len(events) == PAGE_SIZE else None
    return render(request, "audit.html.j2", events=events, checked=checked, older=older,
                  dumps=lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True))


@page(Scope.AUDIT_READ)
async def export(request: web.Request, session: Session) -> web.StreamResponse:
    console = request.app[CONSOLE]
    store = console.services.store

    async def op(tx: Tx) -> None:
        tx.audit("console.audit_exported", run_id=None, actor=session.actor, data=dict(VIA))

    await store.write(op)
    response = web.StreamResponse(headers={
        **HEADERS, "Content-Type": "application/x-ndjson; charset=utf-8",
        "Content-Disposition": 'attachment; filename="countersign-audit.jsonl"'})
    await response.prepare(request)
    after = 0
    while True:
        page = await queries.audit_events_after(store, after, 2000)
        if page:
            await response.write("".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in page).encode())
            after = page[-1].seq
        if len(page) < 2000:
            break
    await response.write_eof()
    return response
