"""The demo's SMTP capture server: a real SMTP server on loopback (aiosmtpd) that keeps every
message it receives in a Maildir instead of delivering it. The service reaches it through
its ordinary SMTP settings and delivery code, exactly as it would a relay."""

from __future__ import annotations

import asyncio
import mailbox
import re
import socket
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Keep:
    def __init__(self, maildir: mailbox.Maildir) -> None:
        self.maildir = maildir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Maildir writes a few small files; done in the server's own thread, off the service's loop.
        self.maildir.add(envelope.content)
        return "250 2.0.0 captured (Countersign demo: not delivered)"


_KEY = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)")


def arrival(key: str) -> tuple[int, ...]:
    """A Maildir key's time of arrival as a sort key. Python's keys are
    `seconds.M<microseconds>P<pid>Q<n>.host`, microseconds not zero-padded, so the keys
    themselves do not sort by time within a second."""
    found = _KEY.match(key)
    return tuple(int(g) for g in found.groups()) if found else (0,)


def read_maildir(directory: Path, *, newest_first: bool = False, limit: int | None = None) -> list[EmailMessage]:
    """Blocking (a few files): in a thread, off the event loop."""
    if not directory.exists():
        return []
    box = mailbox.Maildir(directory, create=False)
    keys = sorted(box.keys(), key=arrival, reverse=newest_first)[:limit]
    return [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in keys]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CaptureSmtp:
    """Start with `start()` (its own thread); `messages()` reads what arrived."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.maildir = mailbox.Maildir(directory, create=True)
        self.port = free_port()
        self._controller = Controller(_Keep(self.maildir), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def messages(self) -> list[EmailMessage]:
        return read_maildir(self.directory)

    def count(self) -> int:
        return len(mailbox.Maildir(self.directory, create=False).keys())

    async def wait_for(self, predicate: Any, timeout: float, *, after: int = 0) -> EmailMessage | None:
        """The first message `predicate` holds for among those captured after the first
        `after`, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(lambda: [m for m in self.messages()[after:] if predicate(m)])
            if found:
                return found[-1]
            await asyncio.sleep(0.2)
        return None
