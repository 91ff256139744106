"""Bot Connector token validation (service/teams/tokens.py) against a real local key server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer

from service.config import Settings
from service.teams.tokens import (
    ChannelTokenValidator,
    InvalidToken,
    OpenIdKeys,
    normalize_service_url,
    validator_from_settings,
)

from .peers.bot_keys import METADATA_PATH, BotKeyServer, TokenFactory, _b64, _b64json, generate_rsa_key, new_kid

APP_ID = "6f1c7a52-0d2b-4a7e-9a8e-3c1f0e2d9b11"
SERVICE_URL = "https://smba.trafficmanager.net/amer/"
CHANNEL = "msteams"
MIN_REFRESH = 60.0


class FakeClock:
    """The keys cache's monotonic clock, moved by hand: hours pass in no time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class KeyPeer:
    server: BotKeyServer
    metadata_url: str
    tokens: TokenFactory


@pytest.fixture
async def peer() -> AsyncIterator[KeyPeer]:
    server = BotKeyServer()
    server.add_key("key-1", endorsements=[CHANNEL, "webchat"])
    test_server = TestServer(server.app(), host="127.0.0.1")
    await test_server.start_server(shutdown_timeout=2)
    try:
        yield KeyPeer(server, str(test_server.make_url(METADATA_PATH)),
                      TokenFactory(server, app_id=APP_ID, service_url=SERVICE_URL))
    finally:
        server.release()  # a deliberately slow handler must not hold up the shutdown
        await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeValidator = Callable[..., tuple[ChannelTokenValidator, OpenIdKeys]]


@pytest.fixture
async def make_validator(peer: KeyPeer, session: aiohttp.ClientSession,
                         clock: FakeClock) -> AsyncIterator[MakeValidator]:
    made: list[OpenIdKeys] = []

    def make(*, timeout_seconds: float = 2.0, min_refresh_seconds: float = MIN_REFRESH,
             **validator_args: Any) -> tuple[ChannelTokenValidator, OpenIdKeys]:
        keys = OpenIdKeys(session, peer.metadata_url, timeout_seconds=timeout_seconds,
                          min_refresh_seconds=min_refresh_seconds, clock=clock)
        made.append(keys)
        return ChannelTokenValidator(APP_ID, keys, **validator_args), keys

    yield make
    for keys in made:
        await keys.aclose()


@pytest.fixture
def validator(make_validator: MakeValidator) -> ChannelTokenValidator:
    return make_validator()[0]


async def validate(validator: ChannelTokenValidator, token: str, *, channel_id: str = CHANNEL,
                   service_url: str | None = SERVICE_URL) -> dict[str, Any]:
    return await validator.validate(TokenFactory.header(token), channel_id=channel_id, service_url=service_url)


# --------------------------------------------------------------------------- accepted


async def test_valid_token_passes_and_returns_claims(peer: KeyPeer, validator: ChannelTokenValidator) -> None:
    claims = await validate(validator, peer.tokens.token(tid="tenant-1"))
    assert claims["aud"] == APP_ID
    assert claims["iss"] == "https://api.botframework.com"
    assert claims["serviceurl"] == SERVICE_URL
    assert claims["tid"] == "tenant-1"
    assert peer.server.metadata_requests == 1 and peer.server.jwks_requests == 1


async def test_keys_are_cached_between_requests(peer: KeyPeer, validator: ChannelTokenValidator) -> None:
    for _ in range(5):
        await validate(validator, peer.tokens.token())
    assert peer.server.metadata_requests == 1 and peer.server.jwks_requests == 1


@pytest.mark.parametrize("claim, activity", [
    ("https://smba.trafficmanager.net/amer/", "https://smba.trafficmanager.net/amer"),
    ("https://smba.trafficmanager.net/amer", "https://smba.trafficmanager.net/amer/"),
    ("https://SMBA.trafficmanager.net/AMER/", "https://smba.trafficmanager.net/amer/"),
])
async def test_service_url_comparison_ignores_case_and_one_trailing_slash(
        peer: KeyPeer, validator: ChannelTokenValidator, claim: str, activity: str) -> None:
    await validate(validator, peer.tokens.token(serviceurl=claim), service_url=activity)


