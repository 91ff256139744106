"""The SDK's authentication interface with our token validation inside.

`CloudAdapter` asks its `BotFrameworkAuthentication` to check each incoming request; the
SDK's own check blocks the event loop on key fetches and turns many bad tokens into 500s
(see `tokens.py`). This class validates with `ChannelTokenValidator` and delegates all
outgoing concerns (connector clients, credentials) to the SDK's configuration-based
authentication, built with our cached credentials factory.
"""

from __future__ import annotations

from typing import Any

from botbuilder.schema import Activity, CallerIdConstants
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import (
    AuthenticateRequestResult,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)
from botframework.connector.auth.skill_validation import SkillValidation

from .tokens import ChannelTokenValidator


class ReusedConnectorFactory(ConnectorFactory):
    """One `ConnectorClient` per (service URL, audience), kept for the life of the process.

    The SDK builds a new client (msrest configuration, retry policy, pipeline, a requests
    session) for every turn and every proactive call and never closes it: about a
    millisecond of event-loop time per card click or card update (bench/RESULTS.md). The
    client holds no per-turn state; its credentials come from our cached factory and renew
    their own token."""

    def __init__(self, inner: ConnectorFactory) -> None:
        self.inner = inner
        self._clients: dict[tuple[str, str | None], ConnectorClient] = {}

    async def create(self, service_url: str, audience: str | None = None) -> ConnectorClient:
        key = (service_url, audience)
        client = self._clients.get(key)
        if client is None:
            client = self._clients.setdefault(key, await self.inner.create(service_url, audience))
        return client


class CountersignBotAuthentication(BotFrameworkAuthentication):
    def __init__(self, inner: BotFrameworkAuthentication, validator: ChannelTokenValidator | None) -> None:
        """`validator` None is the explicit insecure development mode (no app id)."""
        self.inner = inner
        self.validator = validator
        # Keyed by the app id the claims name (always ours: skills are refused).
        self._factories: dict[str | None, ReusedConnectorFactory] = {}
        self._user_token_clients: dict[str | None, UserTokenClient] = {}

    async def authenticate_request(self, activity: Activity, auth_header: str) -> AuthenticateRequestResult:
        if self.validator is None:
            claims_identity = SkillValidation.create_anonymous_skill_claim()
        else:
            claims = await self.validator.validate(auth_header, channel_id=activity.channel_id or "",
                                                   service_url=activity.service_url)
            claims_identity = ClaimsIdentity(claims, True)
        result = AuthenticateRequestResult()
        result.claims_identity = claims_identity
        result.audience = self.inner.get_originating_audience()
        result.caller_id = CallerIdConstants.public_azure_channel
        result.connector_factory = self.create_connector_factory(claims_identity)
        return result

    async def authenticate_streaming_request(self, auth_header: str, channel_id_header: str) -> AuthenticateRequestResult:
        raise PermissionError("streaming connections are not supported")

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        app_id = _app_id(claims_identity)
        factory = self._factories.get(app_id)
        if factory is None:
            factory = self._factories[app_id] = ReusedConnectorFactory(
                self.inner.create_connector_factory(claims_identity))
        return factory

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        # Built for every turn by the SDK, used only by OAuth sign-in prompts (never here).
        app_id = _app_id(claims_identity)
        client = self._user_token_clients.get(app_id)
        if client is None:
            client = self._user_token_clients.setdefault(
                app_id, await self.inner.create_user_token_client(claims_identity))
        return client

    def create_bot_framework_client(self) -> Any:
        return self.inner.create_bot_framework_client()

    def get_originating_audience(self) -> str:
        return self.inner.get_originating_audience()

    async def authenticate_channel_request(self, auth_header: str) -> ClaimsIdentity:
        raise PermissionError("skill requests are not supported")


def _app_id(claims_identity: ClaimsIdentity) -> str | None:
    claims = claims_identity.claims or {}
    return claims.get("aud") or claims.get("appid")
