"""The console's secrets in use: session ids, the signed session cookie, CSRF tokens. Pure.

A session id is 256 random bits; the cookie carries it with a MAC (keyed with
COUNTERSIGN_SESSION_SECRET), so a forged or altered cookie is refused before the database is
asked, and the database holds only the id's SHA-256. A session opened with the operator token
also carries a fingerprint of that token: rotating COUNTERSIGN_API_TOKEN ends those sessions.
CSRF tokens are MACs of the session id (session-bound: no second cookie to keep in step);
the login form, which has no session yet, is bound to a random nonce in a cookie of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_BINDING = "k"  # a session opened with an API key: the key itself is checked on every request


def new_secret_id() -> str:
    return secrets.token_urlsafe(32)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class CookieParts:
    session_id: str
    binding: str


class Signer:
    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("COUNTERSIGN_SESSION_SECRET must be at least 16 characters")
        self._key = secret.encode("utf-8")

    def _mac(self, purpose: str, *parts: str) -> str:
        message = "\0".join((purpose, *parts)).encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _same(self, expected: str, given: str) -> bool:
        return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))

    def token_binding(self, api_token: str) -> str:
        """What a session of the operator token is bound to: changes when the token does."""
        return self._mac("token-binding", api_token)[:32]

    def cookie(self, session_id: str, binding: str) -> str:
        return f"{session_id}.{binding}.{self._mac('cookie', session_id, binding)}"

    def read_cookie(self, value: str) -> CookieParts | None:
        """The session id and binding of a cookie this service signed; None for anything else."""
        parts = value.split(".")
        if len(parts) != 3 or not all(parts) or len(value) > 300:
            return None
        session_id, binding, mac = parts
        if not self._same(self._mac("cookie", session_id, binding), mac):
            return None
        return CookieParts(session_id, binding)

    def csrf(self, session_id: str) -> str:
        return self._mac("csrf", session_id)

    def csrf_ok(self, session_id: str, token: str | None) -> bool:
        return bool(token) and self._same(self.csrf(session_id), token or "")

    def login_csrf(self, nonce: str) -> str:
        return self._mac("login-csrf", nonce)

    def login_csrf_ok(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce) and bool(token) and self._same(self.login_csrf(nonce or ""), token or "")
