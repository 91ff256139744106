"""The Teams reviewer channel, assembled: adapter, authentication, bot, card jobs.

`app.py` builds one `TeamsChannel` when Teams is configured and mounts its endpoint;
this is the only module that knows how the Bot Framework pieces fit together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from botbuilder.core import TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from msrest.universal_http.requests import ClientRetryPolicy

from ..approval_views import ApiLinks
from ..config import Settings
from ..decisions import Decisions
from ..foreground import Foreground
from ..jobs import JobQueue
from ..runs import Runs
from ..store.db import Store
from . import TeamsNotConfigured as TeamsNotConfigured  # raised here, defined without the SDK
from .auth import CountersignBotAuthentication
from .bot import ApprovalBot
from .card_fit import CardFit
from .cards import TeamsCards
from .conversations import Conversations
from .credentials import CachedCredentialsFactory
from .endpoint import MessagesEndpoint
from .notices import TeamsNotices
from .playground import insecure_tenants_problem
from .ratelimit import TeamsRateLimiter
from .tenants import AllowedTenants
from .tokens import ChannelTokenValidator, validator_from_settings

log = logging.getLogger(__name__)

# msrest rebuilds its retry policy for every client, testing 999 codes against this 501-item
# list (~3 ms), and the SDK builds two clients per message: half the event loop's time under
# load (bench/RESULTS.md). The same codes as a frozenset make it ~100x cheaper.
# msrest declares the attribute a list; it is only ever tested with `in`.
ClientRetryPolicy.safe_codes = frozenset(ClientRetryPolicy.safe_codes)  # type: ignore[assignment]


@dataclass(frozen=True)
class _SdkConfiguration:
    """The attribute names `ConfigurationBotFrameworkAuthentication` reads."""

    APP_ID: str
    APP_PASSWORD: str
    APP_TYPE: str
    APP_TENANTID: str
    CHANNEL_SERVICE: None = None


def build_adapter(settings: Settings, http: aiohttp.ClientSession
                  ) -> tuple[ChannelTokenValidator | None, CachedCredentialsFactory, CloudAdapter]:
    """The SDK's `CloudAdapter` with our token validation (None without an app id: the
    insecure development mode) and our cached credentials."""
    validator = validator_from_settings(settings, http) if settings.microsoft_app_id else None
    credentials = CachedCredentialsFactory.from_settings(settings, http)
    password = settings.microsoft_app_password.get_secret_value() if settings.microsoft_app_password else ""
    inner = ConfigurationBotFrameworkAuthentication(
        _SdkConfiguration(settings.microsoft_app_id, password, settings.microsoft_app_type.value,
                          settings.microsoft_app_tenant_id),
        credentials_factory=credentials,
    )
    return validator, credentials, CloudAdapter(CountersignBotAuthentication(inner, validator))


class TeamsChannel:
    def __init__(self, settings: Settings, store: Store, jobs: JobQueue, runs: Runs, decisions: Decisions,
                 http: aiohttp.ClientSession, *, foreground: Foreground) -> None:
        if not settings.microsoft_app_id and not settings.bot_insecure_no_auth:
            raise TeamsNotConfigured(
                "Teams needs MicrosoftAppId (and MicrosoftAppPassword); for local development only, "
                "COUNTERSIGN_BOT_INSECURE_NO_AUTH=true accepts unauthenticated Bot Framework requests")
        self.validator, self.credentials, self.adapter = build_adapter(settings, http)
        self.settings_app_id = settings.microsoft_app_id
        self.adapter.on_turn_error = self._on_turn_error
        self.tenants = AllowedTenants(settings.effective_teams_allowed_tenants)
        if not self.tenants.tenants:  # app.check_teams_settings says so at start-up first
            raise TeamsNotConfigured("Teams needs COUNTERSIGN_TEAMS_ALLOWED_TENANTS")
        if self.validator is None and (problem := insecure_tenants_problem(self.tenants.tenants)):
            raise TeamsNotConfigured(problem)  # app.check_teams_settings says so at start-up first
        self.conversations = Conversations(store, self.tenants)
        # One person is one voter under their object id and their email, in every channel.
        decisions.people = self.conversations.person
        links = ApiLinks(settings.effective_public_url)
        card_fit = CardFit(links)  # the posted card's verdict serves the Approve click
        self.bot = ApprovalBot(store, decisions, self.conversations, links, card_fit=card_fit)
        self.cards = TeamsCards(store, jobs, self.conversations, self.adapter, links=links, card_fit=card_fit,
                                bot_app_id=settings.microsoft_app_id,
                                limiter=TeamsRateLimiter(), token_ready=self._token_ready,
                                update_delay=timedelta(seconds=settings.teams_card_update_delay_seconds))
        self.cards.register()
        # Reminders and escalations (service/timers.py); app.py subscribes them to the timers.
        self.notices = TeamsNotices(jobs, self.cards, self.conversations)
        self.notices.register()
        runs.on_approval_created.append(self.cards.on_approval_created)
        runs.on_approval_changed.append(self.cards.on_approval_changed)
        runs.on_reviewers_added.append(self.cards.on_reviewers_added)
        self.endpoint = MessagesEndpoint(self.adapter, self.bot, validator=self.validator, foreground=foreground,
                                         tenants=self.tenants, max_body_bytes=settings.bot_max_body_bytes)
        if self.validator is None:
            log.warning("Teams channel running WITHOUT Bot Framework authentication (development mode)")

    async def _token_ready(self) -> None:
        if self.validator is None and not self.settings_app_id:
            return  # development mode: no app id, no token
        await self.credentials.credentials_for().ensure_fresh()

    async def _on_turn_error(self, turn_context: TurnContext, error: Exception) -> None:
        # Re-raised so the endpoint answers with a problem document and the log has the trace.
        raise error

    async def close(self) -> None:
        if self.validator is not None:
            await self.validator.keys.aclose()
