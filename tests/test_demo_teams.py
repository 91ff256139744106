"""`countersign demo --teams` against Microsoft 365 Agents Playground, Microsoft's local
Teams simulator (npm, pinned in tests/playground_js): the demo prints the command that
opens the playground; the playground, started headless as that command says, installs the
bot in its personal chat (the activity its page sends when it opens, sent through its own
API); the demo then sends its sample request, the approval card arrives in the playground's
chat, Approve is clicked through the playground, the customer's email lands in the demo's
capture mailbox and the card is updated for everyone.

The playground talks to the bot unauthenticated (the bot's development no-auth mode), so
this is also the check that the mode works with the one tenant it may serve. What the test
uses of the playground is in ../shared/notes/agents-playground.md."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.demo_teams import TeamsDemo, TeamsDemoError
from service.teams import playground

from .conftest import free_port
from .peers.npm import ensure_npm_packages
from .test_demo import _customer_email, _lines_until, _start, _stop

PLAYGROUND_JS = Path(__file__).resolve().parent / "playground_js"
APPROVE = "countersign.approve"


@pytest.fixture(scope="module")
def playground_bin() -> Path:
    ensure_npm_packages(PLAYGROUND_JS, "the Teams demo test runs Microsoft 365 Agents Playground")
    return PLAYGROUND_JS / "node_modules" / ".bin" / "agentsplayground"


def _headless_path(tmp_path: Path) -> str:
    """PATH with a no-op `xdg-open` first: the playground opens a browser with it and exits
    when there is none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opener = bin_dir / "xdg-open"
    opener.write_text("#!/bin/sh\nexit 0\n")
    opener.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@contextlib.asynccontextmanager
