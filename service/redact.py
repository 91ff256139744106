"""URLs as they may be shown, logged, audited or put in an error: without the user name,
password, query or fragment, which is where URLs carry credentials (`user:pw@`, `?token=`).

The path stays: it is what tells two endpoints of one host apart. A receiver that needs a
secret should verify the callback's signature instead of hiding a token in its URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

UNPARSEABLE = "<unparseable URL>"
# Up to white space or a quote; punctuation ending a sentence is not part of the URL.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]*[^\s\"'<>.,;:)\]]")


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path`; never raises (stored URLs may predate today's checks)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return UNPARSEABLE
    if not parts.scheme or not host:
        return UNPARSEABLE
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it redacted (error messages of libraries quote URLs)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_data(value: Any) -> Any:
    """Every string in a JSON-like value with its URLs redacted (audit event data: the log
    that can never be rewritten must never hold a credential)."""
    if isinstance(value, str):
        return redact_urls_in(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_data(v) for v in value]
    return value
