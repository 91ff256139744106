"""Teams notices of approval timers: reminders and escalations, where the card was posted.

A channel card gets a reply in its thread mentioning the people still asked (or the ones
escalation added); a card in a reviewer's personal chat gets a message there when that
reviewer is still asked. People escalation adds get a card of their own in personal chat
when the bot knows them in an allowed tenant (through `Runs.on_reviewers_added`, as
delegates: `TeamsCards.on_reviewers_added`). Every notice is a `teams.notice` job (one per
card), queued in the transaction that fired the timer, so it is retried and survives
restarts like a card.
"""

from __future__ import annotations

import sqlalchemy as sa
from botbuilder.core import MessageFactory, TurnContext
from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, ConversationReference, Mention

from ..jobs import Job, JobHandler, JobQueue, PermanentError
from ..store import tables as t
from ..store.db import Op, Tx
from ..timers import Escalation, Reminder
from .cards import TeamsCards
from .conversations import AmbiguousMember, Conversations, Member

NOTICE_JOB = "teams.notice"

_POSTED = (sa.select(t.teams_cards.c.id, t.teams_cards.c.target)
           .where(t.teams_cards.c.approval_id == sa.bindparam("approval_id"), t.teams_cards.c.status == "posted"))


def is_channel(target: str) -> bool:
    return target.startswith("19:")


def mention_activity(text: str, people: list[tuple[str, Member | None]]) -> Activity:
    """`text` with "{people}" replaced by a mention of each person the bot knows (Teams
    `mention` entities: `<at>Name</at>` in the text), and the bare identity otherwise."""
    shown: list[str] = []
    entities: list[Mention] = []
    for identity, member in people:
        if member is None or not member.name:
            shown.append(identity)
            continue
        tag = f"<at>{member.name}</at>"
        shown.append(tag)
        entities.append(Mention(mentioned=ChannelAccount(id=member.user_id or member.aad_object_id, name=member.name),
                                text=tag, type="mention"))
    activity = MessageFactory.text(text.replace("{people}", ", ".join(shown) or "the reviewers"))
    activity.entities = entities or None
    return activity


class TeamsNotices:
    def __init__(self, jobs: JobQueue, cards: TeamsCards, conversations: Conversations) -> None:
        self.jobs = jobs
        self.cards = cards
        self.conversations = conversations

    def register(self) -> None:
        self.jobs.register(NOTICE_JOB, JobHandler(run=self.send))

    # ---- inside the timer's transaction ------------------------------------------------

    async def on_reminder(self, tx: Tx, reminder: Reminder) -> None:
        text = (f"Reminder {reminder.number}: this approval is still waiting for a decision from {{people}}."
                if reminder.asked else f"Reminder {reminder.number}: this approval is still waiting for a decision.")
        for card in (await tx.execute(_POSTED, {"approval_id": reminder.approval_id})).all():
            await self.jobs.enqueue(tx, NOTICE_JOB, {
                "card_id": card.id, "text": text, "people": list(reminder.asked),
                # A personal chat card is reminded only while its reviewer is asked.
                "only_if_asked": not is_channel(card.target) and not reminder.policy.anyone,
            }, run_id=reminder.run_id)

    async def on_escalation(self, tx: Tx, escalation: Escalation) -> None:
        if not escalation.added:
            return
        cards = (await tx.execute(_POSTED, {"approval_id": escalation.approval_id})).all()
        for card in cards:
            if is_channel(card.target):
                await self.jobs.enqueue(tx, NOTICE_JOB, {
                    "card_id": card.id, "people": list(escalation.added), "only_if_asked": False,
                    "text": "Escalated: nobody decided in time, so {people} now also review this approval.",
                }, run_id=escalation.run_id)
        # The people added get a card of their own through `Runs.on_reviewers_added`
        # (`TeamsCards.on_reviewers_added`), as delegates do.

    # ---- the job ---------------------------------------------------------------------

    async def _person(self, identity: str) -> Member | None:
        try:
            return await self.conversations.member(identity)
        except AmbiguousMember:
            return None  # named as given, never guessed

    async def send(self, job: Job) -> Op[None] | None:
        card = await self.cards._card(job.payload["card_id"])
        if card.status != "posted" or not card.conversation_id or not card.service_url:
            return None
        if not self.conversations.tenants.allows(card.tenant_id):
            raise PermanentError(f"card {card.id} is in tenant {card.tenant_id!r}, which is not in "
                                 "COUNTERSIGN_TEAMS_ALLOWED_TENANTS")
        people: list[str] = job.payload["people"]
        if job.payload.get("only_if_asked"):
            member = await self._person(card.target)
            mine = {card.target.casefold()} | ({v.casefold() for v in (
                member.aad_object_id, member.email, member.user_principal_name) if v} if member else set())
            if not mine & {p.casefold() for p in people}:
                return None
            people = [card.target]
        activity = mention_activity(job.payload["text"], [(p, await self._person(p)) for p in people])
        reference = ConversationReference(
            channel_id="msteams", service_url=card.service_url, bot=ChannelAccount(id=self.cards.bot_app_id),
            conversation=ConversationAccount(id=card.conversation_id, tenant_id=card.tenant_id),
            # A channel card's conversation is its thread: the notice is a reply to the card.
            activity_id=card.activity_id,
        )

        async def callback(turn_context: TurnContext) -> None:
            await turn_context.send_activity(activity)

        await self.cards._call(card.conversation_id, card.tenant_id, lambda: self.cards.adapter.continue_conversation(
            reference, callback, self.cards.bot_app_id))
        return None