async def _playground(program: Path, printed: list[str], tmp_path: Path) -> AsyncIterator[str]:
    """The playground started with the options the demo printed (its port: a free one);
    yields its base URL."""
    options = printed[printed.index("-e"):]
    options[options.index("-p") + 1] = str(free_port())
    # Its output goes to a file (a pipe nobody reads once it listens could fill and stall it);
    # its working directory gets its log (devTools/): the test's own, not the repository.
    output = tmp_path / "playground.out"
    with output.open("w") as sink:
        proc = subprocess.Popen([str(program), *options], stdout=sink, stderr=subprocess.STDOUT, text=True,
                                cwd=tmp_path, env={**os.environ, "PATH": _headless_path(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while not (listening := re.search(r"^Listening on (\d+)$", output.read_text(), re.MULTILINE)):
            assert proc.poll() is None and time.monotonic() < deadline, f"the playground printed {output.read_text()}"
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{listening.group(1)}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _next_message(ws: aiohttp.ClientWebSocketResponse, wanted: Callable[[dict[str, Any]], bool],
                        timeout: float = 60) -> dict[str, Any]:
    """The next activity the bot sent into the playground (its UI's stream) that `wanted` holds for."""
    async with asyncio.timeout(timeout):
        async for frame in ws:
            event = json.loads(frame.data)
            if wanted(event):
                return event
    raise AssertionError("the playground's stream closed")


def _card(event: dict[str, Any]) -> dict[str, Any] | None:
    for attachment in event.get("message", {}).get("attachments") or []:
        if attachment.get("contentType") == "application/vnd.microsoft.card.adaptive":
            return dict(attachment["content"])
    return None


def _actions(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [a for item in node for a in _actions(item)]
    if not isinstance(node, dict):
        return []
    own = [node] if str(node.get("type", "")).startswith("Action.") else []
    return own + [a for value in node.values() for a in _actions(value)]


def _texts(card: dict[str, Any]) -> str:
    return json.dumps(card, ensure_ascii=False)


async def test_the_demo_card_is_approved_in_the_agents_playground(tmp_path: Path, playground_bin: Path) -> None:
    data_dir = tmp_path / "demo-data"
    port = free_port()
    demo = _start(data_dir, port, "--teams")
    try:
        lines = await _lines_until(demo, "  It opens in the browser")
        [command] = [line for line in lines if "agentsplayground" in line]
        printed = shlex.split(command)
        assert printed[:3] == ["npx", "-y", f"{playground.NPM_PACKAGE}@{playground.NPM_VERSION}"], printed
        assert printed[printed.index("-e") + 1] == f"http://127.0.0.1:{port}/api/messages"
        chat = printed[printed.index("--conversation-id") + 1]

        async with _playground(playground_bin, printed, tmp_path) as url, aiohttp.ClientSession() as http, \
                http.ws_connect(f"{url}/_ws_conversation/v1/conversations/stream") as ws:
            # What the playground's page sends when it opens: the bot installed in its chat.
            async with http.get(f"{url}/_internal/v1/customActivities/template",
                                params={"conversationId": chat, "type": "install"}) as r:
                assert r.status == 200
                install = await r.json()
            assert install["conversation"]["tenantId"] == playground.TENANT_ID
            assert install["from"]["aadObjectId"] == playground.USER_AAD_OBJECT_ID
            async with http.post(f"{url}/_internal/v1/customActivities", json=install) as r:
                assert r.status == 200, await r.text()

            # Then the sample request: the review page by email, the card in the chat.
            lines = await _lines_until(demo, "Ctrl-C stops it.")
            assert any(f"Teams card ({playground.USER_NAME}, {playground.USER_EMAIL}" in line for line in lines), lines
            posted = await _next_message(ws, lambda e: e["action"] == "createMessage" and _card(e) is not None)
            assert posted["actionConversationId"] == chat
            card = _card(posted)
            assert card is not None and "Approval needed" in _texts(card)
            [approve] = [a for a in _actions(card) if a["type"] == "Action.Execute" and a.get("verb") == APPROVE]
            message_id = posted["message"]["messageId"]

            # Approve, clicked in the playground as its user.
            click = {"name": "adaptiveCard/action",
                     "value": {"action": {"type": "Action.Execute", "verb": APPROVE, "data": approve["data"]},
                               "trigger": "manual"},
                     "from": {"id": install["from"]["id"]}, "conversation": {"id": chat}, "replyToId": message_id}
            async with http.post(f"{url}/_conversation/v1/invoke", json=click) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
            assert answer["type"] == "application/vnd.microsoft.card.adaptive", answer
            assert f"Approved by {playground.USER_NAME}" in _texts(answer["value"])

            [subject] = await _customer_email(data_dir / "demo-mailbox", 1, timeout=60)
            assert subject
            # Everyone's copy of the card (here the same chat's) is updated once the email is out.
            updated = await _next_message(ws, lambda e: e["action"] == "updateMessage"
                                          and e["message"]["messageId"] == message_id
                                          and "Approved and sent" in _texts(_card(e) or {}))
            assert not [a for a in _actions(_card(updated)) if a.get("verb") == APPROVE]
        assert _stop(demo) == 0
        assert demo.stderr is not None and "Traceback" not in demo.stderr.read()
    finally:
        if demo.poll() is None:
            demo.kill()


def test_demo_teams_says_what_real_teams_needs() -> None:
    # Without credentials the card goes to the playground's user: naming another is refused.
    with pytest.raises(TeamsDemoError, match=re.escape(
            "needs real Teams credentials (MicrosoftAppId); without them the card goes to the Agents Playground's "
            f"user, {playground.USER_NAME} ({playground.USER_EMAIL})")):
        TeamsDemo.choose("", "rita@example.com")
    assert TeamsDemo.choose("", None) == TeamsDemo(playground.USER_EMAIL, playground=True)
    # With them, the demo must be told whom to ask, and asks them authenticated.
    with pytest.raises(TeamsDemoError, match="MicrosoftAppId is set, so the card goes to real Teams: name who gets "
                                             "it with --teams-reviewer"):
        TeamsDemo.choose("00000000-0000-0000-0000-000000000abc", None)
    real = TeamsDemo.choose("00000000-0000-0000-0000-000000000abc", "rita@example.com")
    assert real == TeamsDemo("rita@example.com", playground=False)
    assert real.settings() == {"bot_insecure_no_auth": False}


async def test_demo_teams_refusals_exit_2_with_the_reason(tmp_path: Path) -> None:
    demo = _start(tmp_path / "demo-data", free_port(), "--teams", "--teams-reviewer", "rita@example.com")
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 2 and "countersign demo --teams: --teams-reviewer needs real Teams credentials" in err
    # Real Teams: the settings `serve` needs are checked as `serve` checks them.
    demo = _start(tmp_path / "demo-data", free_port(), "--teams", "--teams-reviewer", "rita@example.com",
                  env={"MicrosoftAppId": "00000000-0000-0000-0000-000000000abc", "MicrosoftAppPassword": "x"})
    _, err = demo.communicate(timeout=60)
    assert demo.returncode == 2 and "COUNTERSIGN_TEAMS_ALLOWED_TENANTS is empty" in err, err
