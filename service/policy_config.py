"""The `[policies.NAME]` tables of the settings file: a strict schema, checked at start-up.

A typo must not quietly open a policy (`reviewer = [...]` once meant "no reviewers", so
anyone): unknown keys are refused, and `reviewers` is either a non-empty list of
identities or the explicit string "anyone". `describe_error` turns pydantic's errors into
one line each that names the file, the policy and the key.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictBool, field_validator
from pydantic_core import ErrorDetails

from .policy import ANYONE, Policy, PolicyMode

_MAX_IDENTITY = 320  # the longest email address; also the API's limit


def _identity(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"has {value!r}, which is not a string (give AAD object ids or email addresses)")
    if not value.strip():
        raise ValueError("has a blank entry")
    if value != value.strip() or any(not c.isprintable() for c in value) or len(value) > _MAX_IDENTITY:
        raise ValueError(f"has {value!r}: give an AAD object id or an email address, without surrounding spaces or "
                         f"control characters, at most {_MAX_IDENTITY} characters")
    return value


class PolicyConfig(BaseModel):
    """One `[policies.NAME]` table. New settings (quorum, stages, timers) are new fields
    here and in `Policy`; every table keeps being checked against the whole schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reviewers: tuple[str, ...] | Literal["anyone"]
    mode: PolicyMode = PolicyMode.FIRST
    allow_self_approval: StrictBool = False  # TOML has booleans: "yes" is a typo, not True
    teams_channel: str | None = None
    teams_chat: tuple[str, ...] = ()

    @field_validator("reviewers", mode="plain")
    @classmethod
    def _reviewers(cls, value: Any) -> tuple[str, ...] | Literal["anyone"]:
        if value == ANYONE:
            return ANYONE
        if isinstance(value, str):
            raise ValueError(f'must be a list of identities, or the string "{ANYONE}" to let anyone decide '
                             f"(got {value!r})")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'must be a list of identities, or "{ANYONE}", not {type(value).__name__}')
        if not value:
            raise ValueError(f'is empty: name who may decide, or write reviewers = "{ANYONE}" to let anyone '
                             "the channel authenticates decide")
        if ANYONE in value:
            raise ValueError(f'must not list "{ANYONE}": to let anyone decide, write reviewers = "{ANYONE}" '
                             "(a string, not a list entry)")
        return tuple(_identity(v) for v in value)

    @field_validator("teams_chat", mode="plain")
    @classmethod
    def _teams_chat(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of AAD object ids or emails, not {type(value).__name__}")
        return tuple(_identity(v) for v in value)

    @field_validator("teams_channel")
    @classmethod
    def _teams_channel(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank; leave the key out for no channel")
        return value

    def to_policy(self, name: str) -> Policy:
        anyone = self.reviewers == ANYONE
        return Policy(
            name=name, reviewers=() if anyone else tuple(self.reviewers), anyone=anyone, mode=self.mode,
            allow_self_approval=self.allow_self_approval, teams_channel=self.teams_channel,
            teams_chat=self.teams_chat,
        )


def describe_error(source: str, err: ErrorDetails) -> str | None:
    """One line for an error at `policies.NAME[.KEY...]`, naming `source` (the file), the
    policy and the key; None for an error elsewhere in the settings."""
    loc = tuple(err["loc"])
    if not loc or loc[0] != "policies":
        return None
    if len(loc) == 1:
        return f"{source}: policies: must be tables, one per policy ([policies.NAME])"
    policy = loc[1]
    if len(loc) == 2:
        return f'{source}: policy "{policy}": must be a table of settings ([policies.{policy}])'
    key = ".".join(str(p) for p in loc[2:])
    where = f'{source}: policy "{policy}"'
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[2]), list(PolicyConfig.model_fields), n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (known: {', '.join(PolicyConfig.model_fields)})"
        return f'{where}: unknown key "{key}"{hint}'
    if err["type"] == "missing":
        if key == "reviewers":
            return (f'{where}: missing key "reviewers": name who may decide (reviewers = ["rita@example.com"]), '
                    f'or write reviewers = "{ANYONE}" to let anyone the channel authenticates decide')
        return f'{where}: missing key "{key}"'
    cause = (err.get("ctx") or {}).get("error")
    message = str(cause) if err["type"] == "value_error" and isinstance(cause, ValueError) else err["msg"]
    return f'{where}: key "{key}" {message}' if err["type"] == "value_error" else f'{where}: key "{key}": {message}'
