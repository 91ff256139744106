"""Prometheus metrics (prometheus-client), named the Prometheus way: `countersign_*_total`."""

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
JOBS = Counter("countersign_jobs_total", "Job attempts by outcome", ["kind", "outcome"])
EMAILS_SENT = Counter("countersign_emails_sent_total", "Emails accepted by the SMTP server")
AGENT_DRAFTS = Counter("countersign_agent_drafts_total", "Drafts the agent proposed for approval")
AGENT_FINISHED = Counter("countersign_agent_finished_total", "Agent runs that stopped, by outcome", ["outcome"])
