"""What an email's subject and body may hold, as pydantic field types: one definition for
drafts from the ops API and drafts from the agent, so both reach delivery in the form whose
hash survives the round trip through MIME (see `message.normalize_body`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from .message import normalize_body

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Every character `str.splitlines()` breaks on is a line end to Python's email package, which
# then refuses to build the header: CR/LF, the C0 controls, NEL (U+0085) and the Unicode line
# and paragraph separators (U+2028, U+2029). Refused at intake, or the email would be retried
# until it died.
_HEADER_UNSAFE = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def header_text(value: str) -> str:
    if found := _HEADER_UNSAFE.search(value):
        raise ValueError(f"must be a single line without control characters or line separators "
                         f"(found U+{ord(found.group()):04X}; a line end would break or inject headers)")
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