def test_normalize_service_url_strips_only_one_slash() -> None:
    assert normalize_service_url("https://x.test/a//") == "https://x.test/a/"
    assert normalize_service_url("HTTPS://X.test/A/") == "https://x.test/a"


@pytest.mark.parametrize("endorsements", [None, []])
async def test_key_without_endorsements_accepts_any_channel(
        peer: KeyPeer, validator: ChannelTokenValidator, endorsements: list[str] | None) -> None:
    peer.server.set_endorsements("key-1", endorsements)
    await validate(validator, peer.tokens.token(), channel_id="anything")


async def test_clock_skew_within_five_minutes_is_accepted(peer: KeyPeer, validator: ChannelTokenValidator) -> None:
    await validate(validator, peer.tokens.expired(by=240))  # expired 4 minutes ago
    await validate(validator, peer.tokens.not_yet_valid(by=240))  # valid in 4 minutes


async def test_leeway_is_configurable(peer: KeyPeer, make_validator: MakeValidator) -> None:
    strict, _ = make_validator(leeway_seconds=0)
    with pytest.raises(InvalidToken, match="expired"):
        await validate(strict, peer.tokens.expired(by=30))


# --------------------------------------------------------------------------- refused


def _raw_token(header: Any, payload: Any = None, signature: str = "c2ln") -> str:
    return f"{_b64json(header)}.{_b64json(payload or {})}.{signature}"


def _token_without_kid(t: TokenFactory) -> str:
    return jwt.encode(t.claims(), t.server.keys["key-1"].private_key, algorithm="RS256")


def _unknown_kid_signed_by_known_key(t: TokenFactory) -> str:
    return jwt.encode(t.claims(), t.server.keys["key-1"].private_key, algorithm="RS256", headers={"kid": "nope"})


