"""A real SMTP server (aiosmtpd) requiring STARTTLS and AUTH, delivering into a Maildir.

It runs on its own thread and event loop, like any server the service would talk to.
Tests can make it answer the next messages (or the next RCPT TO) with an error code, or
run a hook when a RCPT TO or a message's DATA arrives (the crash tests kill the service there).
"""

from __future__ import annotations

import mailbox
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .certs import TlsFiles

USERNAME = "countersign"
PASSWORD = "s3cret-smtp-password"


@dataclass
class MailHandler:
    maildir: mailbox.Maildir
    fail_next: list[str] = field(default_factory=list)  # e.g. "451 4.3.0 try later"
    on_data: Callable[[bytes], str | None] | None = None  # may return a reply instead of accepting
    fail_rcpt_next: list[str] = field(default_factory=list)  # replies to the next RCPT TO commands
    on_rcpt: Callable[[str], str | None] | None = None  # the address; may return a reply instead of accepting
    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: int = 0

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        with self.lock:
            if self.fail_rcpt_next:
                return self.fail_rcpt_next.pop(0)
        if self.on_rcpt is not None:
            reply = self.on_rcpt(address)
            if reply is not None:
                return reply
        envelope.rcpt_tos.append(address)  # what aiosmtpd does without a handler
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.fail_next:
                return self.fail_next.pop(0)
        if self.on_data is not None:
            reply = self.on_data(envelope.content)
            if reply is not None:
                return reply
        with self.lock:
            self.maildir.add(envelope.content)
        return "250 2.0.0 Message accepted for delivery"


class SmtpServer:
    def __init__(self, directory: Path, tls: TlsFiles, port: int) -> None:
        self.tls = tls
        directory.mkdir(parents=True, exist_ok=True)
        self.maildir_path = directory / "maildir"
        self.handler = MailHandler(mailbox.Maildir(self.maildir_path, create=True))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        self.connections = 0

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == USERNAME \
                and auth_data.password.decode() == PASSWORD
            return AuthResult(success=ok, handled=False)

        self._authenticate = authenticate
        self._context = context
        self.port = port
        self.controller: Controller | None = None

    def start(self) -> None:
        outer = self

        class CountingController(Controller):
            def factory(self) -> Any:
                outer.connections += 1
                return super().factory()

        # A stopped controller cannot start again: each start builds a new one.
        self.controller = CountingController(
            self.handler, hostname="127.0.0.1", port=self.port, server_hostname="localhost",
            tls_context=self._context, require_starttls=True, auth_require_tls=True,
            authenticator=self._authenticate, auth_exclude_mechanism=["CRAM-MD5"], ready_timeout=10,
        )
        self.controller.start()
        self.connections = 0

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def messages(self) -> list[EmailMessage]:
        box = mailbox.Maildir(self.maildir_path, create=False)
        return [message_from_bytes(box.get_bytes(key), policy=policy.default) for key in sorted(box.keys())]  # type: ignore[misc]

    def raw_messages(self) -> list[bytes]:
        box = mailbox.Maildir(self.maildir_path, create=False)
        return [box.get_bytes(key) for key in box.keys()]

    def settings(self) -> dict[str, Any]:
        """The service settings that reach this server."""
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_security": "starttls",
                "smtp_username": USERNAME, "smtp_password": PASSWORD, "smtp_ca_file": str(self.tls.ca_cert)}
