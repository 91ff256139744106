"""Webhook signatures: `X-Countersign-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`.

The HMAC covers "<t>.<raw body>" (the Stripe scheme): the timestamp bounds replays, the
raw body means nothing is re-serialised before checking. Used for incoming ops webhooks
and outgoing run callbacks alike.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Countersign-Signature"


class SignatureError(Exception):
    pass


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: int) -> None:
    """Raise `SignatureError` saying what is wrong; return quietly when the signature holds."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    if "t" not in parts or "v1" not in parts:
        raise SignatureError(f"{HEADER} must look like t=<unix seconds>,v1=<hex digest>")
    try:
        timestamp = int(parts["t"][0])
    except ValueError:
        raise SignatureError(f"{HEADER} timestamp is not an integer") from None
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"{HEADER} timestamp is outside the allowed {tolerance} s window")
    expected = sign(secret, timestamp, body).partition("v1=")[2]
    # Several v1 values are allowed so that a secret can be rotated without downtime.
    # Bytes, not str: compare_digest refuses non-ASCII text, and a header is attacker-chosen.
    if not any(hmac.compare_digest(expected.encode(), c.encode("utf-8", "surrogateescape")) for c in parts["v1"]):
        raise SignatureError(f"{HEADER} does not match the request body")