# (id, build the Authorization header, validate() keyword overrides, expected message)
BadCase = tuple[str, Callable[[TokenFactory], str | None], dict[str, Any], str]
BAD_CASES: list[BadCase] = [
    ("no header", lambda t: None, {}, "missing Authorization header"),
    ("empty header", lambda t: "", {}, "missing Authorization header"),
    ("blank header", lambda t: "   ", {}, "missing Authorization header"),
    ("basic scheme", lambda t: "Basic dXNlcjpwYXNz", {}, r"not 'Bearer <token>'"),
    ("bearer without token", lambda t: "Bearer", {}, r"not 'Bearer <token>'"),
    ("bearer two tokens", lambda t: f"Bearer {t.token()} {t.token()}", {}, r"not 'Bearer <token>'"),
    ("token without scheme", lambda t: t.token(), {}, r"not 'Bearer <token>'"),
    ("huge token", lambda t: "Bearer " + "a" * 20000, {}, "too long"),
    ("garbage", lambda t: "Bearer garbage", {}, "malformed token"),
    ("garbage with dots", lambda t: "Bearer !!!.@@@.###", {}, "malformed token"),
    ("header not json", lambda t: f"Bearer {_b64(b'not json')}.e30.c2ln", {}, "malformed token"),
    ("header is a list", lambda t: "Bearer " + _raw_token(["RS256"]), {}, "malformed token"),
    ("kid not a string", lambda t: "Bearer " + _raw_token({"alg": "RS256", "kid": 5}), {}, "malformed token"),
    ("alg none", lambda t: "Bearer " + t.alg_none(), {}, "algorithm 'none' is not allowed"),
    ("alg missing", lambda t: "Bearer " + _raw_token({"kid": "key-1"}), {}, "algorithm 'None' is not allowed"),
    ("HS256 keyed with the public key", lambda t: "Bearer " + t.hs256_with_public_key(), {},
     "algorithm 'HS256' is not allowed"),
    ("RS512", lambda t: "Bearer " + t.token(alg="RS512"), {}, "algorithm 'RS512' is not allowed"),
    ("no kid", lambda t: "Bearer " + _token_without_kid(t), {}, r"no key id \(kid\)"),
    ("unknown kid", lambda t: "Bearer " + _unknown_kid_signed_by_known_key(t), {}, "unknown signing key id 'nope'"),
    ("signed by another key", lambda t: "Bearer " + t.wrong_key(), {}, "signature does not verify"),
    ("payload tampered", lambda t: "Bearer " + t.tampered(aud="someone-else"), {}, "signature does not verify"),
    ("signature cut", lambda t: "Bearer " + t.token().rsplit(".", 1)[0] + ".", {}, "signature does not verify"),
    ("expired", lambda t: "Bearer " + t.expired(), {}, "token has expired"),
    ("expired beyond leeway", lambda t: "Bearer " + t.expired(by=360), {}, "token has expired"),
    ("not yet valid", lambda t: "Bearer " + t.not_yet_valid(by=360), {}, "not yet valid"),
    ("wrong issuer", lambda t: "Bearer " + t.token(iss="https://sts.windows.net/evil/"), {}, "issuer"),
    ("no issuer", lambda t: "Bearer " + t.token(iss=None), {}, "no 'iss' claim"),
    ("no exp", lambda t: "Bearer " + t.token(exp=None), {}, "no 'exp' claim"),
    ("no audience", lambda t: "Bearer " + t.token(aud=None), {}, "no 'aud' claim"),
    ("other audience", lambda t: "Bearer " + t.token(aud="another-bot"), {}, "audience is not this bot's app id"),
    ("audience list", lambda t: "Bearer " + t.token(aud=[APP_ID]), {}, "audience is not this bot's app id"),
    ("no serviceurl claim", lambda t: "Bearer " + t.token(serviceurl=None), {}, "no 'serviceurl' claim"),
    ("empty serviceurl claim", lambda t: "Bearer " + t.token(serviceurl=""), {}, "no 'serviceurl' claim"),
    ("other serviceurl", lambda t: "Bearer " + t.token(serviceurl="https://evil.example/amer/"), {},
     "serviceurl claim does not match"),
    ("serviceurl prefix", lambda t: "Bearer " + t.token(serviceurl=SERVICE_URL + "x/"), {},
     "serviceurl claim does not match"),
    ("activity without serviceUrl", lambda t: "Bearer " + t.token(), {"service_url": None},
     "activity has no serviceUrl"),
    ("unendorsed channel", lambda t: "Bearer " + t.token(), {"channel_id": "slack"},
     "not endorsed for channel 'slack'"),
    ("no channel id", lambda t: "Bearer " + t.token(), {"channel_id": ""}, "not endorsed for channel ''"),
]


@pytest.mark.parametrize("build, overrides, message", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
async def test_bad_token_is_refused_with_a_reason(
        peer: KeyPeer, validator: ChannelTokenValidator,
        build: Callable[[TokenFactory], str | None], overrides: dict[str, Any], message: str) -> None:
    header = build(peer.tokens)
    args: dict[str, Any] = {"channel_id": CHANNEL, "service_url": SERVICE_URL, **overrides}
    with pytest.raises(InvalidToken, match=message) as caught:
        await validator.validate(header, **args)
    assert isinstance(caught.value, PermissionError)  # what the adapter turns into 401
    token = (header or "").removeprefix("Bearer ").strip()
    if len(token) > 8:
        assert token not in str(caught.value)
        assert token.split(".")[0] not in str(caught.value)


async def test_endorsement_is_checked_per_key(peer: KeyPeer, make_validator: MakeValidator,
                                              clock: FakeClock) -> None:
    validator, _ = make_validator()
    teams_only = peer.server.add_key(endorsements=[CHANNEL])
    await validate(validator, peer.tokens.token(teams_only))
    with pytest.raises(InvalidToken, match="not endorsed for channel 'webchat'"):
        await validate(validator, peer.tokens.token(teams_only), channel_id="webchat")
    await validate(validator, peer.tokens.token("key-1"), channel_id="webchat")
    # Endorsements are re-read on refresh: a key losing one stops being accepted for it.
    peer.server.set_endorsements("key-1", [CHANNEL])
    clock.advance(24 * 3600)
    with pytest.raises(InvalidToken, match="not endorsed"):
        await validate(validator, peer.tokens.token("key-1"), channel_id="webchat")


def test_empty_app_id_is_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="app id"):
        ChannelTokenValidator("", OpenIdKeys(session, "http://127.0.0.1:9/"))


