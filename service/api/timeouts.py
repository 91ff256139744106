"""Bounds on how long a client may take to send its request, so slow connections cannot pile
up (slowloris): the request head within `COUNTERSIGN_HTTP_HEADER_TIMEOUT_SECONDS`, the body
within `COUNTERSIGN_HTTP_BODY_TIMEOUT_SECONDS` of the head.

aiohttp (3.x) has no header-read timeout of its own, but its keep-alive timer is armed when a
connection opens and re-armed after each response, and closes the connection if no complete
request head has arrived when it fires: given the header timeout as `keepalive_timeout`, it
bounds the head (and an idle keep-alive connection waits no longer than a new one).
aiohttp has no body timeout either: `body_deadline` is a middleware that arms a timer when a
request with a body reaches the app; if the body has not fully arrived when it fires, the
read waiting for it fails with a 408 problem, and the connection is closed shortly after
(once the answer has had a moment to go out), whether or not the handler was reading.
A handler that is slow after the body has arrived is not affected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .errors import ApiError, Handler

log = logging.getLogger(__name__)

# After the 408 has been raised into the handler's read: time to write the answer before the
# connection is closed regardless.
CLOSE_GRACE_SECONDS = 1.0


def server_options(header_timeout_seconds: float) -> dict[str, Any]:
    """Keyword arguments for `web.run_app` / `web.AppRunner` bounding the request head."""
    return {"keepalive_timeout": header_timeout_seconds}


def body_deadline(timeout_seconds: float) -> Any:
    """Middleware: a request's body must have arrived `timeout_seconds` after its head."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if timeout_seconds <= 0 or not request.body_exists or request.content.is_eof():
            return await handler(request)
        timer = asyncio.get_running_loop().call_later(timeout_seconds, _expire, request, timeout_seconds)
        try:
            return await handler(request)
        finally:
            timer.cancel()

    return middleware


def _expire(request: web.Request, timeout_seconds: float) -> None:
    if request.content.is_eof():
        return  # the body arrived; the handler is just working
    log.warning("closing a connection whose request body did not arrive within %g s (%s %s)",
                timeout_seconds, request.method, request.rel_url.path)
    request.content.set_exception(ApiError(
        408, "request_timeout", f"the request body did not arrive within {timeout_seconds:g} s",
        headers={"Connection": "close"}))
    protocol = request.protocol
    asyncio.get_running_loop().call_later(CLOSE_GRACE_SECONDS, protocol.force_close)
