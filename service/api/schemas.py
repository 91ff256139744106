"""Request and response bodies of the ops API (pydantic). The OpenAPI document is built
from these models, and the tests validate real answers against it."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    EmailStr,
    Field,
    HttpUrl,
    Tag,
    UrlConstraints,
    model_validator,
)

from ..domain import ActionType, ApprovalStatus, AttemptOutcome, Channel, DecisionKind, DeliveryStatus, RunStatus
from ..identities import checked_identity
from ..jobs import JobStatus
from ..mail.fields import BodyText, HeaderText, header_text
from ..policy import PolicyMode
from ..scopes import Scope

_TEXT_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps tab, LF and CR
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
MAX_URL_LENGTH = 2048  # the `runs.callback_url` column


class FieldsError(ValueError):
    """A model-level check that is about particular fields: the API names them in `errors`."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields


def _free_text(value: str) -> str:
    """Multi-line text stored as it is (requests, reasons): no NUL or other control characters,
    which PostgreSQL refuses and no reader expects."""
    if _TEXT_UNSAFE.search(value):
        raise ValueError("must not contain control characters other than tab, newline and carriage return")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _finite_json(value: Any, path: str = "") -> Any:
    """JSON has no NaN or Infinity: refuse them rather than store what PostgreSQL rejects and
    what no JSON reader can parse back."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"numbers must be finite (found {value} at {path or 'the top level'})")
    if isinstance(value, dict):
        for key, item in value.items():
            _finite_json(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _finite_json(item, f"{path}[{i}]")
    return value


def _url_fits(value: HttpUrl) -> HttpUrl:
    if len(str(value)) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters once normalised")
    return value


def _bare_address(value: Any) -> Any:
    # EmailStr would turn "Name <a@b.example>" into "a@b.example", silently dropping the name.
    if isinstance(value, str) and ("<" in value or ">" in value):
        raise ValueError("give the bare address (name@example.com), without a display name or angle brackets")
    return value


def _message_id(value: str) -> str:
    if not _MESSAGE_ID.match(value):
        raise ValueError("must be a Message-ID like <id@host>")
    return value


MessageId = Annotated[str, Field(max_length=255), AfterValidator(_message_id)]
ShortText = Annotated[str, Field(max_length=320), AfterValidator(header_text)]
# An identity compared with others (service/identities.py): trimmed, no invisible or look-alike characters.
Identity = Annotated[ShortText, AfterValidator(checked_identity)]
ReasonText = Annotated[str, Field(max_length=2000), AfterValidator(_free_text)]
RequestText = Annotated[str, Field(min_length=1, max_length=20_000), AfterValidator(_free_text),
                        AfterValidator(_not_blank)]
CallbackUrl = Annotated[HttpUrl, UrlConstraints(max_length=MAX_URL_LENGTH), AfterValidator(_url_fits)]
Metadata = Annotated[dict[str, Any], AfterValidator(_finite_json)]
Address = Annotated[EmailStr, BeforeValidator(_bare_address)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(Strict):
    email: Address
    name: ShortText | None = None


class SendEmailActionIn(Strict):
    type: Literal["send_email"]
    to: list[Address] = Field(min_length=1, max_length=50)
    cc: list[Address] = Field(default_factory=list, max_length=50)
    subject: HeaderText
    body: BodyText
    in_reply_to: MessageId | None = None
    references: list[MessageId] = Field(default_factory=list, max_length=100)


# A discriminated union, so that an unknown `type` is named as such in the error.
ActionIn = Annotated[SendEmailActionIn, Field(discriminator="type")]


class PolicyIn(Strict):
    """An inline policy: narrows a configured policy for this run. It may name some of the
    base's reviewers (any, when the base lets anyone decide), forbid self-approval, and add
    Teams destinations when the resulting policy names its reviewers; anything that would
    widen the base is a 422 naming the field."""

    base: ShortText | None = Field(default=None, description='The configured policy to narrow (default: "default")')
    mode: Literal["first", "first_responder"] | None = None
    reviewers: list[ShortText] | None = Field(
        default=None, min_length=1, max_length=500,
        description="Some of the base policy's reviewers (any identities when the base lets anyone decide)")
    allow_self_approval: bool | None = Field(
        default=None, description="Only false, or true when the base policy already allows it")
    teams_channel: ShortText | None = Field(default=None, description="Teams channel id: a new thread per approval")
    teams_chat: list[ShortText] = Field(default_factory=list, max_length=60,
                                        description="Reviewers (AAD object ids or emails) asked in personal chat")

    @model_validator(mode="before")
    @classmethod
    def _no_name(cls, data: Any) -> Any:
        # Inline policies used to name themselves; the name shown is now the base's.
        if isinstance(data, dict) and "name" in data:
            raise FieldsError("an inline policy has no name of its own: give `base`, the configured policy it "
                              "narrows", "name")
        return data


def _policy_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "name"
    if isinstance(value, (dict, PolicyIn)):
        return "inline"
    return None


# A name or an object: the discriminator picks the branch from the JSON type, so that an
# error in an inline policy is reported once, at its field, not once per branch.
PolicyRef = Annotated[
    Annotated[ShortText, Tag("name")] | Annotated[PolicyIn, Tag("inline")],
    Discriminator(_policy_kind, custom_error_type="policy_type",
                  custom_error_message="must be a configured policy's name or a policy object"),
]


class RunCreate(Strict):
    """Either `request` (+ `customer`) for the agent to draft, or a pre-drafted `action`."""

    request: RequestText | None = None
    customer: CustomerIn | None = None
    action: ActionIn | None = None
    policy: PolicyRef | None = Field(default=None, description="A configured policy's name, or an inline policy narrowing one")
    requested_by: Identity | None = None
    callback_url: CallbackUrl | None = Field(
        default=None, description="https (http only where the service allows it), no user name or password; "
        "private, loopback, link-local and metadata addresses are refused (README: Callbacks)")
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of(self) -> RunCreate:
        if (self.request is None) == (self.action is None):
            raise FieldsError("give exactly one of `request` (for the agent) or `action` (pre-drafted)",
                              "request", "action")
        if self.request is not None and self.customer is None:
            raise FieldsError("`customer` is required with `request`", "customer")
        return self


class ReviewerIn(Strict):
    id: Identity
    name: ShortText | None = None
    email: Annotated[EmailStr, AfterValidator(checked_identity)] | None = None


class DecisionIn(Strict):
    decision: Literal["approve", "reject", "edit"]
    reviewer: ReviewerIn | None = Field(
        default=None, description="With a `decide` key: absent, or the key's own reviewer. With `decide:on-behalf`: "
                                  "required, the reviewer the key decides for")
    reason: ReasonText | None = None
    subject: HeaderText | None = None
    body: BodyText | None = None
    draft_version: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="The text version you read (approvals[].draft_version): an approve or edit is refused with 409 "
                    "draft_changed if an edit has replaced it since, or if it is absent once the text was edited")

    @model_validator(mode="after")
    def _fits_kind(self) -> DecisionIn:
        if self.decision == "reject" and not (self.reason or "").strip():
            raise FieldsError("`reason` is required to reject", "reason")
        if self.decision == "edit" and self.subject is None and self.body is None:
            raise FieldsError("`edit` needs a new `subject` or `body`", "subject", "body")
        if self.decision != "edit" and (self.subject is not None or self.body is not None):
            given = [f for f in ("subject", "body") if getattr(self, f) is not None]
            raise FieldsError("`subject` and `body` are only accepted with `edit`", *given)
        return self


class DelegationIn(Strict):
    to: Identity = Field(description="Who gets the vote: an identity the policy allows (its `delegates` or "
                                      "`escalate_to`), never the requester or someone who voted or holds a vote")
    reviewer: ReviewerIn | None = Field(
        default=None, description="With a `decide` key: absent, or the key's own reviewer. With `decide:on-behalf`: "
                                  "required, the reviewer whose vote is handed over")


class CancelIn(Strict):
    reason: ReasonText | None = None


# ---- answers ------------------------------------------------------------------------
# The shapes the handlers (and `service.runs`) produce, field for field: tests/test_openapi.py
# validates real answers against the document, refusing properties it does not declare.
# Statuses are the domain's enums, so the document follows them.

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class RunAccepted(BaseModel):
    id: str
    status: RunStatus
    url: str


class RunOut(BaseModel):
    id: str
    kind: Literal["action", "agent"]
    status: RunStatus
    requested_by: str | None
    created_at: Timestamp
    updated_at: Timestamp
    metadata: dict[str, Any]
    summary: str | None
    failure_reason: str | None
    url: str


class JobOut(BaseModel):
    id: str
    kind: str
    run_id: str | None
    status: JobStatus
    attempts: int
    max_attempts: int
    due_at: Timestamp
    last_error: str | None
    created_at: Timestamp | None
    finished_at: Timestamp | None


class ActionOut(BaseModel):
    """A drafted email as stored: what the reviewer saw, or what was approved."""

    type: ActionType
    to: list[str]
    cc: list[str]
    subject: str
    body: str
    in_reply_to: str | None
    references: list[str]


class StageOut(BaseModel):
    reviewers: list[str]
    mode: PolicyMode
    required: int | None


class CalendarOut(BaseModel):
    name: str
    timezone: str
    days: list[str]
    hours: str
    holidays: list[str]


class TimersOut(BaseModel):
    remind_after: float | None = Field(description="Seconds (of working time with a calendar)")
    max_reminders: int
    escalate_after: float | None
    escalate_to: list[str]
    expire_after: float | None
    on_expiry: Literal["reject", "approve"]
    calendar: CalendarOut | None


class PolicyOut(BaseModel):
    name: str
    mode: PolicyMode
    reviewers: list[str] | Literal["anyone"] = Field(
        description='Who may decide: these identities, or "anyone" the channel authenticates')
    allow_self_approval: bool
    teams_channel: str | None
    teams_chat: list[str]
    required: int | None = Field(default=None, description="quorum: approvals needed")
    reject: Literal["any", "majority"] | None = Field(default=None, description="Present when not `any`")
    stages: list[StageOut] | None = Field(default=None, description="sequential: the stages, in order")
    timers: TimersOut | None = Field(default=None, description="Present when the policy has timers")
    delegates: list[str] | None = Field(default=None, description="Who a vote may be handed to, besides escalate_to")
    inline: bool = Field(default=False, description="Present (true) when the run narrowed policy `name` inline")
    extra: dict[str, Any] | None = Field(default=None, description="Only present when the policy has extra settings")


class CustomerOut(BaseModel):
    email: str
    name: str | None


class SourceOut(BaseModel):
    """A knowledge-base passage the agent retrieved while drafting."""

    title: str
    location: str = Field(description="The document's path in the knowledge directory")
    snippet: str
    score: float


class VoteOut(BaseModel):
    reviewer: str
    name: str | None
    at: Timestamp


class ProgressOut(BaseModel):
    """Where the votes of a pending (or just settled) approval stand."""

    outcome: ApprovalStatus = Field(description="pending until the policy's votes settle it")
    mode: PolicyMode = Field(description="The mode of the current stage")
    stage: int = Field(description="The current stage, from 1 (1 of 1 without stages)")
    stages: int
    required: int = Field(description="Approvals the current stage needs")
    approvals: list[VoteOut] = Field(description="Counted approvals of the current stage, on the current text")
    rejections: list[VoteOut]
    asked: list[str] = Field(description="Who is still asked in the current stage")


class AddedReviewerOut(BaseModel):
    identity: str
    slot: str = Field(description="escalation: a place of its own; delegation: the reviewer entry handed over")
    via: Literal["escalation", "delegation"]
    stage: int = Field(description="0-based stage it was added to")
    at: Timestamp
    by: str | None = None
    by_ids: list[str] | None = Field(default=None, description=(
        "delegation: every id the one who handed the vote over was known by (casefolded); none left to vote with"))


class DiffLineOut(BaseModel):
    kind: Literal["equal", "added", "removed"] = Field(
        description="equal: in both texts (context); removed: in the draft only; added: in the approved text only")
    text: str = Field(description="The line, without its line end")
    old_line: int | None = Field(description="1-based line number in the draft (null for an added line)")
    new_line: int | None = Field(description="1-based line number in the approved text (null for a removed line)")


class DiffHunkOut(BaseModel):
    header: str = Field(description='As in a unified diff: "@@ -3,4 +3,5 @@"')
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: list[DiffLineOut] = Field(description="The changed lines with up to 3 unchanged lines around them")


class TextDiffOut(BaseModel):
    added: int = Field(description="Lines added")
    removed: int = Field(description="Lines removed")
    hunks: list[DiffHunkOut]


class EditDiffOut(BaseModel):
    """What the reviewers' edits changed: the approved text against the draft, line by line
    (computed from the stored texts when read)."""

    draft_version: int = Field(description="The text compared from: 1, the draft as first proposed")
    approved_draft_version: int = Field(description="The text that was approved (see draft_version)")
    subject: TextDiffOut | None = Field(description="Null when the subject was not changed")
    body: TextDiffOut | None = Field(description="Null when the body was not changed")
    unified: str = Field(description="Both as unified-diff text: draft/subject -> approved/subject, then "
                                     "draft/body -> approved/body")


class ApprovalOut(BaseModel):
    id: str
    revision: int
    status: ApprovalStatus
    action: ActionOut
    policy: PolicyOut
    requested_by: str | None
    created_at: Timestamp
    decided_at: Timestamp | None
    decided_by: str | None
    approved_action: ActionOut | None
    approved_sha256: str | None
    sources: list[SourceOut] = Field(description="What the agent's draft drew on (empty for pre-drafted actions)")
    tool_call_id: str | None = Field(description="The LLM tool call this approval gates (agent runs)")
    mail_from: str | None = Field(description="From, frozen when the approval was created (null: made before "
                                              "this was recorded; the settings at the decision apply)")
    mail_reply_to: str | None = Field(description="Reply-To, frozen with From")
    content_hash_version: int = Field(description="The rule of approved_sha256: 2 covers From, Reply-To and every "
                                                  "MIME part; 1 (before the upgrade) the text content only")
    draft_version: int = Field(description="1, then one more for each edit under a multi-vote policy: `action` is "
                                           "the text the votes are about")
    progress: ProgressOut
    remind_at: Timestamp | None = Field(description="When the next reminder is due")
    escalate_at: Timestamp | None
    expire_at: Timestamp | None
    added_reviewers: list[AddedReviewerOut] = Field(description="People escalation or delegation added")
    diff: EditDiffOut | None = Field(description="Approved after an edit that changed the subject or body: what "
                                                 "was approved against the draft; null otherwise")


class ReviewerOut(BaseModel):
    id: str
    name: str | None
    email: str | None


class DecisionRecordOut(BaseModel):
    id: str
    approval_id: str
    kind: DecisionKind
    reviewer: ReviewerOut
    actor: str = Field(description="Who took the decision: the reviewer, or the API key that decided on their behalf")
    on_behalf_of: str | None = Field(description="The reviewer, when an API key decided for them (decide:on-behalf)")
    channel: Channel
    reason: str | None
    created_at: Timestamp
    draft_version: int = Field(description="The text voted on (see approvals[].draft_version)")
    stage: int = Field(description="The stage voted in, from 1")
    counted: bool = Field(description="Whether the vote counts: false once an edit made a new text")
    delegate_to: str | None = Field(description="kind delegate: who the vote was handed to")


class DeliveryAttemptOut(BaseModel):
    number: int = Field(description="1, 2, ... per delivery; attempts made before the upgrade to 0006 have no entry")
    step: str = Field(description="How far the SMTP transaction got: connect, MAIL, RCPT (nothing was transmitted) "
                                  "or DATA (the content was being sent: the server may have the message)")
    started_at: Timestamp
    finished_at: Timestamp | None = Field(description="Null while sending, and for an interrupted attempt")
    outcome: AttemptOutcome = Field(description="sending (under way), accepted (the server's 250), failed, or "
                                                "interrupted (the process died or lost the job while sending: "
                                                "the server may have accepted it)")
    smtp_reply: str | None = Field(description="The server's reply that ended the attempt, e.g. "
                                               "\"250 2.0.0 ...\" or \"451 4.3.0 ...\"")
    error: str | None = Field(description="Why the attempt failed, as recorded on the job")
    possible_duplicate: bool = Field(description="Sent again after an interrupted attempt (the RFC 1047 window): "
                                                 "the recipient may have the message twice, with one Message-ID")


class DeliveryOut(BaseModel):
    id: str
    approval_id: str
    status: DeliveryStatus
    message_id: str
    approved_sha256: str
    sent_sha256: str | None
    mime_sha256: str | None
    smtp_reply: str | None
    attempts: int
    error: str | None
    created_at: Timestamp
    sending_at: Timestamp | None
    sent_at: Timestamp | None
    mail_from: str | None = Field(description="From as approved (null: rule 1, the settings' From)")
    mail_reply_to: str | None
    content_hash_version: int = Field(description="The rule of approved_sha256 and sent_sha256 (see approvals)")
    attempt_log: list[DeliveryAttemptOut] = Field(description="Every SMTP attempt, oldest first")


class TimelineEvent(BaseModel):
    seq: int
    at: Timestamp
    event: str = Field(description="run.created, approval.requested, decision.approve, delivery.sent, ...")
    actor: str
    data: dict[str, Any]


class RunDetailOut(RunOut):
    request: str | None
    customer: CustomerOut | None
    callback_url: str | None = Field(description="Without user name, password, query or fragment")
    policy: PolicyOut
    approvals: list[ApprovalOut]
    decisions: list[DecisionRecordOut]
    deliveries: list[DeliveryOut]
    jobs: list[JobOut]
    timeline: list[TimelineEvent]


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class JobPage(BaseModel):
    items: list[JobOut]


class DelegationOut(BaseModel):
    approval_id: str
    run_id: str
    delegate_to: str
    slot: str = Field(description="The reviewer entry of the policy whose vote was handed over")


class DecisionOut(BaseModel):
    approval_id: str
    run_id: str
    status: ApprovalStatus = Field(description="The approval's status after this vote (pending while more votes "
                                               "are needed)")
    decision_id: str
    progress: ProgressOut | None = Field(default=None, description="Present under a multi-vote policy")


class FieldError(BaseModel):
    field: str = Field(description='Where the problem is, e.g. `action.to[0]`; `$` is the body as a whole')
    message: str


class FirstVoteOut(BaseModel):
    reviewer: str
    approve: bool
    at: Timestamp
    draft_version: int
    stage: int = Field(description="From 1")


class Problem(BaseModel):
    """RFC 9457 problem details, with `errors` naming each bad field."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldError] | None = None
    scope: str | None = Field(default=None, description="403 missing_scope: the scope the credential lacks")
    first_vote: FirstVoteOut | None = Field(default=None, description="409 already_voted: the vote already cast")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


# ---- API keys --------------------------------------------------------------------------

class KeyCreateIn(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))
    reviewer: Identity | None = Field(default=None, description="Required with `decide`: the one reviewer the key "
                                                                 "decides as")
    expires: ShortText | None = Field(default=None, description="How long the key lives: 90d, 12h, P30D, ...")


class KeyOut(BaseModel):
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it (the key itself is never shown again)")
    scopes: list[Scope]
    reviewer: str | None
    status: Literal["active", "expired", "revoked"]
    created_by: str
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    revoked_by: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="The key: shown once, stored only as a hash")


class KeyPage(BaseModel):
    items: list[KeyOut]


class AuditEventOut(BaseModel):
    seq: int
    at: Timestamp
    run_id: str | None
    kind: str
    actor: str
    data: dict[str, Any]
    prev_hash: str
    hash: str
    alg: str | None = Field(description='"hmac-sha256" (keyed with COUNTERSIGN_AUDIT_KEY), or null for an event '
                                        "written before the chain was keyed (plain SHA-256)")


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null at the end of the log")