# --------------------------------------------------------------------------- key refresh


async def test_rotated_key_is_accepted_after_min_refresh_not_a_day(
        peer: KeyPeer, validator: ChannelTokenValidator, clock: FakeClock) -> None:
    await validate(validator, peer.tokens.token("key-1"))
    new = peer.server.rotate(endorsements=[CHANNEL])
    # Right after a refresh the rate limit holds: an unknown kid is refused without a fetch.
    with pytest.raises(InvalidToken, match="unknown signing key id"):
        await validate(validator, peer.tokens.token(new))
    assert peer.server.jwks_requests == 1
    clock.advance(MIN_REFRESH)
    await validate(validator, peer.tokens.token(new))  # the first request that may refresh
    assert peer.server.jwks_requests == 2
    await validate(validator, peer.tokens.token("key-1"))  # the old key is still published


async def test_keys_are_refreshed_daily(peer: KeyPeer, validator: ChannelTokenValidator, clock: FakeClock) -> None:
    old_token = peer.tokens.token("key-1")
    await validate(validator, old_token)
    clock.advance(24 * 3600 - 1)
    await validate(validator, old_token)
    assert peer.server.jwks_requests == 1
    peer.server.rotate(drop_old=True)
    clock.advance(1)
    with pytest.raises(InvalidToken, match="unknown signing key id 'key-1'"):
        await validate(validator, old_token)
    assert peer.server.jwks_requests == 2


async def test_flood_of_unknown_kids_refreshes_at_most_once_per_interval(
        peer: KeyPeer, validator: ChannelTokenValidator, clock: FakeClock) -> None:
    await validate(validator, peer.tokens.token())
    forger = generate_rsa_key()

    async def flood(n: int) -> None:
        results = await asyncio.gather(
            *(validate(validator, peer.tokens.signed_with(forger, new_kid())) for _ in range(n)),
            return_exceptions=True)
        assert all(isinstance(r, InvalidToken) and "unknown signing key id" in str(r) for r in results)

    await flood(100)  # within the interval of the first load: no fetch at all
    assert peer.server.jwks_requests == 1
    clock.advance(MIN_REFRESH)
    await flood(100)  # concurrent: one shared refresh
    assert (peer.server.metadata_requests, peer.server.jwks_requests) == (2, 2)
    for _ in range(50):  # sequential, same interval: none
        await flood(1)
    clock.advance(MIN_REFRESH - 1)
    await flood(20)
    assert (peer.server.metadata_requests, peer.server.jwks_requests) == (2, 2)
    clock.advance(1)
    await flood(20)
    assert (peer.server.metadata_requests, peer.server.jwks_requests) == (3, 3)


async def test_concurrent_callers_share_one_inflight_refresh(
        peer: KeyPeer, validator: ChannelTokenValidator) -> None:
    peer.server.delay_seconds = 0.2
    results = await asyncio.gather(*(validate(validator, peer.tokens.token()) for _ in range(20)))
    assert len(results) == 20
    assert (peer.server.metadata_requests, peer.server.jwks_requests) == (1, 1)


async def test_cancelled_caller_does_not_cancel_the_shared_refresh(
        peer: KeyPeer, validator: ChannelTokenValidator) -> None:
    peer.server.delay_seconds = 0.2
    first = asyncio.create_task(validate(validator, peer.tokens.token()))
    await asyncio.sleep(0.05)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await validate(validator, peer.tokens.token())  # rides the same refresh
    assert (peer.server.metadata_requests, peer.server.jwks_requests) == (1, 1)


