"""The bot: remembers where it is installed, turns card clicks into decisions, and answers
`status` and `help` in channels and chats.

A click is decided through the same `Decisions.decide` as the ops API. The reviewer is
the activity's `from.aadObjectId` (checked by the Bot Connector's signed token), never
anything in the card's data; the card only says which approval was clicked. Where the
email matters (the run has `requested_by`, or the policy names reviewers by email), the
clicker's email and UPN come from the Teams member API and are compared too; a click
whose email cannot be learnt is refused. An Approve or Edit of an approval whose card
cannot show all of it is refused from the stored approval (`views.card_refusal`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa
from botbuilder.core import MessageFactory, TurnContext
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse, AdaptiveCardInvokeValue, ChannelAccount
from botbuilder.schema.teams import TeamsChannelAccount
from pydantic import ValidationError

from adaptive_cards import (
    INPUT_DELEGATE_TO,
    VERB_APPROVE,
    VERB_DELEGATE,
    VERB_EDIT,
    VERB_REJECT,
    build_card,
    build_not_allowed_card,
)
from adaptive_cards.text import escape_inline

from ..api.schemas import DecisionIn
from ..approval_views import ApiLinks, decided_view, load_view
from ..decisions import Decisions
from ..domain import (
    EMAIL_NEEDED,
    Channel,
    Contended,
    DecisionKind,
    DecisionRequest,
    DelegationRequest,
    NotFound,
    Reviewer,
)
from ..store import tables as t
from ..store.db import Store
from .card_fit import CardFit, card_refusal
from .commands import HELP_TEXT, STATUS, command_of
from .conversations import Conversation, Conversations, Member
from .invoke import ERROR_CONTENT_TYPE, JsonInvokeHandler

log = logging.getLogger(__name__)

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
VERBS = {VERB_APPROVE: DecisionKind.APPROVE, VERB_EDIT: DecisionKind.EDIT, VERB_REJECT: DecisionKind.REJECT}
MEMBER_LOOKUP_SECONDS = 2.0  # an invoke must be answered within about 5 s


def conversation_of(activity: Activity) -> Conversation:
    conversation = activity.conversation
    channel_data: dict[str, Any] = activity.channel_data if isinstance(activity.channel_data, dict) else {}
    kind = conversation.conversation_type or ("groupChat" if conversation.is_group else "personal")
    tenant = (channel_data.get("tenant") or {}).get("id") or conversation.tenant_id
    team_id = (channel_data.get("team") or {}).get("id")
    channel_id = (channel_data.get("channel") or {}).get("id")
    sender = activity.from_property
    return Conversation(
        id=conversation.id, kind=kind, service_url=activity.service_url, tenant_id=tenant, team_id=team_id,
        channel_id=channel_id, user_aad_object_id=sender.aad_object_id if kind == "personal" and sender else None,
        reference=TurnContext.get_conversation_reference(activity),
    )


class ApprovalBot(JsonInvokeHandler):
    def __init__(self, store: Store, decisions: Decisions, conversations: Conversations, links: ApiLinks, *,
                 card_fit: CardFit | None = None) -> None:
        self.store = store
        self.decisions = decisions
        self.conversations = conversations
        self.links = links
        self.card_refusal = card_refusal(links, card_fit)

    # ---- where the bot is ---------------------------------------------------------------

    async def on_conversation_update_activity(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        bot_id = activity.recipient.id if activity.recipient else None
        if any(m.id == bot_id for m in activity.members_removed or []):
            conversation = conversation_of(activity)
            await self.conversations.remove(conversation_id=conversation.id, team_id=conversation.team_id)
            return
        await self._remember(turn_context)

    async def on_installation_update_add(self, turn_context: TurnContext) -> None:
        await self._remember(turn_context)

    async def on_installation_update_remove(self, turn_context: TurnContext) -> None:
        conversation = conversation_of(turn_context.activity)
        await self.conversations.remove(conversation_id=conversation.id, team_id=conversation.team_id)

    async def _remember(self, turn_context: TurnContext) -> None:
        conversation = conversation_of(turn_context.activity)
        await self.conversations.save(conversation)
        sender = turn_context.activity.from_property
        if conversation.kind == "personal" and sender and sender.aad_object_id:
            await self._member(turn_context, sender)

    async def _member(self, turn_context: TurnContext, sender: ChannelAccount) -> Member | None:
        """The sender's email and UPN, from our cache or the Teams member API (None, or a
        record without them, when neither says: the caller decides whether that refuses)."""
        known = await self.conversations.member_by_object_id(sender.aad_object_id)
        if known is not None and known.user_id and (known.email or known.user_principal_name):
            return known
        try:
            async with asyncio.timeout(MEMBER_LOOKUP_SECONDS):
                info = await _conversation_member(turn_context, sender.id)
        except Exception as exc:  # the caller refuses where the email is needed (fail closed)
            log.warning("Teams member lookup for %s failed: %s", sender.aad_object_id, exc)
            return known
        member = Member(
            aad_object_id=sender.aad_object_id, user_id=sender.id,
            tenant_id=conversation_of(turn_context.activity).tenant_id,
            service_url=turn_context.activity.service_url, email=info.email,
            user_principal_name=info.user_principal_name, name=info.name or sender.name,
        )
        await self.conversations.save_member(member)
        return member

    # ---- decisions ----------------------------------------------------------------------

    async def on_adaptive_card_invoke(
        self, turn_context: TurnContext, invoke_value: AdaptiveCardInvokeValue
    ) -> AdaptiveCardInvokeResponse:
        # The SDK hands the action over as a plain dict (it does not deserialise it).
        action = invoke_value.action
        if not isinstance(action, dict):
            action = action.serialize() if action is not None else {}
        data = action.get("data")
        return (await self._decide(turn_context, action.get("verb"), dict(data) if isinstance(data, dict) else {})).response

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        value = turn_context.activity.value
        if isinstance(value, dict) and value.get("verb"):  # Action.Submit fallback of older clients
            # The posted card is updated for everyone by a job; only a refusal needs a word here.
            result = await self._decide(turn_context, value.get("verb"), value)
            if result.message:
                await turn_context.send_activity(MessageFactory.text(_plain(result.message)))
            return
        text = (TurnContext.remove_recipient_mention(turn_context.activity) or "").strip().lower()
        # Anything but a known command (help included) gets the help text.
        if command_of(text) == STATUS:
            await turn_context.send_activity(MessageFactory.text(await self._status(turn_context.activity)))
        else:
            await turn_context.send_activity(MessageFactory.text(HELP_TEXT))

    async def _delegate(self, turn_context: TurnContext, data: dict[str, Any]) -> ClickResult:
        approval_id, to = data.get("approval_id"), data.get(INPUT_DELEGATE_TO)
        if not isinstance(approval_id, str):
            return ClickResult.error(400, "BadRequest", "the card action names no approval")
        if not isinstance(to, str) or not to.strip() or len(to) > 320 or not to.strip().isprintable():
            return ClickResult.error(400, "BadRequest", f"{INPUT_DELEGATE_TO}: enter the email of the person")
        sender = turn_context.activity.from_property
        if sender is None or not sender.aad_object_id:
            return ClickResult.error(401, "Unauthorized", "the activity does not say who clicked")
        # Votes are held by the identities the policy names (often emails): learn the sender's.
        member = await self._member(turn_context, sender)
        email = member.email if member else None
        upn = member.user_principal_name if member else None
        try:
            outcome = await self.decisions.delegate(DelegationRequest(
                approval_id=approval_id, to=to.strip(), channel=Channel.TEAMS,
                reviewer=Reviewer(id=sender.aad_object_id, name=sender.name, email=email or upn, upn=upn)))
            view = await load_view(self.store, approval_id, self.links)
        except NotFound:
            return ClickResult.error(404, "NotFound", "this approval no longer exists")
        except Contended:
            return _contended()
        if not outcome.delegated:
            return ClickResult.card(build_not_allowed_card(view, outcome.detail["message"]), outcome.detail["message"])
        return ClickResult.card(build_card(view))

    async def _decide(self, turn_context: TurnContext, verb: str | None, data: dict[str, Any]) -> ClickResult:
        if verb == VERB_DELEGATE:
            return await self._delegate(turn_context, data)
        kind = VERBS.get(verb or "")
        approval_id = data.get("approval_id")
        if kind is None or not isinstance(approval_id, str):
            return ClickResult.error(400, "BadRequest", f"unknown card action {verb!r}")
        sender = turn_context.activity.from_property
        if sender is None or not (sender.aad_object_id or sender.id):
            return ClickResult.error(401, "Unauthorized", "the activity does not say who clicked")
        try:
            fields = DecisionIn.model_validate({
                "decision": kind.value, "reviewer": {"id": sender.aad_object_id or sender.id},
                **({"reason": data.get("reason")} if kind is DecisionKind.REJECT else {}),
                **({k: data[k] for k in ("subject", "body") if data.get(k) is not None} if kind is DecisionKind.EDIT else {}),
            })
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "input"
            return ClickResult.error(400, "BadRequest", f"{field}: {first['msg']}")
        request = DecisionRequest(
            approval_id=approval_id, kind=kind, channel=Channel.TEAMS,
            reviewer=Reviewer(id=sender.aad_object_id or sender.id, name=sender.name),
            reason=fields.reason, subject=fields.subject, body=fields.body, can_resolve_email=True,
            # A card without a version shows the first text (and predates versions).
            draft_version=data["draft_version"] if type(data.get("draft_version")) is int else 1,
            approval_refusal=self.card_refusal,
            # A reviewer met before is decided in one op; the member API only for a new one.
            known_email=self.conversations.known_email(sender.aad_object_id) if sender.aad_object_id else None,
        )
        try:
            outcome = await self.decisions.decide(request)
            if outcome.detail.get("reason") == EMAIL_NEEDED:  # reviewers by email, or a requester to tell apart
                member = await self._member(turn_context, sender) if sender.aad_object_id else None
                email = member.email if member else None
                upn = member.user_principal_name if member else None
                outcome = await self.decisions.decide(replace(
                    request, reviewer=replace(request.reviewer, email=email or upn, upn=upn),
                    can_resolve_email=False, email_unresolved=not (email or upn), known_email=None))
        except NotFound:
            return ClickResult.error(404, "NotFound", "this approval no longer exists")
        except Contended:
            return _contended()
        if outcome.decided:  # the common case: the new state is known without reading it back
            return ClickResult.card(build_card(decided_view(outcome, self.links)))
        view = await load_view(self.store, approval_id, self.links)
        if outcome.detail.get("reason") in ("not_allowed", "already_voted", "draft_changed"):
            return ClickResult.card(build_not_allowed_card(view, outcome.detail["message"]), outcome.detail["message"])
        return ClickResult.card(build_card(view))

    # ---- commands -----------------------------------------------------------------------

    async def _status(self, activity: Activity) -> str:
        conversation = conversation_of(activity)
        targets = [v for v in (conversation.channel_id, conversation.id, conversation.user_aad_object_id) if v]
        if conversation.user_aad_object_id:  # a personal chat: cards routed to this person by email too
            member = await self.conversations.member_by_object_id(conversation.user_aad_object_id)
            if member is not None:
                targets += [v for v in (member.email, member.user_principal_name) if v]

        async def q(conn: Any) -> list[Any]:
            return (await conn.execute(
                sa.select(t.approvals.c.id, t.approvals.c.action, t.approvals.c.run_id, t.approvals.c.created_at)
                .join(t.teams_cards, t.teams_cards.c.approval_id == t.approvals.c.id)
                .where(sa.or_(t.teams_cards.c.target.in_(targets),
                              t.teams_cards.c.conversation_id == conversation.id),
                       t.approvals.c.status == "pending")
                .order_by(t.approvals.c.created_at).limit(20))).all()

        rows = await self.store.read(q)
        if not rows:
            return "No approvals are waiting here."
        lines = [f"{len(rows)} approval(s) waiting here:"]
        for row in rows:
            to = ", ".join(row.action["to"])
            lines.append(f"- {_plain(row.action['subject'])} (to {_plain(to)}), run {row.run_id}")
        return "\n".join(lines)


async def _conversation_member(turn_context: TurnContext, user_id: str) -> TeamsChannelAccount:
    """GET /v3/conversations/{id}/members/{user} through the turn's async connector client.

    `TeamsInfo.get_member` uses a synchronous client (blocking the event loop) in team
    conversations, and the generic `ChannelAccount` drops the email and UPN: read the raw
    answer as a `TeamsChannelAccount` instead."""
    connector = turn_context.turn_state[turn_context.adapter.BOT_CONNECTOR_CLIENT_KEY]
    raw = await connector.conversations.get_conversation_member(
        turn_context.activity.conversation.id, user_id, raw=True)
    text = raw.response.text  # a method on some msrest transports, a str on the async one
    return TeamsChannelAccount().deserialize(json.loads(text() if callable(text) else text))


def _plain(text: str) -> str:
    """Customer and model text in a chat message: the cards' own escaping."""
    return escape_inline(text)


@dataclass(frozen=True, slots=True)
class ClickResult:
    """The invoke answer for a click, and the refusal to tell a Submit-fallback client."""

    response: AdaptiveCardInvokeResponse
    message: str | None = None

    @classmethod
    def card(cls, card: dict[str, Any], refusal: str | None = None) -> ClickResult:
        return cls(AdaptiveCardInvokeResponse(status_code=200, type=CARD_CONTENT_TYPE, value=card), refusal)

    @classmethod
    def error(cls, status: int, code: str, message: str) -> ClickResult:
        return cls(AdaptiveCardInvokeResponse(status_code=status, type=ERROR_CONTENT_TYPE,
                                              value={"code": code, "message": message}), message)


def _contended() -> ClickResult:
    # An error answer, not a card: Teams keeps the card the person clicked, buttons and all,
    # so clicking again is the retry (the vote was not recorded).
    return ClickResult.error(503, "ServiceUnavailable",
                             "many changes reached this approval at once and yours was not recorded: try again")
