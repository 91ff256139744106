"""Outgoing Bot Framework tokens: fetched over aiohttp, cached, never blocking the event loop.

The SDK's stock factory (`PasswordServiceClientCredentialFactory`) builds a new
`MicrosoftAppCredentials` (and so a new MSAL app with an empty cache) for every turn, and
the token is fetched inside `signed_session()`, which msrest calls *synchronously on the
event loop* (`msrest.pipeline.async_requests.AsyncRequestsCredentialsPolicy.send`): one
blocking HTTPS round trip to Azure AD per turn.

Here instead:

- `BotTokenProvider` runs the OAuth2 client-credentials grant over aiohttp, caches the token
  until `refresh_margin` before it expires, and lets concurrent callers share one request.
- `CachedBotCredentials` is what the SDK's `ConnectorClient` gets. Its `signed_session()` and
  `get_access_token()` only read the cached token (no I/O); `ensure_fresh()` (async) refreshes.
- `CachedCredentialsFactory` hands the SDK one shared `CachedBotCredentials` per (app id,
  scope), and awaits `ensure_fresh()` in `create_credentials()` -- which the SDK awaits before
  it builds each `ConnectorClient` (`CloudAdapter.process_activity`, `continue_conversation`,
  `create_conversation`). So callers of the adapter do not have to remember anything.

Give it to the SDK with
`ConfigurationBotFrameworkAuthentication(config, credentials_factory=factory)`.

Failure model: a refresh that fails while the cached token is still usable logs a warning
and keeps using it. A failure in `create_credentials()` is logged, not raised, so inbound
turns that send nothing (invoke answers) still work; the first outgoing call of that turn
then raises `TokenError` from `signed_session()` with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import requests
from botframework.connector.auth import (
    AppCredentials,
    AuthenticationConstants,
    MicrosoftAppCredentials,
    ServiceClientCredentialsFactory,
)

log = logging.getLogger(__name__)

DEFAULT_SCOPE = "https://api.botframework.com/.default"
_SDK_CHANNEL_SCOPE = AuthenticationConstants.TO_CHANNEL_FROM_BOT_OAUTH_SCOPE  # https://api.botframework.com
_MAX_DESCRIPTION = 500


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class TokenError(Exception):
    """A Bot Framework token could not be obtained. Never contains the client secret.

    `transient` is True for timeouts, connection errors, 408/429 and 5xx (worth retrying
    later); False for answers such as 400/401 `invalid_client` (fix the configuration).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.error_description = error_description
        self.transient = transient


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # clock time from which token() fetches a new one
    usable_until: float  # clock time after which it is no longer handed out at all


def _normalize_scope(scope: str) -> str:
    return scope if scope.endswith("/.default") else scope.rstrip("/") + "/.default"


