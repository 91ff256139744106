"""`/console/levels`: service levels over the last 8 weeks, as numbers and a small chart."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from ..scopes import Scope
from ..store.db import utcnow
from . import queries
from .chart import bars
from .levels import compute, duration
from .pages import CONSOLE, page, render
from .sessions import Session

WEEKS = 8


@page(Scope.RUNS_READ)
async def service_levels(request: web.Request, session: Session) -> web.StreamResponse:
    store = request.app[CONSOLE].services.store
    now = utcnow()
    since = now - timedelta(weeks=WEEKS)
    levels = compute(await queries.decided_since(store, since), await queries.waiting(store), now, WEEKS)
    labels = [w.start.strftime("%d %b") for w in levels.weeks]
    weekly = bars("Expiries and rejections per week", labels, [
        ("expired", "expired", [w.expired for w in levels.weeks]),
        ("rejected", "rejected", [w.rejected for w in levels.weeks])])
    waiting = bars("Approvals waiting, by age", [label for label, _ in levels.waiting],
                   [("waiting", "waiting", [n for _, n in levels.waiting])])
    return render(request, "levels.html.j2", levels=levels, duration=duration, weekly=weekly,
                  waiting_chart=waiting, weeks=WEEKS)
