"""The emails of the review channel, text and HTML (pure: the templates and `email`).

The request shows the drafted action as the Teams card does (recipients, subject, the whole
body with its line breaks, the sources, where the votes stand) and the reviewer's personal
link. Every customer and model string is escaped in the HTML (autoescape) and has its bidi
overrides and control characters made visible in both parts (`neutralise_controls`), so a
draft cannot hide what it says from its reviewer.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path

import jinja2

from adaptive_cards import ApprovalView
from adaptive_cards.text import neutralise_controls

TEMPLATES = Path(__file__).parent / "templates"

# Why a reviewer gets the email -> its subject's prefix and first line.
PURPOSES = {
    "request": ("Approval requested", "Your approval is requested for the email below."),
    "reminder": ("Reminder: approval waiting", "This approval is still waiting for your decision."),
    "escalation": ("Escalated: approval waiting", "Nobody decided in time, so you now also review this approval."),
    "delegation": ("Vote handed to you", "A reviewer handed their vote on this approval to you."),
    "fallback": ("Approval requested", "The request could not be posted in Teams, so it comes to you by email."),
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined, auto_reload=False, keep_trailing_newline=True)
    env.filters["visible"] = lambda value: neutralise_controls(str(value))
    return env


def _header_text(text: str) -> str:
    # A header is one line: what the draft's subject carries beyond that is not shown there.
    return " ".join(neutralise_controls(text).split())


@dataclass(frozen=True, slots=True)
class RequestEmail:
    view: ApprovalView
    reviewer: str  # the address it goes to
    link: str
    expires_at: datetime
    purpose: str = "request"
    reminder_number: int | None = None


def build_request(request: RequestEmail, *, sender: str, message_id: str, date: datetime) -> bytes:
    prefix, lead = PURPOSES[request.purpose]
    if request.reminder_number:
        prefix = f"{prefix} ({request.reminder_number})"
    context = {"r": request, "v": request.view, "lead": lead, "expires": format_datetime(request.expires_at)}
    env = environment()
    return _mime(sender, request.reviewer, f"{prefix}: {_header_text(request.view.subject)}", message_id, date,
                 env.get_template("request.txt.j2").render(context), env.get_template("request.html.j2").render(context))


def build_code(reviewer: str, code: str, view: ApprovalView, *, sender: str, message_id: str, date: datetime) -> bytes:
    env = environment()
    context = {"code": code, "v": view, "reviewer": reviewer}
    # Not in the subject: that shows on lock screens and in mail gateways' logs.
    return _mime(sender, reviewer, "Your Countersign confirmation code", message_id, date,
                 env.get_template("code.txt.j2").render(context), None)


def _mime(sender: str, to: str, subject: str, message_id: str, date: datetime, text: str, html: str | None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to the service
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()