async def test_slow_key_server_does_not_block_the_event_loop(
        peer: KeyPeer, make_validator: MakeValidator) -> None:
    peer.server.delay_seconds = 5.0
    validator, _ = make_validator(timeout_seconds=0.3)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    started = time.monotonic()
    try:
        with pytest.raises(InvalidToken, match="signing keys unavailable"):
            await validate(validator, peer.tokens.token())
        elapsed = time.monotonic() - started
    finally:
        ticking.cancel()
    assert elapsed >= 0.3 and peer.server.delay_seconds > elapsed  # the timeout ended it, not the 5 s server
    during = [t for t in ticks if started <= t <= started + elapsed]
    assert len(during) >= 3, f"ticker ran {len(during)} times in {elapsed:.2f}s"  # the loop was never held
    assert peer.server.metadata_requests == 1


async def test_unavailable_keys_are_a_401_until_the_server_recovers(
        peer: KeyPeer, validator: ChannelTokenValidator, clock: FakeClock) -> None:
    peer.server.fail_status = 503
    with pytest.raises(InvalidToken, match="signing keys unavailable"):
        await validate(validator, peer.tokens.token())
    peer.server.healthy()
    with pytest.raises(InvalidToken, match="signing keys unavailable"):
        await validate(validator, peer.tokens.token())  # no retry storm within the interval
    assert peer.server.metadata_requests == 1
    clock.advance(MIN_REFRESH)
    await validate(validator, peer.tokens.token())


async def _fail_with_status(server: BotKeyServer) -> None:
    server.fail_status = 500


async def _fail_with_garbage(server: BotKeyServer) -> None:
    server.garbage = True


async def _fail_slowly(server: BotKeyServer) -> None:
    server.delay_seconds = 5.0


