"""Outgoing Bot Framework tokens: cached, single-flight, non-blocking; used by the SDK's client.

Real peers: a local OAuth token endpoint and a local fake Bot Connector (aiohttp servers on
127.0.0.1), driven by the real SDK (`ConnectorClient`, `CloudAdapter`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from botbuilder.core import MessageFactory, TurnContext
from botbuilder.integration.aiohttp import CloudAdapter, ConfigurationBotFrameworkAuthentication
from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, ConversationReference
from botframework.connector.aio import ConnectorClient
from botframework.connector.auth import AppCredentials
from pydantic import SecretStr

from service.teams.credentials import (
    BotTokenProvider,
    CachedBotCredentials,
    CachedCredentialsFactory,
    TokenError,
)

APP_ID = "00000000-1111-2222-3333-444444444444"
SECRET = "s3cr3t~Value+with&odd=chars"
SCOPE = "https://api.botframework.com/.default"


class TokenEndpoint:
    """A local OAuth2 token endpoint that counts requests and can misbehave on demand."""

    def __init__(self) -> None:
        self.count = 0
        self.forms: list[dict[str, str]] = []
        self.mode = "ok"
        self.expires_in: Any = 3600
        self.delay = 0.0
        self.release = asyncio.Event()  # ends slow answers early (teardown)
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.count += 1
        self.forms.append(dict(await request.post()))
        if self.delay:
            try:
                await asyncio.wait_for(self.release.wait(), self.delay)
            except TimeoutError:
                pass
        if self.mode == "ok":
            return web.json_response(
                {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": f"tok-{self.count}"})
        if self.mode == "invalid_client":
            return web.json_response(
                {
                    "error": "invalid_client",
                    # A misbehaving server echoing the secret must not leak it into our errors.
                    "error_description": f"AADSTS7000215: Invalid client secret provided ({SECRET}).",
                },
                status=401,
            )
        if self.mode == "no_token":
            return web.json_response({"token_type": "Bearer"})
        return web.Response(status=503, text="<html>upstream unavailable</html>")


class FakeConnector:
    """The Bot Connector routes the SDK uses; records what it was sent."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append({
            "method": request.method,
            "path": request.path,
            "authorization": request.headers.get("Authorization"),
            "body": await request.json(),
        })
        return web.json_response({"id": f"activity-{len(self.calls)}"})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def token_endpoint() -> AsyncIterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/oauth2/v2.0/token", endpoint.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(shutdown_timeout=2)
    endpoint.url = str(server.make_url("/oauth2/v2.0/token"))
    yield endpoint
    endpoint.release.set()
    await server.close()


