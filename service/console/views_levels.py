"""`/console/levels`: service levels over the last 8 weeks, as numbers and a small chart."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import web

from ..scopes import Scope
from . import queries
from .chart import bars
from .levels import compute, duration
from .pages import CONSOLE, page, render
from .sessions import Session

WEEKS = 8


@page(Scope.RUNS_READ)
async def service_levels(request: web.Request, session: Session) -> web.StreamResponse:
    store = request.app[CONSOLE].services.store
    now = store.clock()
    since = now - timedelta(weeks=WEEKS)
    decided, waiting_rows = await queries.decided_since(store, since), await queries.waiting(store)
    # Sorting and counting up to 20,000 approvals: off the event loop.
    levels = await asyncio.to_thread(compute, decided, waiting_rows, now, WEEKS)
    labels = [w.start.strftime("%d %b") for w in levels.weeks]
    weekly = bars("Expiries and rejections per week", labels, [
        ("expired", "expired", [w.expired for w in levels.weeks]),
        ("rejected", "rejected", [w.rejected for w in levels.weeks])])
    waiting = bars("Approvals waiting, by age", [label for label, _ in levels.waiting],
                   [("waiting", "waiting", [n for _, n in levels.waiting])])
    return render(request, "levels.html.j2", levels=levels, duration=duration, weekly=weekly,
                  waiting_chart=waiting, weeks=WEEKS)
