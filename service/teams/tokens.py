"""Validation of the JWTs the Bot Connector (Teams) puts on every request to /api/messages.

Replaces the SDK's `ChannelValidation` + `JwtTokenExtractor` and follows the same rules
(issuer https://api.botframework.com, audience = our app id, `serviceurl` claim = the
activity's serviceUrl, RS256, 5 minutes leeway, key endorsements include the channel id),
because the SDK's version:
- fetches keys with blocking `requests` (no timeout) on the event loop,
- raises IndexError / DecodeError / plain Exception for bad tokens, which become 500s,
- picks up a new key id only after an hour (unknown kid) or a day.

Here every failure is `InvalidToken` (a `PermissionError`, which the adapter maps to 401),
keys are fetched with aiohttp under a timeout, and an unknown key id refreshes the keys at
once, at most every `min_refresh_seconds`.

The Bot Connector signs one token for the bot and sends it with every activity until it
nears expiry, so a token whose signature verified is remembered (the exact string, until
its `exp`, while its key is still the published one): a burst of clicks verifies one RSA
signature, not one per click. The checks that depend on the request (channel endorsement,
serviceUrl) run every time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
SERVICE_URL_CLAIM = "serviceurl"
ALGORITHM = "RS256"  # the SDK lists RS384/RS512 too, but then decodes with RS256 only
DEFAULT_LEEWAY_SECONDS = 300  # the SDK's clock_tolerance
KEYS_MAX_AGE_SECONDS = 24 * 3600  # the SDK's periodic refresh
# Upper bounds against garbage: real tokens are ~1.5 KB, real key documents a few KB.
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
_KID_IN_MESSAGE_CHARS = 64


class InvalidToken(PermissionError):
    """The request's token is not acceptable. The message says why; it never holds the token."""


