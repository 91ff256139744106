"""Writing what the audit throttle left out (service/audit_throttle.py) into the audit log.

Each `Summary` becomes one `audit.suppressed` event: on the run and as the actor of the
refusals it summarises, with the kind of event left out, how many, since when (the key's
last audited event), why now (its window ended, the key was forgotten, shutdown) and the
data of that audited event (`of`). Written in a transaction of its own after a refused
attempt of any key (`flush`, cheap when nothing is due) and for every count at shutdown
(`flush(everything=True)`); a write that fails gives its summaries back to the throttle.
"""

from __future__ import annotations

import logging

from . import metrics
from .audit_throttle import AuditThrottle, Summary
from .store.db import Store, Tx

log = logging.getLogger(__name__)

SUMMARY_EVENT = "audit.suppressed"


class AuditSummaries:
    def __init__(self, store: Store, throttle: AuditThrottle) -> None:
        self.store = store
        self.throttle = throttle

    async def flush(self, *, everything: bool = False) -> None:
        due = self.throttle.due(self.store.clock(), everything=everything)
        if due.evicted:
            metrics.AUDIT_THROTTLE_EVICTED.inc(due.evicted)
        if due.lost:
            metrics.AUDIT_SUMMARIES_LOST.inc(due.lost)
            log.warning("%d summaries of refused attempts were dropped unwritten", due.lost)
        if not due.summaries:
            return
        summaries = due.summaries

        async def op(tx: Tx) -> None:
            for summary in summaries:
                _write(tx, summary)

        try:
            await self.store.write(op)
        except Exception:  # the caller's own answer does not depend on it: try with the next
            log.warning("could not write %d audit summaries; kept for the next try", len(summaries), exc_info=True)
            self.throttle.requeue(summaries)


def _write(tx: Tx, summary: Summary) -> None:
    subject = summary.subject
    tx.audit(SUMMARY_EVENT, run_id=subject.run_id, actor=subject.actor, data={
        "summarises": subject.kind, "suppressed": summary.suppressed, "since": summary.since.isoformat(),
        "why": summary.why, "of": dict(subject.data)})