class BotTokenProvider:
    """OAuth2 client-credentials tokens for one (app id, scope), cached and single-flight.

    `timeout` bounds each token request (seconds). The token is refreshed `refresh_margin`
    seconds before it expires (at most half its lifetime early); it is handed out from the
    cache until shortly before it really expires, so a failed refresh does not break sends
    that still have a valid token. `clock` is injectable for tests (monotonic seconds).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        app_id: str,
        app_password: str | _Secret,
        token_url: str,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 10.0,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not app_id:
            raise ValueError("BotTokenProvider needs an app id")
        secret = app_password.get_secret_value() if hasattr(app_password, "get_secret_value") else app_password
        if not secret:
            raise ValueError("BotTokenProvider needs an app password")
        self._session = session
        self.app_id = app_id
        self._secret: str = secret
        self.token_url = token_url
        self.scope = scope
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._token: _Token | None = None
        self._inflight: asyncio.Task[_Token] | None = None
        self.last_error: TokenError | None = None
        self.requests = 0  # token requests sent (metrics, tests)

    def __repr__(self) -> str:
        return f"BotTokenProvider(app_id={self.app_id!r}, scope={self.scope!r}, token_url={self.token_url!r})"

    def cached_token(self) -> str | None:
        """The cached token if it is still usable now; never does I/O (safe from any thread)."""
        token = self._token  # one read: the refresh replaces the object, never mutates it
        if token is not None and self._clock() < token.usable_until:
            return token.value
        return None

    async def token(self) -> str:
        """A valid access token: from the cache, or from one request shared by all callers."""
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token.value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        try:
            # shield: a cancelled caller must not cancel the request the others wait for.
            return (await asyncio.shield(self._inflight)).value
        except TokenError as exc:
            fallback = self.cached_token()
            if fallback is None:
                raise
            log.warning("Bot Framework token refresh failed, using the cached token: %s", exc)
            return fallback

    def _fetch_done(self, task: asyncio.Task[_Token]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # marks it retrieved even when every caller was cancelled

    async def _fetch(self) -> _Token:
        try:
            token = await self._request()
        except TokenError as exc:
            self.last_error = exc
            raise
        self._token = token
        self.last_error = None
        return token

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret in text else text

    async def _request(self) -> _Token:
        self.requests += 1
        started = self._clock()
        form = {
            "grant_type": "client_credentials",
            "client_id": self.app_id,
            "client_secret": self._secret,
            "scope": self.scope,
        }
        where = self.token_url.split("?", 1)[0]
        try:
            async with self._session.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,  # never replay the secret to another host
            ) as resp:
                status = resp.status
                body = await resp.read()
        except TimeoutError:
            raise TokenError(
                f"Bot Framework token request to {where} timed out after {self.timeout:g} s", transient=True
            ) from None
        except aiohttp.ClientError as exc:
            raise TokenError(
                f"Bot Framework token request to {where} failed: {type(exc).__name__}: {self._scrub(str(exc))}",
                transient=True,
            ) from None

        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}

        access_token = payload.get("access_token")
        if status == 200 and isinstance(access_token, str) and access_token:
            try:
                lifetime = float(payload.get("expires_in", 3600))  # Azure AD v1 sends a string
            except (TypeError, ValueError):
                lifetime = 3600.0
            lifetime = max(lifetime, 1.0)
            expires_at = started + lifetime  # counted from before the request: conservative
            return _Token(
                value=access_token,
                refresh_at=expires_at - min(self.refresh_margin, lifetime / 2),
                usable_until=expires_at - min(30.0, lifetime / 10),
            )

        error = payload.get("error")
        error = self._scrub(str(error))[:100] if error else None
        description = payload.get("error_description")
        description = self._scrub(str(description))[:_MAX_DESCRIPTION] if description else None
        detail = ": ".join(p for p in (error, description) if p) or (
            "no access_token in the answer" if status == 200 else "no OAuth error in the answer"
        )
        raise TokenError(
            f"Bot Framework token request to {where} failed with HTTP {status}: {detail}",
            status=status,
            error=error,
            error_description=description,
            transient=status in (408, 429) or status >= 500,
        )


class CachedBotCredentials(AppCredentials):
    """msrest credentials for the SDK's `ConnectorClient`, served from a `BotTokenProvider`.

    The SDK calls, all synchronously: `signed_session(session)` before every Bot Connector
    request (msrest credentials policy, on the event loop for the async client; also the sync
    `TeamsConnectorClient` used by `TeamsInfo`), `get_access_token()` (skill calls), and reads
    `microsoft_app_id` / `oauth_scope` / `oauth_endpoint`. None of these does I/O here;
    `await ensure_fresh()` is the only way a token is fetched.
    """

    def __init__(self, provider: BotTokenProvider, *, oauth_endpoint: str | None = None) -> None:
        super().__init__(app_id=provider.app_id, oauth_scope=provider.scope)
        self.provider = provider
        # Informational for the SDK (MSAL authority in the stock classes); tokens come from
        # provider.token_url.
        self.oauth_endpoint = oauth_endpoint or provider.token_url

    async def ensure_fresh(self) -> None:
        """Fetch or refresh the token if needed (raises `TokenError` without a usable one)."""
        await self.provider.token()

    def get_access_token(self, force_refresh: bool = False) -> str:  # noqa: ARG002 - SDK signature
        """The cached token. Sync and I/O-free: `force_refresh` cannot be honoured here."""
        token = self.provider.cached_token()
        if token is None:
            reason = f" (last attempt: {self.provider.last_error})" if self.provider.last_error else ""
            raise TokenError(
                "no valid Bot Framework token cached for the Bot Connector call; await "
                f"ensure_fresh() (or go through CachedCredentialsFactory) first{reason}",
                transient=True,
            )
        return token

    def signed_session(self, session: requests.Session | None = None) -> requests.Session:
        """Set `Authorization: Bearer <cached token>` on the session. No I/O.

        Must not raise TypeError: msrest takes that for "does not accept a session".
        """
        if session is None:
            session = requests.Session()
        if self._should_set_token(session):
            session.headers["Authorization"] = f"Bearer {self.get_access_token()}"
        else:
            session.headers.pop("Authorization", None)
        return session

    def refresh_session(self, session: requests.Session | None = None) -> requests.Session:
        """msrest calls this after an oauthlib token error; the cache is all we have synchronously."""
        return self.signed_session(session)


class CachedCredentialsFactory(ServiceClientCredentialsFactory):
    """One shared `CachedBotCredentials` per (app id, scope) for the SDK.

    `create_credentials` ignores the SDK's `login_endpoint` / `validate_authority`: the
    token URL is our configuration (`Settings.effective_bot_token_url`). A requested scope
    equal to the SDK's public channel scope (or none) maps to `scope` (the configured
    `bot_token_scope`); any other scope (skills, sovereign clouds) is used as asked, with
    `/.default` appended as MSAL does.

    An empty app id means authentication is disabled (development only): the credentials
    then send no Authorization header.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        app_id: str,
        app_password: str | _Secret | None,
        token_url: str,
        scope: str = DEFAULT_SCOPE,
        timeout: float = 10.0,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.app_id = app_id or ""
        self._password = app_password
        self.token_url = token_url
        self.scope = _normalize_scope(scope)
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._credentials: dict[tuple[str, str], CachedBotCredentials] = {}
        self._anonymous: MicrosoftAppCredentials | None = None

    @classmethod
    def from_settings(cls, settings: Any, session: aiohttp.ClientSession) -> CachedCredentialsFactory:
        """Build from `service.config.Settings` (app id/password, token URL, scope, timeout)."""
        return cls(
            session,
            app_id=settings.microsoft_app_id,
            app_password=settings.microsoft_app_password,
            token_url=settings.effective_bot_token_url,
            scope=settings.bot_token_scope,
            timeout=settings.bot_http_timeout_seconds,
        )

    async def is_valid_app_id(self, app_id: str) -> bool:
        return bool(self.app_id) and app_id == self.app_id

    async def is_authentication_disabled(self) -> bool:
        return not self.app_id

    def credentials_for(self, scope: str | None = None) -> CachedBotCredentials:
        """The shared credentials for our app id and `scope` (default: the configured one)."""
        if not self.app_id:
            raise ValueError("authentication is disabled (no app id): there are no credentials")
        wanted = self.scope if scope is None else _normalize_scope(scope)
        if wanted == _normalize_scope(_SDK_CHANNEL_SCOPE):
            wanted = self.scope
        key = (self.app_id, wanted)
        creds = self._credentials.get(key)
        if creds is None:
            if self._password is None:
                raise ValueError("an app id is configured but no app password")
            provider = BotTokenProvider(
                self._session,
                app_id=self.app_id,
                app_password=self._password,
                token_url=self.token_url,
                scope=wanted,
                timeout=self.timeout,
                refresh_margin=self.refresh_margin,
                clock=self._clock,
            )
            creds = self._credentials[key] = CachedBotCredentials(provider)
        return creds

    async def create_credentials(
        self,
        app_id: str,
        oauth_scope: str,
        login_endpoint: str,  # noqa: ARG002 - SDK signature; see the class docstring
        validate_authority: bool,  # noqa: ARG002
    ) -> AppCredentials:
        if not self.app_id:
            if self._anonymous is None:
                self._anonymous = MicrosoftAppCredentials.empty()
            return self._anonymous
        if app_id != self.app_id:
            raise PermissionError(f"invalid app id {app_id!r} for outgoing Bot Framework calls")
        creds = self.credentials_for(oauth_scope or None)
        try:
            await creds.ensure_fresh()
        except TokenError as exc:
            # Logged, not raised: see the module docstring (signed_session raises instead).
            log.warning("Bot Framework token not available: %s", exc)
        return creds
