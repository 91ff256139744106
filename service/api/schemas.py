"""Request and response bodies of the ops API (pydantic). The OpenAPI document is built
from these models, and the tests validate real answers against it."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, HttpUrl, model_validator

from ..mail.message import normalize_body

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")


def _header_text(value: str) -> str:
    if _HEADER_UNSAFE.search(value):
        raise ValueError("must be a single line without control characters (CR/LF would inject headers)")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _body_text(value: str) -> str:
    value = normalize_body(value)
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters other than newline and tab")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _message_id(value: str) -> str:
    if not _MESSAGE_ID.match(value):
        raise ValueError("must be a Message-ID like <id@host>")
    return value


HeaderText = Annotated[str, Field(max_length=500), AfterValidator(_header_text)]
BodyText = Annotated[str, Field(max_length=100_000), AfterValidator(_body_text)]
MessageId = Annotated[str, Field(max_length=255), AfterValidator(_message_id)]
ShortText = Annotated[str, Field(max_length=320), AfterValidator(_header_text)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(Strict):
    email: EmailStr
    name: ShortText | None = None


class SendEmailActionIn(Strict):
    type: Literal["send_email"]
    to: list[EmailStr] = Field(min_length=1, max_length=50)
    cc: list[EmailStr] = Field(default_factory=list, max_length=50)
    subject: HeaderText
    body: BodyText
    in_reply_to: MessageId | None = None
    references: list[MessageId] = Field(default_factory=list, max_length=100)


# A discriminated union, so that an unknown `type` is named as such in the error.
ActionIn = Annotated[SendEmailActionIn, Field(discriminator="type")]


class PolicyIn(Strict):
    name: ShortText | None = None
    mode: Literal["first_responder"] = "first_responder"
    reviewers: list[ShortText] = Field(default_factory=list, max_length=500)
    allow_self_approval: bool = False


class RunCreate(Strict):
    """Either `request` (+ `customer`) for the agent to draft, or a pre-drafted `action`."""

    request: Annotated[str, Field(min_length=1, max_length=20_000)] | None = None
    customer: CustomerIn | None = None
    action: ActionIn | None = None
    policy: ShortText | PolicyIn | None = Field(default=None, description="A configured policy's name, or a policy")
    requested_by: ShortText | None = None
    callback_url: HttpUrl | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of(self) -> RunCreate:
        if (self.request is None) == (self.action is None):
            raise ValueError("give exactly one of `request` (for the agent) or `action` (pre-drafted)")
        if self.request is not None and self.customer is None:
            raise ValueError("`customer` is required with `request`")
        if self.callback_url is not None and self.callback_url.scheme not in ("http", "https"):
            raise ValueError("`callback_url` must be http or https")
        return self


class ReviewerIn(Strict):
    id: ShortText
    name: ShortText | None = None
    email: EmailStr | None = None


class DecisionIn(Strict):
    decision: Literal["approve", "reject", "edit"]
    reviewer: ReviewerIn
    reason: Annotated[str, Field(max_length=2000)] | None = None
    subject: HeaderText | None = None
    body: BodyText | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> DecisionIn:
        if self.decision == "reject" and not (self.reason or "").strip():
            raise ValueError("`reason` is required to reject")
        if self.decision == "edit" and self.subject is None and self.body is None:
            raise ValueError("`edit` needs a new `subject` or `body`")
        if self.decision != "edit" and (self.subject is not None or self.body is not None):
            raise ValueError("`subject` and `body` are only accepted with `edit`")
        return self


class CancelIn(Strict):
    reason: Annotated[str, Field(max_length=2000)] | None = None


# ---- answers ------------------------------------------------------------------------

class RunAccepted(BaseModel):
    id: str
    status: str
    url: str


class RunOut(BaseModel):
    id: str
    kind: Literal["action", "agent"]
    status: str
    requested_by: str | None
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    summary: str | None
    failure_reason: str | None
    url: str


class JobOut(BaseModel):
    id: str
    kind: str
    run_id: str | None
    status: Literal["queued", "done", "dead", "cancelled"]
    attempts: int
    max_attempts: int
    due_at: str
    last_error: str | None
    created_at: str | None
    finished_at: str | None


class RunDetailOut(RunOut):
    request: str | None
    customer: dict[str, Any] | None
    callback_url: str | None
    policy: dict[str, Any]
    approvals: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    deliveries: list[dict[str, Any]]
    jobs: list[JobOut]
    timeline: list[dict[str, Any]]


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class JobPage(BaseModel):
    items: list[JobOut]


class DecisionOut(BaseModel):
    approval_id: str
    run_id: str
    status: Literal["pending", "approved", "rejected", "cancelled", "expired"]
    decision_id: str


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, with `errors` naming each bad field."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)
