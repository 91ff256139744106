"""A real key server standing in for login.botframework.com, and a signer of Bot-Connector-
style tokens, so token validation is tested against real RSA keys over real HTTP.

`BotKeyServer.app()` is an aiohttp app (serve it with aiohttp.test_utils.TestServer) with
`/v1/.well-known/openidconfiguration` (issuer, jwks_uri) and `/v1/.well-known/keys`. Keys
are generated with `cryptography` at test time. It can be made slow or failing, and counts
requests per document.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://api.botframework.com"
METADATA_PATH = "/v1/.well-known/openidconfiguration"
JWKS_PATH = "/v1/.well-known/keys"


def generate_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_kid() -> str:
    return "kid-" + secrets.token_hex(8)


@dataclass
class ServedKey:
    kid: str
    private_key: rsa.RSAPrivateKey
    endorsements: list[str] | None  # None: the JWK has no "endorsements" member

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        data.update(kid=self.kid, use="sig")
        if self.endorsements is not None:
            data["endorsements"] = list(self.endorsements)
        return data

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class BotKeyServer:
    keys: dict[str, ServedKey] = field(default_factory=dict)
    delay_seconds: float = 0.0  # every response waits this long first (slow server)
    fail_status: int | None = None  # answer every request with this status
    garbage: bool = False  # answer with a body that is not JSON
    extra_jwks: list[Any] = field(default_factory=list)  # raw entries appended to the JWKS
    requests: Counter[str] = field(default_factory=Counter)  # by path
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    # -- keys

    def add_key(self, kid: str | None = None, *, endorsements: list[str] | None = None) -> str:
        kid = kid or new_kid()
        self.keys[kid] = ServedKey(kid, generate_rsa_key(), endorsements)
        return kid

    def rotate(self, *, endorsements: list[str] | None = None, drop_old: bool = False) -> str:
        """Publish a new key (new kid); with drop_old, the previous keys disappear."""
        if drop_old:
            self.keys.clear()
        return self.add_key(endorsements=endorsements)

    def remove_key(self, kid: str) -> None:
        del self.keys[kid]

    def set_endorsements(self, kid: str, endorsements: list[str] | None) -> None:
        self.keys[kid].endorsements = endorsements

    # -- behaviour

    def healthy(self) -> None:
        self.delay_seconds, self.fail_status, self.garbage = 0.0, None, False

    def release(self) -> None:
        """End every pending delay (call before closing the server, so it closes at once)."""
        self._release.set()

    @property
    def metadata_requests(self) -> int:
        return self.requests[METADATA_PATH]

    @property
    def jwks_requests(self) -> int:
        return self.requests[JWKS_PATH]

    # -- HTTP

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(METADATA_PATH, self._metadata)
        app.router.add_get(JWKS_PATH, self._jwks)
        return app

    async def _metadata(self, request: web.Request) -> web.Response:
        jwks_uri = str(request.url.with_path(JWKS_PATH).with_query(None))
        return await self._answer(request, {"issuer": ISSUER, "jwks_uri": jwks_uri,
                                            "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"keys": [k.jwk() for k in self.keys.values()] + self.extra_jwks})

    async def _answer(self, request: web.Request, document: dict[str, Any]) -> web.Response:
        self.requests[request.path] += 1
        if self.delay_seconds:
            try:
                await asyncio.wait_for(self._release.wait(), self.delay_seconds)
            except TimeoutError:
                pass
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="key server failure")
        if self.garbage:
            return web.Response(text="<html>not json</html>", content_type="application/json")
        return web.json_response(document)


# --------------------------------------------------------------------------- tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64json(value: Any) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


@dataclass
class TokenFactory:
    """Signs tokens like the Bot Connector's, with keys of a BotKeyServer, plus bad ones."""

    server: BotKeyServer
    app_id: str
    service_url: str
    issuer: str = ISSUER

    def claims(self, *, lifetime: float = 3600, age: float = 0, **extra: Any) -> dict[str, Any]:
        """Claims issued `age` seconds ago, valid for `lifetime` seconds; `extra` overrides
        (a value of None removes the claim)."""
        now = int(time.time() - age)
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.app_id, "serviceurl": self.service_url,
            "iat": now, "nbf": now, "exp": int(now + lifetime),
        }
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str | None = None, *, alg: str = "RS256", headers: dict[str, Any] | None = None,
              **claim_args: Any) -> str:
        kid = kid or next(iter(self.server.keys))
        header = {"kid": kid, **(headers or {})}
        return jwt.encode(self.claims(**claim_args), self.server.keys[kid].private_key, algorithm=alg,
                          headers=header)

    def signed_with(self, private_key: rsa.RSAPrivateKey, kid: str, **claim_args: Any) -> str:
        """A well-formed RS256 token naming `kid`, signed by some other key."""
        return jwt.encode(self.claims(**claim_args), private_key, algorithm="RS256", headers={"kid": kid})

    def wrong_key(self, kid: str | None = None, **claim_args: Any) -> str:
        return self.signed_with(generate_rsa_key(), kid or next(iter(self.server.keys)), **claim_args)

    def unknown_kid(self, **claim_args: Any) -> str:
        return self.signed_with(generate_rsa_key(), new_kid(), **claim_args)

    def alg_none(self, kid: str | None = None, **claim_args: Any) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": kid or next(iter(self.server.keys))}
        return f"{_b64json(header)}.{_b64json(self.claims(**claim_args))}."

    def hs256_with_public_key(self, kid: str | None = None, **claim_args: Any) -> str:
        """The classic confusion attack: HMAC keyed with the server's public key PEM. Built
        by hand, because PyJWT refuses to use a PEM as an HMAC secret."""
        kid = kid or next(iter(self.server.keys))
        signing_input = f"{_b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_b64json(self.claims(**claim_args))}"
        mac = hmac.new(self.server.keys[kid].public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    def tampered(self, kid: str | None = None, **changes: Any) -> str:
        """A genuine token whose payload was changed afterwards (signature kept)."""
        header, _, signature = self.token(kid).split(".")
        return f"{header}.{_b64json(self.claims(**changes))}.{signature}"

    def expired(self, kid: str | None = None, *, by: float = 3600) -> str:
        return self.token(kid, age=3600 + by, lifetime=3600)

    def not_yet_valid(self, kid: str | None = None, *, by: float = 3600) -> str:
        return self.token(kid, age=-by)

    @staticmethod
    def header(token: str) -> str:
        return f"Bearer {token}"
