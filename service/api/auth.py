"""Who is calling the ops API: an API token holder (Bearer) or a signed webhook."""

from __future__ import annotations

import hmac
import time

from aiohttp import web

from ..signing import HEADER, SignatureError, verify
from .errors import ApiError


class ApiAuth:
    def __init__(self, api_token: str | None, webhook_secret: str | None, tolerance: int) -> None:
        if not api_token and not webhook_secret:
            raise ValueError("the ops API needs an API token or a webhook secret")
        self.api_token = api_token
        self.webhook_secret = webhook_secret
        self.tolerance = tolerance

    def check(self, request: web.Request, body: bytes) -> str:
        """The caller's principal ("token" or "webhook"), or `ApiError(401)`."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            # Header bytes that are not UTF-8 arrive as surrogates: compare them as the bytes they were.
            if scheme.lower() == "bearer" and self.api_token and token and hmac.compare_digest(
                token.strip().encode("utf-8", "surrogateescape"), self.api_token.encode()
            ):
                return "token"
            raise self._unauthorized("the bearer token is not valid")
        signature = request.headers.get(HEADER)
        if signature is not None:
            if not self.webhook_secret:
                raise self._unauthorized("signed webhooks are not enabled (no COUNTERSIGN_WEBHOOK_SECRET)")
            try:
                verify(self.webhook_secret, signature, body, now=time.time(), tolerance=self.tolerance)
            except SignatureError as exc:
                raise self._unauthorized(str(exc)) from None
            return "webhook"
        raise self._unauthorized(f"send `Authorization: Bearer <token>` or a signed `{HEADER}` header")

    @staticmethod
    def _unauthorized(detail: str) -> ApiError:
        return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="countersign"'})
