"""Building the MIME message for an approved email, and reading its content back.

Pure (the `email` package only): the delivery proves what it sends by parsing the exact
bytes it is about to send and hashing the content found there.
"""

from __future__ import annotations

from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path

import jinja2

from ..domain import EmailAction

TEMPLATES = Path(__file__).with_name("templates")
# RFC 5322's hard limit (998) rather than its 78-character suggestion: Python's folder puts a
# word too long for the first line of a header after a fold, and reading it back then keeps
# that fold as a leading space, so a subject starting with a long word (a URL, an order
# reference) would no longer match its approved hash. Subjects are at most 500 characters.
_POLICY = policy.SMTP.clone(max_line_length=998)


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # Autoescape: customer- and model-written text can never become markup in the HTML part.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


def normalize_body(text: str) -> str:
    """Line ends as LF and no trailing newline: the one form bodies are approved and hashed in."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def build_message(
    action: EmailAction, *, sender: str, reply_to: str | None, message_id: str, date: datetime
) -> bytes:
    env = _environment()
    paragraphs = action.body.split("\n\n")
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(action.to)
    if action.cc:
        msg["Cc"] = ", ".join(action.cc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = action.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if action.in_reply_to:
        msg["In-Reply-To"] = action.in_reply_to
        refs = list(action.references)
        if action.in_reply_to not in refs:
            refs.append(action.in_reply_to)
        msg["References"] = " ".join(refs)
    elif action.references:
        msg["References"] = " ".join(action.references)
    msg["MIME-Version"] = "1.0"
    msg.set_content(env.get_template("reply.txt.j2").render(body=action.body) + "\n")
    msg.add_alternative(env.get_template("reply.html.j2").render(paragraphs=paragraphs), subtype="html")
    return msg.as_bytes()


def content_of(mime: bytes) -> EmailAction:
    """The approved-content fields as they appear in `mime` (the inverse of `build_message`)."""
    msg = BytesParser(policy=policy.default).parsebytes(mime)

    def addresses(header: str) -> tuple[str, ...]:
        value = msg.get(header)
        return tuple(a.addr_spec for a in value.addresses) if value is not None else ()

    text_part = msg.get_body(("plain",))
    if text_part is None:
        raise ValueError("message has no text/plain part")
    text = text_part.get_content().replace("\r\n", "\n")
    references = tuple(str(msg["References"]).split()) if msg["References"] else ()
    in_reply_to = str(msg["In-Reply-To"]) if msg["In-Reply-To"] else None
    if in_reply_to and references and references[-1] == in_reply_to:
        references = references[:-1]
    return EmailAction(
        to=addresses("To"), cc=addresses("Cc"), subject=str(msg["Subject"]),
        body=text[:-1] if text.endswith("\n") else text,
        in_reply_to=in_reply_to, references=references,
    )
