"""SMTP transport (aiosmtplib): a small pool of authenticated connections, reused while
several emails are due, and SMTP replies sorted into transient and permanent failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiosmtplib
from aiosmtplib.email import parse_address
from aiosmtplib.protocol import normalize_message_line_endings
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ..config import Settings, SmtpSecurity
from ..jobs import PermanentError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    message: str
    refused: dict[str, str]  # recipients the server refused while accepting the others

    def __str__(self) -> str:
        text = f"{self.code} {self.message}"
        if self.refused:
            text += f" (refused: {', '.join(f'{r}: {m}' for r, m in self.refused.items())})"
        return text


@dataclass(frozen=True, slots=True)
class SmtpFailure:
    """Where an SMTP transaction failed and what the server said (None: no reply came:
    the connection broke or timed out, so after DATA began the server may have the message)."""

    step: str  # "connect" | "MAIL" | "RCPT" | "DATA"
    reply: str | None  # e.g. "451 4.3.0 try later"


class SmtpTransientError(TransientError):
    def __init__(self, message: str, failure: SmtpFailure) -> None:
        super().__init__(message)
        self.failure = failure


class SmtpPermanentError(PermanentError):
    def __init__(self, message: str, failure: SmtpFailure) -> None:
        super().__init__(message)
        self.failure = failure


SmtpError = SmtpTransientError | SmtpPermanentError
OnReady = Callable[[], Awaitable[None]]


class SmtpSession:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
        self.broken = False
        self.step = "MAIL"  # the command under way, named in a failure

    async def send(self, mime: bytes, sender: str, recipients: list[str], *,
                   on_ready: OnReady | None = None) -> SmtpReply:
        """Send one message: MAIL FROM and RCPT TO, then `on_ready()`, then DATA.

        `on_ready` runs once the server has accepted the envelope and before the content
        goes out, so whatever it records (the delivery's `sending` state) is committed
        only when the message is about to be transmitted; if it raises, the transaction
        is abandoned before DATA and the connection is not reused. One method rather than
        two steps, so no caller can hold a session with a half-open envelope.
        Raises `SmtpTransientError` or `SmtpPermanentError` with the server's words and
        the step that failed."""
        # Checked before anything is sent, so a bad address leaves no envelope open.
        parse_address(sender)
        for recipient in recipients:
            parse_address(recipient)
        refused = await self._step(self._envelope(mime, sender, recipients))
        if on_ready is not None:
            try:
                await on_ready()
            except BaseException:
                self.broken = True  # the envelope is open: never hand this connection on
                raise
        self.step = "DATA"
        response = await self._step(self.client.data(mime))
        return SmtpReply(code=response.code, message=response.message, refused=refused)

    async def _envelope(self, mime: bytes, sender: str, recipients: list[str]) -> dict[str, str]:
        self.step = "MAIL"
        if self.client.is_ehlo_or_helo_needed:
            with contextlib.suppress(aiosmtplib.SMTPHeloError):  # mail() falls back to HELO
                await self.client.ehlo()
        options = []
        if self.client.supports_extension("size"):  # RFC 1870, as aiosmtplib's sendmail does
            options.append(f"size={len(normalize_message_line_endings(mime))}")
        await self.client.mail(sender, options=options)
        self.step = "RCPT"
        refused: dict[str, str] = {}
        first_refusal: aiosmtplib.SMTPRecipientRefused | None = None
        for recipient in recipients:
            try:
                await self.client.rcpt(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused[recipient] = f"{exc.code} {exc.message}"
                first_refusal = first_refusal or exc
        if first_refusal is not None and len(refused) == len(recipients):
            raise first_refusal  # as before: refused by every recipient is the delivery's failure
        return refused

    async def _step(self, command: Awaitable[T]) -> T:
        try:
            return await command
        except aiosmtplib.SMTPResponseException as exc:
            # A refusal: the server keeps nothing; after RSET the connection is clean.
            await self._reset()
            raise _classify(exc, self.step) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.broken = True
            raise _classify(exc, self.step) from exc
        except BaseException:
            self.broken = True  # cancelled mid-command
            raise

    async def _reset(self) -> None:
        try:
            await self.client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.broken = True


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    last_used: float


class SmtpTransport:
    # A pooled connection idle longer than this is checked with NOOP before it is trusted:
    # a server that dropped it in the meantime must not turn into a failed delivery.
    CHECK_AFTER_IDLE = 2.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        self._tls_context = self._make_tls_context()
        self._ehlo_name: str | None = None

    def _make_tls_context(self) -> ssl.SSLContext | None:
        if self.settings.smtp_security is SmtpSecurity.NONE:
            return None
        context = ssl.create_default_context(cafile=str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None)
        return context

    async def _local_hostname(self) -> str:
        # aiosmtplib would resolve our FQDN (blocking, so in a thread) for every new
        # connection's EHLO; once per process is enough.
        if self._ehlo_name is None:
            self._ehlo_name = await asyncio.to_thread(socket.getfqdn)
        return self._ehlo_name

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host, port=s.smtp_port, timeout=s.smtp_timeout_seconds,
            local_hostname=await self._local_hostname(),
            use_tls=s.smtp_security is SmtpSecurity.TLS,
            start_tls=s.smtp_security is SmtpSecurity.STARTTLS,
            tls_context=self._tls_context,
        )
        # Connecting is safe to repeat at once (nothing was sent yet): a few quick tries
        # here spare the job a full backoff for a momentary refusal.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError)),
            stop=stop_after_attempt(3), wait=wait_random_exponential(multiplier=0.1, max=1.0), reraise=True,
        ):
            with attempt:
                await client.connect()
        if s.smtp_username:
            password = s.smtp_password.get_secret_value() if s.smtp_password else ""
            await client.login(s.smtp_username, password)
        return client

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            idle_for = time.monotonic() - conn.last_used
            if not conn.client.is_connected or idle_for > self.settings.smtp_idle_seconds:
                await _quit_quietly(conn.client)
                continue
            if idle_for > self.CHECK_AFTER_IDLE:
                try:
                    await conn.client.noop()
                except aiosmtplib.SMTPException:
                    await _quit_quietly(conn.client)
                    continue
            return conn
        return _Connection(await self._connect(), time.monotonic())

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[SmtpSession]:
        """An authenticated connection from the pool, returned to it afterwards.

        Failing to get one raises `TransientError`/`PermanentError` before anything is sent,
        so the caller can record "sending" only once a message is really about to go out."""
        async with self._slots:
            try:
                conn = await self._checkout()
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise _classify(exc, "connect") from exc
            session = SmtpSession(conn.client)
            try:
                yield session
            except BaseException:
                # Whatever interrupted us (a job timeout, shutdown) may have left the
                # connection mid-transaction: never hand it to the next message.
                session.broken = True
                raise
            finally:
                if session.broken:
                    await _quit_quietly(conn.client)
                else:
                    conn.last_used = time.monotonic()
                    self._idle.append(conn)

    async def send(self, mime: bytes, sender: str, recipients: list[str], *,
                   on_ready: OnReady | None = None) -> SmtpReply:
        async with self.session() as session:
            return await session.send(mime, sender, recipients, on_ready=on_ready)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit_quietly(c.client) for c in idle))


def _classify(exc: BaseException, step: str) -> SmtpError:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        failure = SmtpFailure(step, f"{exc.code} {exc.message}")
        text = f"SMTP {exc.code} {exc.message}"
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            text += " (check COUNTERSIGN_SMTP_USERNAME and COUNTERSIGN_SMTP_PASSWORD)"
        return SmtpPermanentError(text, failure) if 500 <= exc.code < 600 else SmtpTransientError(text, failure)
    return SmtpTransientError(f"SMTP connection to the server failed: {type(exc).__name__}: {exc}", SmtpFailure(step, None))


async def _quit_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), timeout=2)
    except Exception:
        client.close()
