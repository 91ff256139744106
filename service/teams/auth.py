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
from botframework.connector.auth import (
    AuthenticateRequestResult,
    BotFrameworkAuthentication,
    ClaimsIdentity,
    ConnectorFactory,
    UserTokenClient,
)
from botframework.connector.auth.skill_validation import SkillValidation

from .tokens import ChannelTokenValidator


class CountersignBotAuthentication(BotFrameworkAuthentication):
    def __init__(self, inner: BotFrameworkAuthentication, validator: ChannelTokenValidator | None) -> None:
        """`validator` None is the explicit insecure development mode (no app id)."""
        self.inner = inner
        self.validator = validator

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
        result.connector_factory = self.inner.create_connector_factory(claims_identity)
        return result

    async def authenticate_streaming_request(self, auth_header: str, channel_id_header: str) -> AuthenticateRequestResult:
        raise PermissionError("streaming connections are not supported")

    def create_connector_factory(self, claims_identity: ClaimsIdentity) -> ConnectorFactory:
        return self.inner.create_connector_factory(claims_identity)

    async def create_user_token_client(self, claims_identity: ClaimsIdentity) -> UserTokenClient:
        return await self.inner.create_user_token_client(claims_identity)

    def create_bot_framework_client(self) -> Any:
        return self.inner.create_bot_framework_client()

    def get_originating_audience(self) -> str:
        return self.inner.get_originating_audience()

    async def authenticate_channel_request(self, auth_header: str) -> ClaimsIdentity:
        raise PermissionError("skill requests are not supported")
