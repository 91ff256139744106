"""Credentials out of text that is stored or logged: URLs lose their userinfo (and, in
error messages, their query, where tokens and signatures travel). Pure."""

from __future__ import annotations

import re
from typing import Any

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]*@")
_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#]*)\?[^\s#'\"]*")


def redact_credentials(text: str) -> str:
    """`https://user:pw@host/x` -> `https://[redacted]@host/x`."""
    return _USERINFO.sub(r"\1[redacted]@", text)


def redact_error(text: str) -> str:
    """Userinfo and query strings of every URL in an error message or log line."""
    return _QUERY.sub(r"\1?[redacted]", redact_credentials(text))


def redact_data(value: Any) -> Any:
    """Every string in a JSON-like value, userinfo removed (audit event data)."""
    if isinstance(value, str):
        return redact_credentials(value) if "@" in value and "://" in value else value
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_data(v) for v in value]
    return value
