"""Prometheus metrics (prometheus-client), named the Prometheus way: `countersign_*_total`."""

import time
from collections.abc import Callable

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "countersign_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "countersign_http_request_duration_seconds", "Time to answer an HTTP request", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RUNS_CREATED = Counter("countersign_runs_created_total", "Runs accepted by the ops API", ["kind"])
DECISIONS = Counter("countersign_decisions_total", "Decisions taken", ["kind", "channel"])
DECISIONS_REFUSED = Counter("countersign_decisions_refused_total", "Decision attempts refused", ["reason", "channel"])
AUDIT_SUPPRESSED = Counter(
    "countersign_audit_suppressed_total",
    "Refused attempts left out of the audit log: the same one was audited less than a minute before", ["kind"])
AUDIT_THROTTLE_EVICTED = Counter(
    "countersign_audit_throttle_evicted_total",
    "Keys the audit throttle forgot to stay within its bound (their counts are summarised in the audit log)")
AUDIT_SUMMARIES_LOST = Counter(
    "countersign_audit_summaries_lost_total",
    "Summaries of refused attempts dropped unwritten (more waited than the throttle keeps)")
JOBS = Counter("countersign_jobs_total", "Job attempts by outcome", ["kind", "outcome"])
EMAILS_SENT = Counter("countersign_emails_sent_total", "Emails accepted by the SMTP server")
AGENT_DRAFTS = Counter("countersign_agent_drafts_total", "Drafts the agent proposed for approval")
AGENT_FINISHED = Counter("countersign_agent_finished_total", "Agent runs that stopped, by outcome", ["outcome"])
SIDE_EFFECT_RECORD = Histogram(
    "countersign_side_effect_record_seconds",
    "From a peer's acceptance of a side effect (SMTP 250, posted card, delivered callback) to its committed "
    "record: a process killed in between repeats the side effect", ["kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 2.5, 5),
)
LOOP_LAG = Histogram(
    "countersign_event_loop_lag_seconds", "How late the event loop woke a 0.5 s sleep",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TIMERS_FIRED = Counter("countersign_approval_timers_fired_total",
                       "Approval timers that fired (remind, escalate, expire)", ["kind"])
LEASES_RENEWED = Counter("countersign_job_lease_renewals_total", "Job leases renewed while their jobs ran")
LEASES_LOST = Counter("countersign_job_leases_lost_total",
                      "Running jobs whose lease another worker took over (their outcome is dropped)")


def side_effect_recorded(kind: str, accepted_at: float) -> Callable[[], None]:
    """For `tx.after_commit`: observes the window since `accepted_at` (`time.monotonic()`
    when the peer accepted) once the record is durable."""
    return lambda: SIDE_EFFECT_RECORD.labels(kind=kind).observe(time.monotonic() - accepted_at)
