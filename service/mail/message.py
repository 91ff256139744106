"""Building the MIME message for an approved email, and reading its content back.

Pure (the `email` package only): the delivery proves what it sends by parsing the exact
bytes it is about to send and hashing the content found there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import jinja2

from ..domain import EmailAction

TEMPLATES = Path(__file__).with_name("templates")
# RFC 5322's hard limit (998) rather than its 78-character suggestion: Python's folder puts a
# word too long for the first line of a header after a fold, and reading it back then keeps
# that fold as a leading space, so a subject starting with a long word (a URL, an order
# reference) would no longer match its approved hash. Subjects are at most 500 characters.
_POLICY = policy.SMTP.clone(max_line_length=998)


class _MessageHeaders(HeaderRegistry):
    """The standard header registry, remembering what it parsed for one message.

    `email` parses a header anew on every access, and building or reading back one
    message reads Content-Type dozens of times: about 70% of the time both take. Header
    objects are immutable, so one message may reuse them; a registry lives for one message,
    so nothing customer-written outlives it."""

    _classes: ClassVar[dict[str, type]] = {}  # one per header name, shared by every message

    def __init__(self) -> None:
        super().__init__()
        self._parsed: dict[tuple[str, str], Any] = {}

    def __getitem__(self, name: str) -> type:
        # The standard registry makes a new class on every call.
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: str) -> Any:
        key = (name.lower(), value)
        header = self._parsed.get(key)
        if header is None:
            header = self._parsed[key] = super().__call__(name, value)
        elif header.name != name:  # the same header spelt otherwise: keep the spelling
            header = super().__call__(name, value)
        return header


def _build_policy() -> policy.EmailPolicy[EmailMessage]:
    return _POLICY.clone(header_factory=_MessageHeaders())


def _parser() -> BytesParser[EmailMessage]:
    return BytesParser(policy=policy.default.clone(header_factory=_MessageHeaders()))


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # Autoescape: customer- and model-written text can never become markup in the HTML part.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        auto_reload=False,  # templates are read once per process: no stat on every render
    )


def normalize_body(text: str) -> str:
    """Line ends as LF and no trailing newline: the one form bodies are approved and hashed in."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def build_message(
    action: EmailAction, *, sender: str, reply_to: str | None, message_id: str, date: datetime
) -> bytes:
    text, html = render_parts(action)
    msg = EmailMessage(policy=_build_policy())
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
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def render_parts(action: EmailAction) -> tuple[str, str]:
    """The text and HTML parts the templates make of an action's body."""
    env = _environment()
    text = env.get_template("reply.txt.j2").render(body=action.body) + "\n"
    html = env.get_template("reply.html.j2").render(paragraphs=action.body.split("\n\n"))
    return text, html


# The rule of `VisibleContent.sha256`; approvals and deliveries record which rule made their
# hash (NULL: v1, `EmailAction.content_sha256`, before From, Reply-To and HTML were covered).
CONTENT_HASH_VERSION = 2

Mailboxes = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class VisibleContent:
    """Everything a recipient sees: the approved fields, From, Reply-To and every body part."""

    action: EmailAction
    sender: Mailboxes
    reply_to: Mailboxes
    parts: tuple[tuple[str, str], ...]  # (content type, content), in MIME order

    def sha256(self) -> str:
        a = self.action
        canonical = json.dumps({
            "v": CONTENT_HASH_VERSION, "from": self.sender, "reply_to": self.reply_to,
            "to": list(a.to), "cc": list(a.cc), "subject": a.subject, "in_reply_to": a.in_reply_to,
            "references": list(a.references), "parts": self.parts,
        }, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _lines(text: str) -> str:
    # MIME carries line ends as CRLF and the text part ends with one: compared without them.
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


_HEADERS = HeaderRegistry()


@lru_cache(maxsize=64)  # a handful of configured senders; parsing one costs milliseconds
def _mailboxes(name: str, value: str | None) -> Mailboxes:
    if not value:
        return ()
    header = _HEADERS(name, value)
    assert isinstance(header, AddressHeader), f"{name} is not an address header"
    return tuple((a.display_name, a.addr_spec) for a in header.addresses)


def visible_content(action: EmailAction, *, sender: str, reply_to: str | None) -> VisibleContent:
    """What `build_message` will show for these inputs, without building it (decisions hash this)."""
    text, html = render_parts(action)
    return VisibleContent(action, _mailboxes("From", sender), _mailboxes("Reply-To", reply_to),
                          (("text/plain", _lines(text)), ("text/html", _lines(html))))


def approved_sha256(action: EmailAction, *, sender: str, reply_to: str | None) -> str:
    return visible_content(action, sender=sender, reply_to=reply_to).sha256()


def visible_content_of(mime: bytes) -> VisibleContent:
    """What a recipient of `mime` sees, read back from the bytes (delivery hashes this)."""
    msg = _parser().parsebytes(mime)
    parts = tuple((part.get_content_type(), _lines(part.get_content()) if part.get_content_maintype() == "text"
                   else hashlib.sha256(part.get_content()).hexdigest())
                  for part in msg.walk() if not part.is_multipart())

    def mailboxes(header: str) -> Mailboxes:
        value = msg.get(header)
        return tuple((a.display_name, a.addr_spec) for a in value.addresses) if value is not None else ()

    return VisibleContent(_content_of(msg), mailboxes("From"), mailboxes("Reply-To"), parts)


def content_of(mime: bytes) -> EmailAction:
    """The approved-content fields as they appear in `mime` (the inverse of `build_message`)."""
    return _content_of(_parser().parsebytes(mime))


def _content_of(msg: EmailMessage) -> EmailAction:
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
