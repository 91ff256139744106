"""A run as a timeline: what happened, in order, from the run detail the API returns and the
run's audit events (plus the jobs that updated its cards). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..runs import RunDetail

# kind -> (CSS class, title)
TITLES: dict[str, tuple[str, str]] = {
    "run.created": ("trigger", "Run triggered"),
    "run.routed": ("trigger", "Routed to another policy"),
    "approval.requested": ("draft", "Approval requested"),
    "teams.card_posted": ("card", "Teams card posted"),
    "teams.not_notified": ("card", "Not notified in Teams"),
    "approval.reminded": ("timer", "Reminder sent"),
    "approval.escalated": ("timer", "Escalated"),
    "approval.stage_started": ("timer", "Next stage asked"),
    "approval.expired": ("timer", "Approval expired"),
    "approval.delegated": ("vote", "Vote delegated"),
    "decision.approve": ("vote", "Approved"),
    "decision.edit": ("vote", "Edited and approved"),
    "decision.reject": ("vote", "Rejected"),
    "decision.refused": ("refused", "Decision refused"),
    "delivery.sent": ("email", "Email sent"),
    "delivery.resent_after_interruption": ("email", "Email sent again after an interruption"),
    "callback.delivered": ("callback", "Callback delivered"),
    "job.dead": ("failed", "Job dead-lettered"),
    "job.retried": ("retry", "Job retried"),
    "agent.finished": ("agent", "Agent finished"),
}
# Fields of event data shown for each kind (the rest is in the raw event, one click away).
SHOWN_FIELDS = ("policy", "route", "requested_by", "channel", "reviewer", "on_behalf_of", "credential", "reason",
                "stage", "counted", "outcome", "asked", "added", "number", "next_at", "to", "target", "status",
                "kind", "error", "message_id", "smtp_reply", "approved_sha256", "sent_sha256", "mime_sha256",
                "attempt", "summary", "failure_reason", "via", "from", "revision")


@dataclass(frozen=True, slots=True)
class Entry:
    at: str
    css: str
    title: str
    actor: str
    fields: list[tuple[str, Any]] = field(default_factory=list)
    approval: dict[str, Any] | None = None  # a draft: its action and sources
    diff: dict[str, Any] | None = None  # an edit: the approved text against the draft
    attempts: list[dict[str, Any]] = field(default_factory=list)  # an email: every SMTP attempt
    raw: dict[str, Any] | None = None


def _title(kind: str) -> tuple[str, str]:
    if kind in TITLES:
        return TITLES[kind]
    if kind.startswith("run."):
        return "end", f"Run {kind.removeprefix('run.').replace('_', ' ')}"
    return "other", kind


def _fields(data: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(name, data[name]) for name in SHOWN_FIELDS if data.get(name) not in (None, "", [], {})]


def build(detail: RunDetail) -> list[Entry]:
    approvals = {a["id"]: a for a in detail.approvals}
    deliveries = {d["id"]: d for d in detail.deliveries}
    entries: list[tuple[str, int, Entry]] = []
    for event in detail.timeline:
        kind, data = event["event"], event["data"]
        css, title = _title(kind)
        approval = approvals.get(data.get("approval_id", ""))
        entry = Entry(
            at=event["at"], css=css, title=title, actor=event["actor"], fields=_fields(data), raw=event,
            approval=approval if kind == "approval.requested" else None,
            diff=approval["diff"] if approval is not None and kind == "decision.edit" else None,
            attempts=deliveries.get(data.get("delivery_id", ""), {}).get("attempt_log", [])
            if kind == "delivery.sent" else [],
        )
        entries.append((event["at"], event["seq"], entry))
    # Card updates are jobs, not audit events: each one done is a card brought up to date.
    for job in detail.jobs:
        if job.kind == "teams.update_card" and job.finished_at is not None and job.status.value == "done":
            at = job.finished_at.isoformat()
            entries.append((at, 2**62, Entry(at=at, css="card", title="Teams card updated", actor="system",
                                             fields=[("job", job.id)])))
    entries.sort(key=lambda e: (e[0], e[1]))
    return [e for _at, _seq, e in entries]


def short_time(iso: str) -> str:
    """`2026-05-01 09:30:12 UTC` from an ISO time."""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso
