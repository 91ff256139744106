"""`countersign demo --teams`: the demo's approval card in Teams too.

Without Teams credentials the card goes to Microsoft 365 Agents Playground, Microsoft's
local Teams simulator: the bot runs in the development no-auth mode, allowing only the
playground's mock tenant (the no-auth mode refuses any other), and the playground's user
is asked in its personal chat. With MicrosoftAppId (and its password, and
COUNTERSIGN_TEAMS_ALLOWED_TENANTS) configured, the card goes to that person in real Teams,
authenticated as `serve` would be.

Either way the bot can only post into a personal chat it knows (the playground does not
create conversations), so the demo sends its sample request once the reviewer's chat has
been opened: the playground installs the bot when its page opens, a Teams user installs
the app.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .teams import playground

if TYPE_CHECKING:  # the Bot Framework SDK: loaded only when the demo runs Teams
    from .teams.conversations import Conversations

PLAYGROUND_PORT = 56150  # the playground's own default


class TeamsDemoError(ValueError):
    """`demo --teams` cannot run with these settings; the message says what to change."""


@dataclass(frozen=True, slots=True)
class TeamsDemo:
    reviewer: str  # an AAD object id or email: gets the card in a personal chat, and may decide
    playground: bool  # no MicrosoftAppId: the Agents Playground, unauthenticated

    @classmethod
    def choose(cls, microsoft_app_id: str, reviewer: str | None) -> TeamsDemo:
        if microsoft_app_id:
            if not reviewer:
                raise TeamsDemoError(
                    "MicrosoftAppId is set, so the card goes to real Teams: name who gets it with --teams-reviewer "
                    "(their email or AAD object id; they install the app or have it installed)")
            return cls(reviewer, playground=False)
        if reviewer:
            raise TeamsDemoError(
                "--teams-reviewer needs real Teams credentials (MicrosoftAppId); without them the card goes to the "
                f"Agents Playground's user, {playground.USER_NAME} ({playground.USER_EMAIL})")
        return cls(playground.USER_EMAIL, playground=True)

    def settings(self) -> dict[str, Any]:
        """Settings on top of the demo's own."""
        if self.playground:
            return {"bot_insecure_no_auth": True, "teams_allowed_tenants": [playground.TENANT_ID]}
        return {"bot_insecure_no_auth": False}  # the configured credentials, tenants included

    def policy(self, email_reviewer: str) -> dict[str, Any]:
        """The demo policy: the email reviewer or the Teams reviewer, whoever decides first."""
        return {"reviewers": [email_reviewer, self.reviewer], "email_reviewers": [email_reviewer],
                "teams_chat": [self.reviewer]}

    def who(self) -> str:
        if self.playground:
            return f"{playground.USER_NAME}, {playground.USER_EMAIL}, in the playground's chat"
        return f"{self.reviewer}, in their chat with the bot"

    def instructions(self, url: str) -> list[str]:
        """What to do before the sample request is sent."""
        if not self.playground:
            return [f"Teams: the Azure Bot's messaging endpoint must reach {url}/api/messages (e.g. through a tunnel);",
                    f"  {self.reviewer} gets the card once they have the app installed (the sample is sent then)."]
        return [
            "Teams: the bot accepts unauthenticated activities (development mode), from the playground's tenant only.",
            "  Open Microsoft 365 Agents Playground (Microsoft's local Teams; needs Node.js 18+) on it:",
            f"  {shlex.join(playground_command(url, ['npx', '-y', f'{playground.NPM_PACKAGE}@{playground.NPM_VERSION}']))}",
            "  It opens in the browser and installs the bot in its chat; the sample request is sent then.",
        ]


def playground_command(url: str, program: list[str], port: int = PLAYGROUND_PORT) -> list[str]:
    """The command line that starts the playground on the demo's bot (`program`: how to run it)."""
    return [*program, "-e", f"{url}/api/messages", "-c", "msteams", "-p", str(port), "--dt",
            "--conversation-id", playground.DEMO_CONVERSATION_ID]


async def reviewer_chat_opened(conversations: Conversations, demo: TeamsDemo) -> None:
    """Returns once the bot has a personal chat with the reviewer. For the playground, one
    opened from now on: a chat stored by an earlier demo belongs to a playground that may be
    gone (its connector's address is in the stored reference)."""
    opened = asyncio.Event()
    # Before the first look, so no save is missed. A chat is saved before its user's email
    # (looked up next): both wake this up.
    conversations.on_saved.append(opened.set)
    try:
        if not demo.playground and await _knows(conversations, demo.reviewer):
            return
        while True:
            await opened.wait()
            opened.clear()
            if await _knows(conversations, demo.reviewer):
                return
    finally:
        conversations.on_saved.remove(opened.set)


async def _knows(conversations: Conversations, reviewer: str) -> bool:
    from .teams.conversations import AmbiguousMember

    try:
        member = await conversations.member(reviewer)
    except AmbiguousMember as exc:
        raise TeamsDemoError(str(exc)) from None
    return await conversations.personal_with(member.aad_object_id if member else reviewer) is not None
