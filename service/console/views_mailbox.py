"""`/console/mailbox`: what `countersign demo`'s capture SMTP server received (COUNTERSIGN_
CAPTURE_MAILBOX_DIR), newest first: the review requests, the codes, the customers' emails."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..mail.capture import read_maildir
from ..scopes import Scope
from .pages import CONSOLE, page, render
from .sessions import Session

SHOWN = 50


@dataclass(frozen=True, slots=True)
class Captured:
    date: str
    sender: str
    to: str
    subject: str
    text: str


def read_mailbox(directory: Path, limit: int = SHOWN) -> list[Captured]:
    """Blocking (a few files): in a thread."""
    out = []
    for message in read_maildir(directory, newest_first=True, limit=limit):
        body = message.get_body(("plain",))
        text = str(body.get_content()) if body is not None else ""
        out.append(Captured(str(message["Date"] or ""), str(message["From"] or ""), str(message["To"] or ""),
                            str(message["Subject"] or ""), text.replace("\r\n", "\n")))
    return out


@page(Scope.RUNS_READ)
async def mailbox(request: web.Request, session: Session) -> web.StreamResponse:
    directory = request.app[CONSOLE].services.settings.capture_mailbox_dir
    assert directory is not None  # the route exists only when it is set
    messages = await asyncio.to_thread(read_mailbox, directory)
    return render(request, "mailbox.html.j2", messages=messages, directory=str(directory))