class KeyDocumentError(ValueError):
    """The OpenID metadata or the JWKS is not what we can use."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    public_key: Any  # cryptography RSAPublicKey
    # Channels this key may sign for. Empty: the key makes no claim, so no check (as the SDK).
    endorsements: frozenset[str]


# --------------------------------------------------------------------------- key cache


class OpenIdKeys:
    """The Bot Connector's signing keys, fetched from its OpenID metadata, cached by kid.

    Refreshed when older than `max_age_seconds`, and at once when asked for an unknown kid,
    but never more often than `min_refresh_seconds`: a flood of forged kids then costs the
    key server one request pair per interval. Concurrent callers share one in-flight
    refresh. A failed refresh keeps the keys we have.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        metadata_url: str,
        *,
        timeout_seconds: float = 10.0,
        min_refresh_seconds: float = 60.0,
        max_age_seconds: float = KEYS_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._metadata_url = metadata_url
        self._timeout_seconds = timeout_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._max_age_seconds = max_age_seconds
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at: float | None = None  # last successful refresh
        self._attempted_at: float | None = None  # last refresh started, successful or not
        self._inflight: asyncio.Task[None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def current(self, kid: str) -> SigningKey | None:
        """The cached key for `kid`, unless the cache is due for its periodic refresh."""
        return None if self._is_stale() else self._keys.get(kid)

    async def get(self, kid: str) -> SigningKey:
        """The key for `kid`, refreshing first if the cache is stale or lacks it."""
        if self._is_stale():
            await self.refresh()
        key = self._keys.get(kid)
        if key is None:
            await self.refresh()
            key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            # 401 rather than 500: the request itself may be fine, but we cannot tell. The
            # Bot Connector retries, and a retry succeeds once the key server is reachable.
            raise InvalidToken("signing keys unavailable")
        raise InvalidToken(f"unknown signing key id {_shorten(kid)!r}")

    async def refresh(self) -> None:
        """Refetch the keys unless a refresh ran less than `min_refresh_seconds` ago.

        Never raises for fetch problems (they are logged); callers see the outcome in the cache.
        """
        if self._inflight is None:
            if not self._may_refresh():
                return
            self._attempted_at = self._clock()
            task = asyncio.create_task(self._refresh_once(), name="bot-openid-keys-refresh")
            task.add_done_callback(self._forget_inflight)
            self._inflight = task
        # shield: a caller whose request is cancelled must not cancel the shared refresh.
        await asyncio.shield(self._inflight)

    async def aclose(self) -> None:
        """Cancel a refresh still running (on shutdown, before the session closes)."""
        task = self._inflight
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _is_stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self._max_age_seconds

    def _may_refresh(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_refresh_seconds

    def _forget_inflight(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh_once(self) -> None:
        try:
            keys = await self._fetch_keys()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: keep serving what we have (see class doc)
            log.warning(
                "bot signing keys refresh from %s failed (%s); keeping %d cached keys",
                self._metadata_url, self._describe_failure(exc), len(self._keys),
            )
            return
        self._keys = keys
        self._loaded_at = self._clock()
        log.info("bot signing keys refreshed: %d keys", len(keys))

    def _describe_failure(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError):  # str() of a timeout is empty
            return f"no answer within {self._timeout_seconds:g}s"
        return f"{type(exc).__name__}: {exc}"

    async def _fetch_keys(self) -> dict[str, SigningKey]:
        # One budget for both requests: a slow key server costs a request at most this long.
        async with asyncio.timeout(self._timeout_seconds):
            metadata = await self._get_json(self._metadata_url)
            jwks_uri = metadata.get("jwks_uri") if isinstance(metadata, dict) else None
            if not isinstance(jwks_uri, str) or not jwks_uri:
                raise KeyDocumentError("OpenID metadata has no jwks_uri")
            return parse_jwks(await self._get_json(jwks_uri))

    async def _get_json(self, url: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=self._timeout_seconds)
        async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
            response.raise_for_status()
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise KeyDocumentError(f"{url} returned more than {MAX_DOCUMENT_BYTES} bytes")
        return json.loads(body)  # ValueError on bad JSON, handled by _refresh_once


def parse_jwks(document: Any) -> dict[str, SigningKey]:
    """The usable RSA signing keys of a JWKS; unusable entries are skipped with a warning."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise KeyDocumentError("JWKS has no 'keys' list")
    keys: dict[str, SigningKey] = {}
    for entry in entries:
        try:
            key = parse_jwk(entry)
        except KeyDocumentError as exc:
            log.warning("skipping bot signing key: %s", exc)
            continue
        keys[key.kid] = key
    if not keys:
        # An empty set would make every token fail; better keep the previous keys.
        raise KeyDocumentError("JWKS holds no usable RSA signing key")
    return keys


def parse_jwk(entry: Any) -> SigningKey:
    if not isinstance(entry, Mapping):
        raise KeyDocumentError("JWKS entry is not an object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise KeyDocumentError("JWKS entry has no kid")
    if entry.get("kty") != "RSA":
        raise KeyDocumentError(f"key {_shorten(kid)!r} is not RSA")
    if entry.get("use", "sig") != "sig":
        raise KeyDocumentError(f"key {_shorten(kid)!r} is not a signing key")
    endorsements = entry.get("endorsements", [])
    if not isinstance(endorsements, list) or not all(isinstance(e, str) for e in endorsements):
        raise KeyDocumentError(f"key {_shorten(kid)!r} has malformed endorsements")
    try:
        public_key = jwt.PyJWK(dict(entry), algorithm=ALGORITHM).key
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise KeyDocumentError(f"key {_shorten(kid)!r} is not a valid RSA JWK: {exc}") from exc
    return SigningKey(kid=kid, public_key=public_key, endorsements=frozenset(endorsements))


# --------------------------------------------------------------------------- validation

VERIFIED_TOKENS_REMEMBERED = 256  # one per bot is the usual; a few during a token change


@dataclass(frozen=True, slots=True)
class _Verified:
    key: SigningKey
    claims: Mapping[str, Any]
    usable_until: float  # exp + leeway, in time.time() seconds


class ChannelTokenValidator:
    """Checks a Bot Connector token the way the SDK's ChannelValidation does, failing with
    InvalidToken for every problem."""

    def __init__(
        self,
        app_id: str,
        keys: OpenIdKeys,
        *,
        issuer: str = BOT_FRAMEWORK_ISSUER,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
        remember: int = VERIFIED_TOKENS_REMEMBERED,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not app_id:
            # An empty app id means "no authentication" in the SDK; that is never this class.
            raise ValueError("ChannelTokenValidator needs the bot's app id")
        self._app_id = app_id
        self._keys = keys
        self._issuer = issuer
        self._leeway_seconds = leeway_seconds
        self._remember = remember
        self._now = now
        self._verified: OrderedDict[str, _Verified] = OrderedDict()  # token -> what verifying it gave

    @property
    def keys(self) -> OpenIdKeys:
        return self._keys

    async def validate(self, auth_header: str | None, *, channel_id: str, service_url: str | None) -> dict[str, Any]:
        """The token's claims, if it was issued by the Bot Connector for this bot, this channel
        and this serviceUrl. Raises InvalidToken otherwise."""
        verified = await self._verified_token(auth_header)
        _check_endorsement(verified.key, channel_id)
        _check_service_url(verified.claims, service_url)
        return dict(verified.claims)

    async def verify_token(self, auth_header: str | None) -> None:
        """The checks that need only the header (signature, issuer, audience, lifetime): run
        before the body is read, so that a request without a valid token costs no parsing.
        `validate` repeats them from the cache and adds the checks that need the activity."""
        await self._verified_token(auth_header)

    async def _verified_token(self, auth_header: str | None) -> _Verified:
        token = bearer_token(auth_header)
        verified = self._verified.get(token)
        if (verified is None or self._keys.current(verified.key.kid) is not verified.key
                or self._now() > verified.usable_until):
            return await self._verify(token)
        self._verified.move_to_end(token)
        return verified

    async def _verify(self, token: str) -> _Verified:
        self._verified.pop(token, None)
        kid = _signing_key_id(token)
        key = await self._keys.get(kid)
        claims = self._decode(token, key)
        _check_audience(claims, self._app_id)
        verified = _Verified(key, claims, usable_until=float(claims["exp"]) + self._leeway_seconds)
        self._verified[token] = verified
        if len(self._verified) > self._remember:
            self._verified.popitem(last=False)
        return verified

    def _decode(self, token: str, key: SigningKey) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key.public_key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                leeway=self._leeway_seconds,
                # aud is compared by hand (as the SDK does): exactly one string, our app id.
                options={"verify_aud": False, "require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_describe_jwt_error(exc)) from None
        except Exception as exc:  # whatever else decoding throws is still a bad token, not a 500
            raise InvalidToken(f"token could not be decoded ({type(exc).__name__})") from None


def bearer_token(auth_header: str | None) -> str:
    if auth_header is None or not auth_header.strip():
        raise InvalidToken("missing Authorization header")
    scheme, _, token = auth_header.strip().partition(" ")
    token = token.strip()
    # Scheme names are case-insensitive (RFC 9110); the SDK wants exactly "Bearer".
    if scheme.lower() != "bearer" or not token or " " in token:
        raise InvalidToken("Authorization header is not 'Bearer <token>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken("token is too long")
    return token


def _signing_key_id(token: str) -> str:
    """The kid from the token's header, after checking the algorithm: nothing but RS256
    (no `none`, no HS256 keyed with our public key) reaches signature verification."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token: {exc}") from None
    except Exception as exc:
        raise InvalidToken(f"malformed token ({type(exc).__name__})") from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise InvalidToken(f"signing algorithm {_shorten(str(alg))!r} is not allowed (only {ALGORITHM})")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("token header has no key id (kid)")
    return kid


def _describe_jwt_error(exc: jwt.PyJWTError) -> str:
    # Most specific first: ExpiredSignatureError etc. are subclasses of InvalidTokenError.
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token is not yet valid"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "token signature does not verify"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "token issuer is not the Bot Framework"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no {exc.claim!r} claim"
    if isinstance(exc, jwt.DecodeError):
        return f"malformed token: {exc}"
    return f"invalid token: {exc}"


def _check_audience(claims: Mapping[str, Any], app_id: str) -> None:
    # The SDK compares the claim with the app id as a string; a list never matches.
    if claims.get("aud") != app_id:
        raise InvalidToken("token audience is not this bot's app id")


def _check_endorsement(key: SigningKey, channel_id: str) -> None:
    # A key with endorsements may only sign for those channels (the SDK's EndorsementsValidator).
    # The SDK lets an activity without channelId pass; we do not (Teams always sends one).
    if key.endorsements and channel_id not in key.endorsements:
        raise InvalidToken(f"signing key is not endorsed for channel {_shorten(channel_id)!r}")


def _check_service_url(claims: Mapping[str, Any], service_url: str | None) -> None:
    claim = claims.get(SERVICE_URL_CLAIM)
    if not isinstance(claim, str) or not claim:
        raise InvalidToken(f"token has no {SERVICE_URL_CLAIM!r} claim")
    # The SDK skips the comparison when the activity has no serviceUrl; we refuse instead:
    # the claim is what binds the token to where replies go.
    if not service_url:
        raise InvalidToken("activity has no serviceUrl to match the token's serviceurl claim")
    if normalize_service_url(claim) != normalize_service_url(service_url):
        raise InvalidToken("token serviceurl claim does not match the activity's serviceUrl")


def normalize_service_url(url: str) -> str:
    """Case-insensitive (as the C# SDK's OrdinalIgnoreCase; the Python SDK compares exactly)
    and without one trailing slash: Teams sends "https://smba.trafficmanager.net/amer/" and
    the same URL may be stored or echoed without the slash."""
    return url.lower().removesuffix("/")


def _shorten(text: str) -> str:
    return text if len(text) <= _KID_IN_MESSAGE_CHARS else text[:_KID_IN_MESSAGE_CHARS] + "…"


# --------------------------------------------------------------------------- wiring


def validator_from_settings(settings: Settings, session: aiohttp.ClientSession) -> ChannelTokenValidator:
    """The production validator: keys from `bot_openid_metadata_url` through `session`."""
    keys = OpenIdKeys(
        session,
        settings.bot_openid_metadata_url,
        timeout_seconds=settings.bot_http_timeout_seconds,
        min_refresh_seconds=settings.bot_key_refresh_min_seconds,
    )
    return ChannelTokenValidator(settings.microsoft_app_id, keys)
