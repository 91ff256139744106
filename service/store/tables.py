"""The schema: SQLAlchemy Core tables, the same on SQLite and PostgreSQL.

Migrations in `migrations/versions` create exactly this; `tests/test_migrations.py` checks
that they agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python; `timestamptz` on PostgreSQL, sortable text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


ID = sa.String(36)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "action" (pre-drafted) | "agent"
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("request", sa.Text),  # the agent request, when kind == agent
    sa.Column("customer", sa.JSON),
    sa.Column("requested_by", sa.String(320)),
    sa.Column("callback_url", sa.String(2048)),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("failure_reason", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Index(None, "status", "created_at", "id"),
    sa.Index(None, "created_at", "id"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("action", sa.JSON, nullable=False),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("requested_by", sa.String(320)),
    # Compare-and-set guard: every state change bumps it.
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("decided_at", UtcDateTime),
    sa.Column("decided_by", sa.String(320)),
    sa.Column("approved_action", sa.JSON),
    sa.Column("approved_sha256", sa.String(64)),
    # Agent runs: the passages the draft drew on, and the LLM tool call this approval gates.
    sa.Column("sources", sa.JSON),
    sa.Column("tool_call_id", sa.String(128)),
    # From and Reply-To frozen when the approval is created (NULL: created before 0005,
    # the settings at the decision apply); the rule of approved_sha256 (NULL: v1).
    sa.Column("mail_from", sa.String(998)),
    sa.Column("mail_reply_to", sa.String(998)),
    sa.Column("content_hash_version", sa.Integer),
    # Policies with several votes (0007). draft_version: bumped by an edit under a
    # multi-vote mode, whose text the remaining votes are then about; stage: the current
    # stage of a sequential policy (0-based); added_reviewers: people escalation or
    # delegation added ([{"identity", "slot", "via", "at"}]).
    sa.Column("draft_version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("stage", sa.Integer, nullable=False, server_default="0"),
    sa.Column("added_reviewers", sa.JSON),
    # Timers (0007): when each falls due next (NULL: none), shown on the card and the run;
    # the jobs with these due_at are what fires them.
    sa.Column("remind_at", UtcDateTime),
    sa.Column("reminders_sent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("escalate_at", UtcDateTime),
    sa.Column("escalated_at", UtcDateTime),
    sa.Column("expire_at", UtcDateTime),
    sa.UniqueConstraint("run_id", "revision"),
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("approval_id", ID, sa.ForeignKey("approvals.id"), nullable=False, index=True),
    sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("reviewer_id", sa.String(320), nullable=False),
    sa.Column("reviewer_name", sa.String(320)),
    sa.Column("reviewer_email", sa.String(320)),
    sa.Column("reviewer_upn", sa.String(320)),  # 0007: a person named by UPN counts once too
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("final_action", sa.JSON),
    sa.Column("created_at", UtcDateTime, nullable=False),
    # The credential that took the decision when it differs from the reviewer: an API key
    # with `decide:on-behalf` records itself here and the reviewer in reviewer_id.
    sa.Column("actor", sa.String(320)),
    # Votes (0007): the text's draft_version and the stage voted in, and the slot: the
    # policy's reviewer entry the voter holds (casefolded), so that one person counts once
    # whichever identity and channel they use. NULL on decisions older than 0007.
    sa.Column("draft_version", sa.Integer),
    sa.Column("stage", sa.Integer),
    sa.Column("slot", sa.String(320)),
    # kind "delegate": the slot was handed to this identity.
    sa.Column("delegate_to", sa.String(320)),
    # An edit under a multi-vote mode: the text it replaced (approvals.action is the text asked).
    sa.Column("replaced_action", sa.JSON),
    sa.Index("uq_decisions_vote", "approval_id", "draft_version", "slot", unique=True,
             sqlite_where=sa.text("slot IS NOT NULL AND kind != 'delegate'"),
             postgresql_where=sa.text("slot IS NOT NULL AND kind != 'delegate'")),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("approval_id", ID, sa.ForeignKey("approvals.id"), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message_id", sa.String(255), nullable=False, unique=True),
    sa.Column("action", sa.JSON, nullable=False),  # the approved action, as approved
    sa.Column("approved_sha256", sa.String(64), nullable=False),
    sa.Column("mime", sa.LargeBinary),  # exact bytes, built once, re-sent as they are
    sa.Column("mime_sha256", sa.String(64)),
    sa.Column("sent_sha256", sa.String(64)),  # recomputed from the MIME bytes sent
    sa.Column("smtp_reply", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sending_at", UtcDateTime),
    sa.Column("sent_at", UtcDateTime),
    # As frozen by the decision; NULL (before 0005): the live settings, hash rule v1.
    sa.Column("mail_from", sa.String(998)),
    sa.Column("mail_reply_to", sa.String(998)),
    sa.Column("content_hash_version", sa.Integer),
)

# Every SMTP attempt of a delivery, with what the server answered. `step` is how far it got:
# connect | MAIL | RCPT (nothing was transmitted) or DATA (`sending` was committed: the server
# may have the message). outcome: sending (under way, or its process died) -> accepted |
# failed | interrupted (a later attempt found it still `sending`). possible_duplicate: this
# attempt transmitted a message that an earlier, interrupted one may already have delivered.
delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("delivery_id", ID, sa.ForeignKey("deliveries.id"), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),  # 1, 2, ... per delivery (= deliveries.attempts at the time)
    sa.Column("step", sa.String(8), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),  # NULL while sending, and for an interrupted attempt
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("smtp_reply", sa.Text),  # "250 2.0.0 ...", "451 4.3.0 ...": the reply that ended it
    sa.Column("error", sa.Text),
    sa.Column("possible_duplicate", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("delivery_id", "number"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("run_id", ID, index=True),
    sa.Column("payload", sa.JSON, nullable=False),
    # queued -> done | dead | cancelled; a lease (leased_until, lease_token) marks it taken.
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("due_at", UtcDateTime, nullable=False),
    sa.Column("leased_until", UtcDateTime),
    sa.Column("lease_token", sa.String(36)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Index(None, "status", "due_at"),
    # 0007: a run's queued jobs (cancelling a run's, or an approval's timers). Without it
    # SQLite walks the (status, due_at) index over every queued job: 10 ms per expiry
    # with 10,000 timers waiting.
    sa.Index(None, "run_id", "status"),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_sha256", sa.String(64), nullable=False),
    sa.Column("run_id", ID, sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("run_id", ID, index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(320), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("alg", sa.String(16)),  # the rule that made `hash`; NULL: plain SHA-256 (before 0005)
)

# One row (id = 1): the chain's head. Locking it serialises appends across processes.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("alg", sa.String(16)),  # the head event's rule: NULL until the chain is keyed
)

# Microsoft Teams: where the bot is installed (kept current from conversationUpdate and
# installationUpdate activities), the cards it posted, and reviewers' emails looked up.
teams_conversations = sa.Table(
    "teams_conversations",
    metadata,
    sa.Column("id", sa.String(512), primary_key=True),  # the Bot Framework conversation id
    sa.Column("kind", sa.String(16), nullable=False),  # channel | groupChat | personal
    sa.Column("service_url", sa.String(512), nullable=False),
    sa.Column("tenant_id", sa.String(64)),
    sa.Column("team_id", sa.String(512), index=True),
    sa.Column("channel_id", sa.String(512), index=True),
    sa.Column("user_aad_object_id", sa.String(64), index=True),  # personal chats
    sa.Column("reference", sa.JSON, nullable=False),  # the ConversationReference, serialised
    sa.Column("installed_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

teams_cards = sa.Table(
    "teams_cards",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("approval_id", ID, sa.ForeignKey("approvals.id"), nullable=False, index=True),
    sa.Column("conversation_id", sa.String(512)),  # the thread or chat the card is in, once posted
    sa.Column("target", sa.String(512), nullable=False),  # the channel id or reviewer it was routed to
    sa.Column("activity_id", sa.String(512)),  # set once posted; updates PUT to it
    sa.Column("service_url", sa.String(512)),
    sa.Column("tenant_id", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),  # posting | posted | failed
    sa.Column("error", sa.Text),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("approval_id", "target"),
)

teams_members = sa.Table(
    "teams_members",
    metadata,
    sa.Column("aad_object_id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(512)),  # the Teams user id ("29:..."), for proactive 1:1 chats
    sa.Column("tenant_id", sa.String(64)),
    sa.Column("service_url", sa.String(512)),
    sa.Column("email", sa.String(320), index=True),
    sa.Column("user_principal_name", sa.String(320)),
    sa.Column("name", sa.String(320)),
    sa.Column("fetched_at", UtcDateTime, nullable=False),
)

# The agent's paused workflow, one row per agent run: the LlamaIndex context as JSON
# (state, queues, collect buffers; no clients, no secrets). `version` guards against two
# workers resuming the same run; `waiting_for` says which tool call it waits on.
agent_snapshots = sa.Table(
    "agent_snapshots",
    metadata,
    sa.Column("run_id", ID, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("snapshot", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("waiting_for", sa.String(128)),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("llm_calls", sa.Integer, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# Ops API keys (`countersign keys create`): only a SHA-256 of the key is stored (keys are
# 256 random bits, so a plain hash is enough); `prefix` lets an operator recognise one.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("reviewer", sa.String(320)),  # the one reviewer a `decide` key decides as
    sa.Column("created_by", sa.String(320), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
    sa.Column("revoked_by", sa.String(320)),
)

# Signed requests seen within their validity window: a signature is accepted once, on
# every process sharing the database. Rows past `expires_at` can be deleted at any time.
signature_uses = sa.Table(
    "signature_uses",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
    # The Idempotency-Key the signed request first came with: only a replay carrying the
    # same key is answered (with its run), since the header itself is not signed.
    sa.Column("idempotency_key", sa.String(255)),
)

# Email review links (service/email_review/): one per reviewer and request email. Only a
# SHA-256 of the link's token is stored (256 random bits); the token is in the email alone.
# A link is spent by the first decision on its approval (in any channel) or by its expiry.
# With `email_confirm = "code"`, the one-time code sent to the reviewer is stored hashed too.
review_links = sa.Table(
    "review_links",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("approval_id", ID, sa.ForeignKey("approvals.id"), nullable=False, index=True),
    sa.Column("reviewer", sa.String(320), nullable=False),  # the email address the link was sent to
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("purpose", sa.String(32), nullable=False),  # "request" | "reminder" | "escalation" | "delegation" | "fallback"
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("spent_at", UtcDateTime),
    sa.Column("spent_reason", sa.String(64)),  # "decided" | "delegated" | "approval_ended" | ...
    sa.Column("code_sha256", sa.String(64)),
    sa.Column("code_expires_at", UtcDateTime),
    sa.Column("code_attempts", sa.Integer, nullable=False, server_default="0"),
)

# Operator console sessions (service/console/): the cookie holds a random session id, the
# table its SHA-256, the key it was opened with and that key's scopes at login.
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_sha256", sa.String(64), primary_key=True),
    sa.Column("key_id", ID, sa.ForeignKey("api_keys.id")),  # None: the legacy COUNTERSIGN_API_TOKEN
    sa.Column("actor", sa.String(320), nullable=False),
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime),
)
