"""What an email's subject and body may hold, as pydantic field types: one definition for
drafts from the ops API and drafts from the agent, so both reach delivery in the form whose
hash survives the round trip through MIME (see `message.normalize_body`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from .message import normalize_body

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def header_text(value: str) -> str:
    if _HEADER_UNSAFE.search(value):
        raise ValueError("must be a single line without control characters (CR/LF would inject headers)")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def body_text(value: str) -> str:
    value = normalize_body(value)
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters other than newline and tab")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


HeaderText = Annotated[str, Field(max_length=500), AfterValidator(header_text)]
BodyText = Annotated[str, Field(max_length=100_000), AfterValidator(body_text)]