@pytest.fixture
async def connector() -> AsyncIterator[FakeConnector]:
    fake = FakeConnector()
    app = web.Application()
    app.router.add_post("/v3/conversations/{conv}/activities", fake.handle)
    app.router.add_post("/v3/conversations/{conv}/activities/{aid}", fake.handle)
    app.router.add_put("/v3/conversations/{conv}/activities/{aid}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(shutdown_timeout=2)
    fake.url = str(server.make_url("/"))
    yield fake
    await server.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def provider(http: aiohttp.ClientSession, endpoint: TokenEndpoint, **kwargs: Any) -> BotTokenProvider:
    kwargs.setdefault("timeout", 5.0)
    return BotTokenProvider(http, app_id=APP_ID, app_password=SECRET, token_url=endpoint.url, scope=SCOPE, **kwargs)


def factory(http: aiohttp.ClientSession, endpoint: TokenEndpoint, **kwargs: Any) -> CachedCredentialsFactory:
    kwargs.setdefault("app_id", APP_ID)
    kwargs.setdefault("app_password", SecretStr(SECRET))
    return CachedCredentialsFactory(http, token_url=endpoint.url, timeout=5.0, **kwargs)


# --- BotTokenProvider -----------------------------------------------------------------------


async def test_client_credentials_form(http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    assert await provider(http, token_endpoint).token() == "tok-1"
    assert token_endpoint.forms == [
        {"grant_type": "client_credentials", "client_id": APP_ID, "client_secret": SECRET, "scope": SCOPE}]


async def test_concurrent_callers_share_one_request(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.delay = 0.1
    p = provider(http, token_endpoint)
    tokens = await asyncio.gather(*(p.token() for _ in range(50)))
    assert tokens == ["tok-1"] * 50
    assert token_endpoint.count == 1
    assert await p.token() == "tok-1"  # and later callers use the cache
    assert token_endpoint.count == p.requests == 1


async def test_cancelled_caller_does_not_cancel_the_shared_request(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.delay = 0.1
    p = provider(http, token_endpoint)
    first = asyncio.create_task(p.token())
    second = asyncio.create_task(p.token())
    await asyncio.sleep(0.03)
    first.cancel()
    assert await second == "tok-1"
    assert token_endpoint.count == 1


async def test_refresh_before_expiry_with_fake_clock(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    clock = FakeClock()
    p = provider(http, token_endpoint, clock=clock, refresh_margin=300)
    assert await p.token() == "tok-1"
    clock.now += 3600 - 301  # still outside the refresh margin
    assert await p.token() == "tok-1"
    assert token_endpoint.count == 1
    clock.now += 2  # inside the margin: refreshed
    assert await p.token() == "tok-2"
    assert token_endpoint.count == 2


async def test_refresh_after_short_expires_in_real_time(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.expires_in = "1"  # Azure AD v1 sends a string; margin shrinks to half the lifetime
    p = provider(http, token_endpoint)
    assert await p.token() == "tok-1"
    assert await p.token() == "tok-1"
    await asyncio.sleep(0.6)
    assert await p.token() == "tok-2"
    assert token_endpoint.count == 2


async def test_failed_refresh_keeps_a_still_valid_token(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    clock = FakeClock()
    p = provider(http, token_endpoint, clock=clock)
    assert await p.token() == "tok-1"
    token_endpoint.mode = "unavailable"
    clock.now += 3400  # in the margin, not expired
    assert await p.token() == "tok-1"
    assert p.last_error is not None and p.last_error.status == 503
    clock.now += 200  # really expired now
    with pytest.raises(TokenError):
        await p.token()
    assert p.cached_token() is None


async def test_error_answer_is_clear_and_never_contains_the_secret(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.mode = "invalid_client"
    p = provider(http, token_endpoint)
    with pytest.raises(TokenError) as exc:
        await p.token()
    message = str(exc.value)
    assert "HTTP 401" in message
    assert "invalid_client" in message and "AADSTS7000215" in message
    assert SECRET not in message and SECRET not in repr(exc.value)
    assert SECRET not in (exc.value.error_description or "")
    assert (exc.value.status, exc.value.error, exc.value.transient) == (401, "invalid_client", False)
    assert SECRET not in repr(p)


async def test_concurrent_callers_share_one_failure(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.mode = "invalid_client"
    token_endpoint.delay = 0.05
    p = provider(http, token_endpoint)
    results = await asyncio.gather(*(p.token() for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    assert token_endpoint.count == 1


@pytest.mark.parametrize(("mode", "status", "transient", "text"), [
    ("unavailable", 503, True, "HTTP 503: no OAuth error in the answer"),
    ("no_token", 200, False, "HTTP 200: no access_token in the answer"),
])
async def test_other_bad_answers(http: aiohttp.ClientSession, token_endpoint: TokenEndpoint,
                                 mode: str, status: int, transient: bool, text: str) -> None:
    token_endpoint.mode = mode
    with pytest.raises(TokenError) as exc:
        await provider(http, token_endpoint).token()
    assert text in str(exc.value)
    assert (exc.value.status, exc.value.transient) == (status, transient)


async def test_unreachable_endpoint(http: aiohttp.ClientSession) -> None:
    with socket_closed_port() as url:
        p = BotTokenProvider(http, app_id=APP_ID, app_password=SECRET, token_url=url, timeout=2)
        with pytest.raises(TokenError) as exc:
            await p.token()
    assert exc.value.transient and "ClientConnectorError" in str(exc.value)
    assert SECRET not in str(exc.value)


async def test_slow_endpoint_times_out_without_blocking_the_loop(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.delay = 10.0
    p = provider(http, token_endpoint, timeout=0.3)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.02)

    tick_task = asyncio.create_task(ticker())
    started = time.monotonic()
    with pytest.raises(TokenError) as exc:
        await p.token()
    elapsed = time.monotonic() - started
    stop.set()
    await tick_task
    # The timeout ended it (its message), not the 10 s endpoint; no upper bound on a shared machine.
    assert elapsed >= 0.25
    assert "timed out after 0.3 s" in str(exc.value) and exc.value.transient
    assert ticks >= 3  # the loop kept running while the token request waited


def test_provider_needs_credentials() -> None:
    with pytest.raises(ValueError):
        BotTokenProvider(None, app_id="", app_password=SECRET, token_url="http://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BotTokenProvider(None, app_id=APP_ID, app_password="", token_url="http://x")  # type: ignore[arg-type]


# --- CachedBotCredentials -------------------------------------------------------------------


async def test_signed_session_uses_the_cache_and_does_no_io(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    creds = CachedBotCredentials(provider(http, token_endpoint))
    assert isinstance(creds, AppCredentials)
    assert creds.microsoft_app_id == APP_ID and creds.oauth_scope == SCOPE

    with pytest.raises(TokenError, match="ensure_fresh"):  # nothing cached: no hidden fetch
        creds.signed_session(requests.Session())
    assert token_endpoint.count == 0

    await creds.ensure_fresh()
    assert token_endpoint.count == 1
    session = requests.Session()
    for _ in range(100):
        assert creds.signed_session(session) is session
    assert session.headers["Authorization"] == "Bearer tok-1"
    assert creds.signed_session().headers["Authorization"] == "Bearer tok-1"  # new session
    assert creds.get_access_token() == "tok-1"
    assert creds.refresh_session(session).headers["Authorization"] == "Bearer tok-1"
    await creds.ensure_fresh()
    assert token_endpoint.count == 1  # all of the above came from the cache


async def test_signed_session_error_names_the_last_failure(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    token_endpoint.mode = "invalid_client"
    creds = CachedBotCredentials(provider(http, token_endpoint))
    with pytest.raises(TokenError):
        await creds.ensure_fresh()
    with pytest.raises(TokenError) as exc:
        creds.get_access_token()
    assert "invalid_client" in str(exc.value) and SECRET not in str(exc.value)


# --- CachedCredentialsFactory ---------------------------------------------------------------


async def test_factory_shares_one_credentials_object(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    f = factory(http, token_endpoint)
    login = "https://login.microsoftonline.com/botframework.com"
    first = await f.create_credentials(APP_ID, "https://api.botframework.com", login, True)
    second = await f.create_credentials(APP_ID, SCOPE, login, True)
    third = await f.create_credentials(APP_ID, None, login, True)  # type: ignore[arg-type]
    assert first is second is third
    assert isinstance(first, CachedBotCredentials)
    assert token_endpoint.count == 1  # created warm, and only once

    skill = await f.create_credentials(APP_ID, "api://some-skill", login, True)
    assert skill is not first and skill.oauth_scope == "api://some-skill/.default"
    assert token_endpoint.count == 2

    assert await f.is_valid_app_id(APP_ID)
    assert not await f.is_valid_app_id("someone-else")
    assert not await f.is_authentication_disabled()
    with pytest.raises(PermissionError):
        await f.create_credentials("someone-else", SCOPE, login, True)


async def test_factory_uses_the_configured_scope_for_the_channel(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    f = factory(http, token_endpoint, scope="api://custom-connector")
    creds = await f.create_credentials(APP_ID, "https://api.botframework.com", "", True)
    assert creds.oauth_scope == "api://custom-connector/.default"
    assert token_endpoint.forms[0]["scope"] == "api://custom-connector/.default"


async def test_factory_create_credentials_logs_token_failure_instead_of_raising(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture) -> None:
    token_endpoint.mode = "invalid_client"
    f = factory(http, token_endpoint)
    creds = await f.create_credentials(APP_ID, SCOPE, "", True)
    assert "invalid_client" in caplog.text and SECRET not in caplog.text
    with pytest.raises(TokenError):
        creds.signed_session(requests.Session())


async def test_factory_without_app_id_disables_authentication(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    f = factory(http, token_endpoint, app_id="", app_password=None)
    assert await f.is_authentication_disabled()
    assert not await f.is_valid_app_id("")
    creds = await f.create_credentials("", SCOPE, "", True)
    assert creds is await f.create_credentials(None, SCOPE, "", True)  # type: ignore[arg-type]
    session = requests.Session()
    session.headers["Authorization"] = "Bearer stale"
    assert "Authorization" not in creds.signed_session(session).headers
    assert token_endpoint.count == 0


async def test_factory_from_settings(http: aiohttp.ClientSession, token_endpoint: TokenEndpoint) -> None:
    from service.config import Settings

    settings = Settings(microsoft_app_id=APP_ID, microsoft_app_password=SECRET, bot_token_url=token_endpoint.url,
                        bot_http_timeout_seconds=3.0)
    f = CachedCredentialsFactory.from_settings(settings, http)
    creds = await f.create_credentials(APP_ID, "https://api.botframework.com", "", True)
    assert creds.get_access_token() == "tok-1"
    assert f.timeout == 3.0 and f.scope == SCOPE


# --- The SDK's own clients ------------------------------------------------------------------


async def test_sdk_connector_client_sends_the_cached_token(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint, connector: FakeConnector) -> None:
    f = factory(http, token_endpoint)
    creds = await f.create_credentials(APP_ID, "https://api.botframework.com", "", True)
    client = ConnectorClient(creds, base_url=connector.url)  # what CloudAdapter builds

    message = Activity(type="message", text="hello", from_property=ChannelAccount(id="28:bot"))
    await client.conversations.send_to_conversation("19:conv", message)
    await client.conversations.reply_to_activity("19:conv", "act-1", message)
    await client.conversations.update_activity("19:conv", "act-1", message)

    assert [(c["method"], c["path"]) for c in connector.calls] == [
        ("POST", "/v3/conversations/19:conv/activities"),
        ("POST", "/v3/conversations/19:conv/activities/act-1"),
        ("PUT", "/v3/conversations/19:conv/activities/act-1"),
    ]
    assert {c["authorization"] for c in connector.calls} == {"Bearer tok-1"}
    assert token_endpoint.count == 1


async def test_cloud_adapter_proactive_sends_use_one_cached_token(
        http: aiohttp.ClientSession, token_endpoint: TokenEndpoint, connector: FakeConnector) -> None:
    class Config:
        APP_ID = APP_ID
        APP_PASSWORD = "not-used-by-our-factory"
        APP_TYPE = "MultiTenant"

    f = factory(http, token_endpoint)
    adapter = CloudAdapter(ConfigurationBotFrameworkAuthentication(Config(), credentials_factory=f))
    reference = ConversationReference(
        channel_id="msteams",
        service_url=connector.url,
        conversation=ConversationAccount(id="19:conv@thread.tacv2", is_group=True),
        bot=ChannelAccount(id=f"28:{APP_ID}"),
        user=ChannelAccount(id="29:user"),
    )

    async def send_card(turn_context: TurnContext) -> None:
        await turn_context.send_activity(MessageFactory.text("approve?"))

    for _ in range(3):
        await adapter.continue_conversation(reference, send_card, APP_ID)

    assert len(connector.calls) == 3
    # A proactive send is a reply to the continuation activity's (random) id.
    prefix = "/v3/conversations/19:conv@thread.tacv2/activities/"
    assert all(c["method"] == "POST" and c["path"].startswith(prefix) for c in connector.calls)
    assert [c["body"]["text"] for c in connector.calls] == ["approve?"] * 3
    assert {c["authorization"] for c in connector.calls} == {"Bearer tok-1"}
    assert token_endpoint.count == 1  # the stock factory fetches one per turn, on the loop

    # Token endpoint refusing: the send fails with TokenError (not a silent unauthenticated call).
    token_endpoint.mode = "invalid_client"
    f2 = factory(http, token_endpoint)
    adapter2 = CloudAdapter(ConfigurationBotFrameworkAuthentication(Config(), credentials_factory=f2))
    with pytest.raises(TokenError):
        await adapter2.continue_conversation(reference, send_card, APP_ID)
    assert len(connector.calls) == 3


class socket_closed_port:
    """A URL on 127.0.0.1 where nothing listens."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}/token"

    def __exit__(self, *exc: object) -> None:
        return None
