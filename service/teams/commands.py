"""The text commands the bot answers, in one table: the bot dispatches on it and the Teams app
package lists it (the command menu Teams shows), so the two cannot disagree. Pure: no SDK."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BotCommand:
    title: str  # the word typed after @Countersign (Teams' `commands[].title`)
    description: str  # shown next to it in Teams' command menu


STATUS = BotCommand("status", "List the approvals waiting here, oldest first")
HELP = BotCommand("help", "How to decide on an approval card")
COMMANDS: tuple[BotCommand, ...] = (STATUS, HELP)

HELP_TEXT = ("I post approvals for Countersign here. Decide on a card with **Approve**, **Edit and approve** or "
             "**Reject**. Commands: `status` lists the approvals waiting here, `help` shows this.")


def command_of(text: str) -> BotCommand | None:
    """The command a message names by its first word (after the mention was removed), if any."""
    words = text.strip().lower().split(maxsplit=1)
    return next((c for c in COMMANDS if words and words[0] == c.title), None)