async def _fail_with_no_keys(server: BotKeyServer) -> None:
    server.keys.clear()
    server.extra_jwks.append({"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "AA", "y": "AA"})


@pytest.mark.parametrize("break_server", [_fail_with_status, _fail_with_garbage, _fail_slowly, _fail_with_no_keys],
                         ids=["http-500", "not-json", "timeout", "no-usable-keys"])
async def test_failed_refresh_keeps_the_old_keys(
        peer: KeyPeer, make_validator: MakeValidator, clock: FakeClock, caplog: pytest.LogCaptureFixture,
        break_server: Callable[[BotKeyServer], Awaitable[None]]) -> None:
    validator, keys = make_validator(timeout_seconds=0.3)
    token = peer.tokens.token("key-1")
    await validate(validator, token)
    await break_server(peer.server)
    clock.advance(24 * 3600 + 1)  # stale: the next request refreshes
    with caplog.at_level(logging.WARNING, logger="service.teams.tokens"):
        await validate(validator, token)
    assert peer.server.metadata_requests == 2
    assert "keeping 1 cached keys" in caplog.text
    assert keys.kids == {"key-1"}
    # And an unknown kid still fails cleanly while the server is broken.
    clock.advance(MIN_REFRESH)
    with pytest.raises(InvalidToken, match="unknown signing key id"):
        await validate(validator, peer.tokens.unknown_kid())


async def test_unusable_jwks_entries_are_skipped(peer: KeyPeer, validator: ChannelTokenValidator,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    peer.server.extra_jwks.extend([
        "not an object",
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # no kid
        {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {**peer.server.keys["key-1"].jwk(), "kid": "enc", "use": "enc"},
        {**peer.server.keys["key-1"].jwk(), "kid": "bad-endorsements", "endorsements": "msteams"},
    ])
    with caplog.at_level(logging.WARNING, logger="service.teams.tokens"):
        await validate(validator, peer.tokens.token("key-1"))
    assert caplog.text.count("skipping bot signing key") == 6


async def test_metadata_without_jwks_uri_is_a_failed_refresh(
        peer: KeyPeer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    url = peer.metadata_url.replace(METADATA_PATH, "/v1/.well-known/keys")  # a JWKS is not metadata
    validator = ChannelTokenValidator(APP_ID, OpenIdKeys(session, url))
    with caplog.at_level(logging.WARNING, logger="service.teams.tokens"):
        with pytest.raises(InvalidToken, match="signing keys unavailable"):
            await validate(validator, peer.tokens.token())
    assert "no jwks_uri" in caplog.text


async def test_validator_from_settings(peer: KeyPeer, session: aiohttp.ClientSession) -> None:
    values: dict[str, Any] = {"microsoft_app_id": APP_ID, "bot_openid_metadata_url": peer.metadata_url,
                              "bot_http_timeout_seconds": 1.0, "bot_key_refresh_min_seconds": 5.0}
    settings = Settings(**values)
    validator = validator_from_settings(settings, session)
    claims = await validate(validator, peer.tokens.token())
    assert claims["aud"] == APP_ID


def test_jwks_document_is_plain_json(peer: KeyPeer) -> None:
    # The peer publishes what login.botframework.com does: kid, kty, n, e, use, endorsements.
    jwk = peer.server.keys["key-1"].jwk()
    assert {"kid", "kty", "n", "e", "use", "endorsements"} <= set(jwk)
    json.dumps(jwk)


# --------------------------------------------------------------------------- verified-token memory


async def test_a_token_is_verified_once_and_the_per_request_checks_still_run(
        peer: KeyPeer, validator: ChannelTokenValidator, monkeypatch: pytest.MonkeyPatch) -> None:
    decodes: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    token = peer.tokens.token()
    for _ in range(5):
        assert (await validate(validator, token))["aud"] == APP_ID
    assert len(decodes) == 1
    # Endorsement and serviceUrl belong to the request, not the token: checked on every use.
    with pytest.raises(InvalidToken, match="not endorsed"):
        await validate(validator, token, channel_id="skype")
    with pytest.raises(InvalidToken, match="serviceurl claim does not match"):
        await validate(validator, token, service_url="https://evil.example.com/")
    # Any other string is verified in full, even one that differs only in its signature.
    with pytest.raises(InvalidToken, match="signature does not verify"):
        await validate(validator, token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))
    assert len(decodes) == 2


async def test_a_remembered_token_is_verified_again_once_past_its_exp(
        peer: KeyPeer, make_validator: MakeValidator, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [time.time()]
    validator, _ = make_validator(now=lambda: now[0])
    token = peer.tokens.token(lifetime=60)
    await validate(validator, token)
    refused: list[str] = []

    def decode_in_the_future(token: str, *args: Any, **kwargs: Any) -> Any:
        refused.append(token)  # PyJWT's own clock has not moved: say what it would say then
        raise jwt.ExpiredSignatureError("Signature has expired")

    monkeypatch.setattr(jwt, "decode", decode_in_the_future)
    now[0] += 60 + 300 - 1  # within exp and the leeway: remembered
    await validate(validator, token)
    assert refused == []
    now[0] += 2
    with pytest.raises(InvalidToken, match="expired"):
        await validate(validator, token)
    assert refused == [token]


async def test_a_remembered_token_of_a_withdrawn_key_is_refused(
        peer: KeyPeer, validator: ChannelTokenValidator, clock: FakeClock) -> None:
    token = peer.tokens.token("key-1")
    await validate(validator, token)
    peer.server.rotate(drop_old=True)
    clock.advance(24 * 3600)  # the daily refresh drops key-1
    with pytest.raises(InvalidToken, match="unknown signing key id"):
        await validate(validator, token)


async def test_only_so_many_tokens_are_remembered(peer: KeyPeer, make_validator: MakeValidator) -> None:
    validator, _ = make_validator(remember=2)
    tokens = [peer.tokens.token(tid=f"t{i}") for i in range(3)]
    for token in tokens:
        await validate(validator, token)
    assert list(validator._verified) == tokens[1:]
