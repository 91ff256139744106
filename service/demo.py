"""`countersign demo`: the whole product on embedded defaults, in one process, in one command.

SQLite in a local data directory, the offline drafter (or the LLM when OPENAI_API_KEY /
OPENAI_BASE_URL are set), the bundled knowledge base, a capture SMTP server on loopback
(service/mail/capture.py: real SMTP, the production delivery code, nothing delivered) and
a demo policy whose reviewer is asked by email. It triggers a sample customer request
through the real signed webhook, waits for the review email, and prints where to look.
With --teams the card goes to Teams too (service/demo_teams.py: the Agents Playground, or
real Teams when MicrosoftAppId is configured), once the reviewer's chat is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import re
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from .config import Settings, load_settings
from .demo_teams import TeamsDemo, reviewer_chat_opened
from .mail.capture import CaptureSmtp
from .signing import HEADER, sign_v2
from .startup import ensure_api_token, ensure_webhook_secret

REVIEWER = "reviewer@demo.example"
CUSTOMER = "ann.customer@example.com"
REQUEST = ("Hello, I sent my headphones back (order 1042) two weeks ago. When will I get my refund, "
           "and will the shipping cost be refunded too?")
_LINK = re.compile(r"http://[^\s\"<>]+/review/[0-9a-f-]{36}/[A-Za-z0-9_-]{43}")
PORTS_TRIED = 20


@dataclass(frozen=True, slots=True)
class DemoPlaces:
    url: str
    review_page: str | None
    data_dir: Path
    mailbox: Path


def pick_port(wanted: int, host: str = "127.0.0.1") -> int:
    """`wanted`, or the next free port after it."""
    for port in range(wanted, wanted + PORTS_TRIED):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return port
    raise OSError(f"ports {wanted}-{wanted + PORTS_TRIED - 1} are all in use; pass --port")


def demo_settings(data_dir: Path, port: int, smtp_port: int, teams: TeamsDemo | None = None) -> Settings:
    settings = load_settings(
        data_dir=data_dir, host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}",
        smtp_host="127.0.0.1", smtp_port=smtp_port, smtp_security="none",
        mail_from="Countersign demo <support@demo.example>", log_level="ERROR",
        capture_mailbox_dir=data_dir / "demo-mailbox",
        # Every run gets it: the demo reviewer decides, asked by email (the review page), and
        # with --teams the Teams reviewer too, whoever is first.
        policies={"default": teams.policy(REVIEWER) if teams else {"reviewers": [REVIEWER],
                                                                    "email_reviewers": [REVIEWER]}},
        **(teams.settings() if teams else {}),
    )
    return ensure_webhook_secret(ensure_api_token(settings))


def teams_demo(reviewer: str | None) -> TeamsDemo:
    """Playground or real Teams, by whether the environment configures MicrosoftAppId."""
    return TeamsDemo.choose(load_settings().microsoft_app_id, reviewer)


async def trigger(settings: Settings) -> str:
    """The sample request, through the signed webhook (POST /api/runs); the run's id."""
    assert settings.webhook_secret is not None
    body = json.dumps({"request": REQUEST, "customer": {"email": CUSTOMER, "name": "Ann"},
                       "requested_by": "ops@demo.example"}).encode()
    headers = {"Content-Type": "application/json",
               HEADER: sign_v2(settings.webhook_secret.get_secret_value(), int(time.time()), "POST", "/api/runs", "",
                               body)}
    async with aiohttp.ClientSession() as http, http.post(f"{settings.effective_public_url}/api/runs", data=body,
                                                          headers=headers) as r:
        answer = await r.json(content_type=None)
        if r.status != 202:
            raise RuntimeError(f"the webhook answered {r.status}: {answer}")
        return str(answer["id"])


def review_link(message: EmailMessage) -> str | None:
    found = _LINK.search(str(message.get_body(("plain",)).get_content()))  # type: ignore[union-attr]
    return found.group(0) if found else None


def describe(places: DemoPlaces, teams: TeamsDemo | None = None) -> str:
    token = places.data_dir / "api-token"
    lines = [
        f"Countersign demo running at {places.url}",
        f"  Review page ({REVIEWER}): {places.review_page or '(the draft is not ready yet: see the mailbox)'}",
        *([f"  Teams card ({teams.who()}): Approve there, or on the review page"] if teams else []),
        f"  Console:      {places.url}/console  (log in with the operator token in {token})",
        f"  Captured mail: {places.url}/console/mailbox  (every email the service sent, kept in {places.mailbox};"
        " none leaves this machine)",
        f"  Another request: COUNTERSIGN_DATA_DIR={places.data_dir} countersign trigger --url {places.url} "
        f"--request \"Can I change my delivery address?\" --to {CUSTOMER}",
        "Ctrl-C stops it.",
    ]
    return "\n".join(lines)


async def run_demo(data_dir: Path, wanted_port: int, *, teams: TeamsDemo | None = None, out: TextIO = sys.stdout,
                   draft_timeout: float = 120.0) -> int:
    """`data_dir`: absolute (the lines printed name it). `teams`: also ask in Teams."""
    from .app import TEAMS, create_app

    port = pick_port(wanted_port)
    if port != wanted_port:
        print(f"countersign demo: port {wanted_port} is in use; using {port}", file=out, flush=True)
    capture = CaptureSmtp(data_dir / "demo-mailbox")
    capture.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    try:
        settings = demo_settings(data_dir, port, capture.port, teams)
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = settings.effective_public_url
        if teams is not None:
            channel = app[TEAMS]
            assert channel is not None  # demo_settings configured it
            print(f"countersign demo: listening on {url}", *teams.instructions(url), sep="\n", file=out, flush=True)
            if not await _first(reviewer_chat_opened(channel.conversations, teams), stop.wait()):
                return 0  # stopped before the chat was opened
            print("countersign demo: the Teams chat is open; drafting the sample reply ...", file=out, flush=True)
        else:
            print(f"countersign demo: listening on {url}; drafting the sample reply ...", file=out, flush=True)
        known = await asyncio.to_thread(capture.count)  # a demo run before this one left mail
        await trigger(settings)
        request = await capture.wait_for(lambda m: REVIEWER in str(m["To"]) and review_link(m) is not None,
                                         draft_timeout, after=known)
        places = DemoPlaces(url, review_link(request) if request else None, data_dir, capture.directory)
        print(describe(places, teams), file=out, flush=True)
        await stop.wait()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(Exception):
            capture.stop()


async def _first(wanted: Awaitable[None], stopped: Awaitable[Any]) -> bool:
    """Whether `wanted` finished before `stopped` (the other is cancelled)."""
    done_wanted = asyncio.ensure_future(wanted)
    done_stopped = asyncio.ensure_future(stopped)
    done, pending = await asyncio.wait({done_wanted, done_stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if done_wanted in done:
        done_wanted.result()  # its error, if it failed
        return True
    return False
