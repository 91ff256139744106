"""Request signatures: `X-Countersign-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256>`.

v2 signs the canonical string

    <t> "\\n" <METHOD> "\\n" <path> "\\n" <query> "\\n" <raw body>

with the webhook secret: the path exactly as sent (percent-encoding included, no query),
the query string exactly as sent without its "?" (empty when there is none), and the raw
body bytes (empty for a GET). Binding method, path and query means a signature made for
one request cannot be replayed against another route; the timestamp bounds how long the
same request can be replayed at all, and the service accepts each signature once.

v1 (the Stripe scheme, "<t>.<raw body>") covers the body only, so the signature of an
empty body was valid for every GET and every body-less POST. It is refused unless
COUNTERSIGN_WEBHOOK_ACCEPT_V1 is set for a migration period. Outgoing callbacks still use
the v1 form (`sign`), with their own secret and header.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

HEADER = "X-Countersign-Signature"


class SignatureError(Exception):
    pass


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The v1 form: HMAC over "<t>.<body>" (outgoing callbacks; inbound only when v1 is accepted)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def canonical_v2(timestamp: int, method: str, path: str, query: str, body: bytes) -> bytes:
    return f"{timestamp}\n{method.upper()}\n{path}\n{query}\n".encode() + body


def sign_v2(secret: str, timestamp: int, method: str, path: str, query: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), canonical_v2(timestamp, method, path, query, body), hashlib.sha256).hexdigest()
    return f"t={timestamp},v2={digest}"


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    scheme: str  # "v2" or "v1"
    digest: str  # the signature value that matched: what the replay guard remembers
    timestamp: int


def _parse(header: str) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    return parts


def _timestamp(parts: dict[str, list[str]], now: float, tolerance: int) -> int:
    try:
        timestamp = int(parts["t"][0])
    except ValueError:
        raise SignatureError(f"{HEADER} timestamp is not an integer") from None
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"{HEADER} timestamp is outside the allowed {tolerance} s window")
    return timestamp


def _match(expected: str, candidates: list[str]) -> str | None:
    # Several values are allowed so that a secret can be rotated without downtime. Bytes,
    # not str: compare_digest refuses non-ASCII text, and a header is attacker-chosen.
    for candidate in candidates:
        if hmac.compare_digest(expected.encode(), candidate.encode("utf-8", "surrogateescape")):
            return expected
    return None


def verify_request(
    secret: str, header: str, *, method: str, path: str, query: str, body: bytes, now: float, tolerance: int,
    accept_v1: bool = False,
) -> VerifiedSignature:
    """Raise `SignatureError` saying what is wrong; return what matched when the signature holds."""
    parts = _parse(header)
    if "t" not in parts or not ("v2" in parts or "v1" in parts):
        raise SignatureError(f"{HEADER} must look like t=<unix seconds>,v2=<hex digest>")
    timestamp = _timestamp(parts, now, tolerance)
    if "v2" in parts:
        expected = sign_v2(secret, timestamp, method, path, query, body).partition("v2=")[2]
        if (digest := _match(expected, parts["v2"])) is not None:
            return VerifiedSignature("v2", digest, timestamp)
        raise SignatureError(f"{HEADER} v2 does not match the request (method, path, query and body are signed)")
    if not accept_v1:
        raise SignatureError(f"{HEADER} v1 signatures are no longer accepted: sign with v2 (see the README)")
    expected = sign(secret, timestamp, body).partition("v1=")[2]
    if (digest := _match(expected, parts["v1"])) is not None:
        return VerifiedSignature("v1", digest, timestamp)
    raise SignatureError(f"{HEADER} does not match the request body")


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance: int) -> None:
    """A v1 signature over `body` (for receivers of outgoing callbacks, and tests)."""
    parts = _parse(header)
    if "t" not in parts or "v1" not in parts:
        raise SignatureError(f"{HEADER} must look like t=<unix seconds>,v1=<hex digest>")
    timestamp = _timestamp(parts, now, tolerance)
    if _match(sign(secret, timestamp, body).partition("v1=")[2], parts["v1"]) is None:
        raise SignatureError(f"{HEADER} does not match the request body")
