"""How late the event loop runs what is due: a sleep that should last `interval` and how
much longer it took. Lease renewals are due every third of a lease; anything blocking the
loop for seconds (a synchronous import, a big parse) shows here first."""

from __future__ import annotations

import asyncio
import logging
import time

from . import metrics

log = logging.getLogger(__name__)

WARN_AFTER_SECONDS = 1.0


async def watch_loop_lag(interval: float = 0.5) -> None:
    while True:
        started = time.monotonic()
        await asyncio.sleep(interval)
        lag = time.monotonic() - started - interval
        metrics.LOOP_LAG.observe(max(lag, 0.0))
        if lag > WARN_AFTER_SECONDS:
            log.warning("the event loop was blocked for %.1f s (job leases are renewed on it)", lag)
