"""Cards in Teams: route each new approval to its channel and reviewers, post the card,
and keep every posted copy true to the approval's state.

Posting and updating are jobs (`teams.post_card`, `teams.update_card`), so they survive
restarts and are retried: 412, 429, 502, 503, 504 and connection errors are transient
(honouring Retry-After), 403, 404 and 413 are permanent and dead-letter the card, which
the run then shows.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from botbuilder.core import CardFactory, MessageFactory, TurnContext
from botbuilder.schema import (
    Activity,
    ActivityTypes,
    ChannelAccount,
    ConversationAccount,
    ConversationParameters,
    ConversationReference,
)

from adaptive_cards import ApprovalView, build_card, pending_card_and_fit

from .. import metrics
from ..approval_views import ApiLinks, load_view
from ..jobs import Deferred, Job, JobHandler, JobQueue, PermanentError, TransientError
from ..runs import NewApproval
from ..store import tables as t
from ..store.db import Op, Store, Tx
from .card_fit import CardFit
from .conversations import AmbiguousMember, Conversation, Conversations
from .errors import Throttled, classify_sdk_error
from .ratelimit import RateLimited, TeamsRateLimiter

log = logging.getLogger(__name__)

MAX_RATE_WAIT_SECONDS = 10.0
POST_CARD_JOB = "teams.post_card"
UPDATE_CARD_JOB = "teams.update_card"

# Awaited before each outgoing call so the SDK finds a fresh token in its cache.
TokenReady = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CardRow:
    id: str
    approval_id: str
    target: str
    conversation_id: str | None
    activity_id: str | None
    service_url: str | None
    tenant_id: str | None
    status: str

    @classmethod
    def from_row(cls, row: Any) -> CardRow:
        return cls(row.id, row.approval_id, row.target, row.conversation_id, row.activity_id, row.service_url,
                   row.tenant_id, row.status)


def card_attachment_activity(card: dict[str, Any]) -> Activity:
    return MessageFactory.attachment(CardFactory.adaptive_card(card))


_POSTED_CARDS = (sa.select(t.teams_cards.c.id, t.approvals.c.run_id)
                 .join(t.approvals, t.approvals.c.id == t.teams_cards.c.approval_id)
                 .where(t.teams_cards.c.approval_id == sa.bindparam("approval_id"), t.teams_cards.c.status == "posted"))


class TeamsCards:
    def __init__(self, store: Store, jobs: JobQueue, conversations: Conversations, adapter: Any, *,
                 links: ApiLinks, bot_app_id: str, limiter: TeamsRateLimiter, token_ready: TokenReady,
                 update_delay: timedelta = timedelta(0), card_fit: CardFit | None = None) -> None:
        self.store = store
        self.card_fit = card_fit or CardFit(links)
        self.jobs = jobs
        self.conversations = conversations
        self.adapter = adapter
        self.bot_app_id = bot_app_id
        self.limiter = limiter
        self.token_ready = token_ready
        self.update_delay = update_delay
        self.links = links
        # (tx, approval id, error) when a card could not be posted for good (dead letter).
        self.on_post_failed: list[Callable[[Tx, str, str], Awaitable[None]]] = []

    def register(self) -> None:
        self.jobs.register(POST_CARD_JOB, JobHandler(run=self.post, on_dead=self._on_dead, on_retry=self._on_retry))
        self.jobs.register(UPDATE_CARD_JOB, JobHandler(run=self.update, cancel_with_run=False))

    # ---- routing (inside the transaction that changes the approval) -------------------

    async def on_approval_created(self, tx: Tx, approval: NewApproval) -> None:
        policy = approval.policy
        targets = ([policy.teams_channel] if policy.teams_channel else []) + list(policy.teams_chat)
        for target in dict.fromkeys(targets):  # each target once, in order
            card_id = str(uuid.uuid4())
            tx.insert(t.teams_cards, dict(
                id=card_id, approval_id=approval.id, target=target, conversation_id=None, activity_id=None,
                service_url=None, tenant_id=None, status="posting", error=None, created_at=tx.now,
                updated_at=tx.now))
            await self.jobs.enqueue(tx, POST_CARD_JOB, {"card_id": card_id}, run_id=approval.run_id)

    async def on_reviewers_added(self, tx: Tx, approval_id: str, identities: list[str], via: str) -> None:
        """A person escalation or delegation added gets the card in a personal chat, when the
        bot knows them in an allowed tenant (`Conversations.why_unreachable`); otherwise the
        audit log says they were not notified, and why."""
        approval = (await tx.execute(sa.select(t.approvals.c.run_id).where(t.approvals.c.id == approval_id))).one()
        have = {target.casefold() for target in (await tx.execute(
            sa.select(t.teams_cards.c.target).where(t.teams_cards.c.approval_id == approval_id))).scalars()}
        for identity in identities:
            if identity.casefold() in have:
                continue
            refused = await self.conversations.why_unreachable(tx, identity)
            if refused is not None:
                tx.audit("teams.not_notified", run_id=approval.run_id, actor="system", data={
                    "approval_id": approval_id, "identity": identity, "via": via, "reason": refused})
                continue
            have.add(identity.casefold())
            card_id = str(uuid.uuid4())
            tx.insert(t.teams_cards, dict(
                id=card_id, approval_id=approval_id, target=identity, conversation_id=None, activity_id=None,
                service_url=None, tenant_id=None, status="posting", error=None, created_at=tx.now,
                updated_at=tx.now))
            await self.jobs.enqueue(tx, POST_CARD_JOB, {"card_id": card_id}, run_id=approval.run_id)

    async def on_approval_changed(self, tx: Tx, approval_id: str) -> None:
        rows = (await tx.execute(_POSTED_CARDS, {"approval_id": approval_id})).all()
        # Cards still being posted need nothing: the post job shows the state at that moment.
        # The reviewer who clicked already has the new card in the invoke answer; the
        # update for everyone else waits a moment, so that a burst of clicks is answered
        # before the card updates (SDK calls, heavy on the event loop) compete with it.
        due_at = tx.now + self.update_delay if self.update_delay else None
        for row in rows:
            await self.jobs.enqueue(tx, UPDATE_CARD_JOB, {"card_id": row.id}, run_id=row.run_id, due_at=due_at)

    # ---- jobs -------------------------------------------------------------------------

    async def _card(self, card_id: str) -> CardRow:
        async def q(conn: Any) -> Any:
            return (await conn.execute(sa.select(t.teams_cards).where(t.teams_cards.c.id == card_id))).first()

        row = await self.store.read(q)
        if row is None:
            raise PermanentError(f"Teams card {card_id} does not exist")
        return CardRow.from_row(row)

    async def post(self, job: Job) -> Op[None] | None:
        card = await self._card(job.payload["card_id"])
        if card.status == "posted":
            return None
        view = await load_view(self.store, card.approval_id, self.links)
        activity = card_attachment_activity(self._build(view))
        if card.target.startswith("19:"):
            posted = await self._post_to_channel(card.target, activity)
        else:
            posted = await self._post_to_person(card.target, activity)
        conversation_id, activity_id, service_url, tenant_id = posted
        accepted_at = time.monotonic()

        async def record(tx: Tx) -> None:
            tx.after_commit(metrics.side_effect_recorded(POST_CARD_JOB, accepted_at))
            await tx.execute(t.teams_cards.update().where(t.teams_cards.c.id == card.id).values(
                status="posted", conversation_id=conversation_id, activity_id=activity_id, service_url=service_url,
                tenant_id=tenant_id, error=None, updated_at=tx.now))
            tx.audit("teams.card_posted", run_id=job.run_id, actor="system",
                     data={"approval_id": card.approval_id, "target": card.target, "conversation_id": conversation_id})
            # The approval may have changed while the card was on its way: bring it up to date.
            current = (await tx.execute(sa.select(t.approvals.c.status)
                                             .where(t.approvals.c.id == card.approval_id))).scalar_one()
            if current != view.status:
                await self.jobs.enqueue(tx, UPDATE_CARD_JOB, {"card_id": card.id}, run_id=job.run_id)

        return record

    def _build(self, view: ApprovalView) -> dict[str, Any]:
        if not view.is_pending:
            return build_card(view)
        # The Approve of this card is then judged without building it again (`CardFit`).
        card, fits = pending_card_and_fit(view)
        self.card_fit.remember(view.approval_id, view.revision, fits)
        return card

    async def _post_to_channel(self, channel_id: str, activity: Activity) -> tuple[str, str, str, str | None]:
        installed = await self.conversations.for_channel(channel_id)
        if installed is None:
            raise PermanentError(f"the bot is not installed in the team of channel {channel_id}")
        parameters = ConversationParameters(
            is_group=True, channel_data={"channel": {"id": channel_id}}, activity=activity,
            tenant_id=installed.tenant_id, bot=ChannelAccount(id=self.bot_app_id or installed.reference.bot.id),
        )
        created: dict[str, str] = {}

        async def callback(turn_context: TurnContext) -> None:
            created["conversation_id"] = turn_context.activity.conversation.id
            created["activity_id"] = turn_context.activity.id

        await self._call(channel_id, installed.tenant_id, lambda: self.adapter.create_conversation(
            self.bot_app_id, callback, parameters, "msteams", installed.service_url))
        return created["conversation_id"], created["activity_id"], installed.service_url, installed.tenant_id

    async def _post_to_person(self, identity: str, activity: Activity) -> tuple[str, str, str, str | None]:
        try:
            member = await self.conversations.member(identity)
        except AmbiguousMember as exc:
            raise PermanentError(f"cannot route the card: {exc}") from None
        aad_object_id = member.aad_object_id if member else identity
        chat = await self.conversations.personal_with(aad_object_id)
        sent: dict[str, str] = {}

        async def send(turn_context: TurnContext) -> None:
            response = await turn_context.send_activity(activity)
            sent["conversation_id"] = turn_context.activity.conversation.id
            sent["activity_id"] = response.id if response else ""

        if chat is not None:
            await self._call(chat.id, chat.tenant_id, lambda: self.adapter.continue_conversation(
                chat.reference, send, self.bot_app_id))
            return sent["conversation_id"], sent["activity_id"], chat.service_url, chat.tenant_id
        if member is None or not member.user_id or not member.service_url:
            raise PermanentError(
                f"cannot reach {identity} in Teams: the bot has not met this person (install the app for them, "
                "or add the bot to a team they are in)")
        parameters = ConversationParameters(
            is_group=False, bot=ChannelAccount(id=self.bot_app_id), members=[ChannelAccount(id=member.user_id)],
            tenant_id=member.tenant_id, channel_data={"tenant": {"id": member.tenant_id}},
        )
        service_url: str = member.service_url

        async def created(turn_context: TurnContext) -> None:
            # A new 1:1 chat: remember it, then send the card into it.
            reference = TurnContext.get_conversation_reference(turn_context.activity)
            reference.user = ChannelAccount(id=member.user_id, aad_object_id=member.aad_object_id)
            await self.conversations.save(Conversation(
                id=turn_context.activity.conversation.id, kind="personal", service_url=service_url,
                tenant_id=member.tenant_id, team_id=None, channel_id=None,
                user_aad_object_id=member.aad_object_id, reference=reference))
            await send(turn_context)

        await self._call(member.user_id, member.tenant_id, lambda: self.adapter.create_conversation(
            self.bot_app_id, created, parameters, "msteams", service_url))
        return sent["conversation_id"], sent["activity_id"], service_url, member.tenant_id

    async def update(self, job: Job) -> Op[None] | None:
        card = await self._card(job.payload["card_id"])
        if card.status != "posted" or not card.activity_id or not card.conversation_id or not card.service_url:
            return None
        if not self.conversations.tenants.allows(card.tenant_id):
            raise PermanentError(f"card {card.id} is in tenant {card.tenant_id!r}, which is not in "
                                 "COUNTERSIGN_TEAMS_ALLOWED_TENANTS")
        view = await load_view(self.store, card.approval_id, self.links)
        activity = card_attachment_activity(self._build(view))
        activity.id = card.activity_id
        activity.type = ActivityTypes.message
        reference = ConversationReference(
            channel_id="msteams", service_url=card.service_url, bot=ChannelAccount(id=self.bot_app_id),
            conversation=ConversationAccount(id=card.conversation_id, tenant_id=card.tenant_id),
        )

        async def callback(turn_context: TurnContext) -> None:
            await turn_context.update_activity(activity)

        await self._call(card.conversation_id, card.tenant_id, lambda: self.adapter.continue_conversation(
            reference, callback, self.bot_app_id))
        return None

    async def _call(self, conversation_id: str, tenant_id: str | None, call: Callable[[], Awaitable[Any]]) -> None:
        await self.token_ready()
        try:
            await self.limiter.acquire(conversation_id, tenant_id, max_wait=MAX_RATE_WAIT_SECONDS)
        except RateLimited as exc:  # wait our turn later, without holding a worker or using an attempt
            raise Deferred(str(exc), retry_after=exc.retry_after) from None
        try:
            await call()
        except (TransientError, PermanentError):
            raise
        except Exception as exc:
            error = classify_sdk_error(exc, conversation_id)
            if isinstance(error, Throttled):  # slow the whole conversation down, not just this job
                self.limiter.penalize(conversation_id, error.retry_after or 1.0)
            raise error from exc

    # ---- dead letters -----------------------------------------------------------------

    async def _on_dead(self, tx: Tx, job: Job, error: str) -> None:
        approval_id = (await tx.execute(
            t.teams_cards.update().where(t.teams_cards.c.id == job.payload["card_id"])
            .values(status="failed", error=error, updated_at=tx.now)
            .returning(t.teams_cards.c.approval_id))).scalar_one_or_none()
        if approval_id is not None:
            for listener in self.on_post_failed:  # another channel may take over (email_fallback)
                await listener(tx, approval_id, error)

    async def _on_retry(self, tx: Tx, job: Job) -> None:
        await tx.execute(t.teams_cards.update().where(t.teams_cards.c.id == job.payload["card_id"])
                              .values(status="posting", updated_at=tx.now))
