"""`/console/login` (GET shows the form, POST exchanges a key for a session) and `/console/logout`."""

from __future__ import annotations

from aiohttp import web

from .identity import LoginRefused
from .pages import (
    CONSOLE,
    CSRF_FIELD,
    HEADERS,
    FormUnreadable,
    action,
    current_session,
    form_text,
    read_form,
    redirect,
    render,
    unreadable_form,
)
from .sessions import Session
from .tokens import new_secret_id

LOGIN_NONCE_SECONDS = 3600


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path only (never another site: `//evil`, `/\\evil`)."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value and value.isprintable():
        return value
    return "/console"


def _login_page(request: web.Request, status: int = 200, error: str | None = None) -> web.Response:
    console = request.app[CONSOLE]
    nonce = request.cookies.get(console.login_cookie)
    fresh = not nonce or len(nonce) > 100
    if fresh:
        nonce = new_secret_id()
    assert nonce is not None
    response = render(request, "login.html.j2", status, login_csrf=console.signer.login_csrf(nonce),
                      next=safe_next(request.query.get("next")), error=error)
    if fresh:
        console.set_cookie(response, console.login_cookie, nonce, max_age=LOGIN_NONCE_SECONDS)
    return response


async def login_form(request: web.Request) -> web.StreamResponse:
    if await current_session(request) is not None:
        return redirect(safe_next(request.query.get("next")))
    return _login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    try:
        form = await read_form(request)
    except FormUnreadable:
        return unreadable_form(request)
    token = form.get(CSRF_FIELD)
    if not console.signer.login_csrf_ok(request.cookies.get(console.login_cookie),
                                        token if isinstance(token, str) else None):
        return _login_page(request, 403, "The login form expired (its CSRF token is missing or wrong); try again.")
    credential = form_text(form, "key", 512) or ""
    outcome = await console.sessions.identity.login(credential)
    if isinstance(outcome, LoginRefused):
        await console.sessions.refused(outcome, request.remote)
        return _login_page(request, 401, f"Login refused: {outcome.message}.")
    # A new login ends the session this browser had: a copy of its old cookie opens nothing.
    if (previous := await current_session(request)) is not None:
        await console.sessions.end(previous)
    _session, cookie = await console.sessions.open(outcome, request.remote)
    response = redirect(safe_next(form_text(form, "next")))
    console.set_cookie(response, console.session_cookie, cookie)
    console.clear_cookie(response, console.login_cookie)
    return response


@action()
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    console = request.app[CONSOLE]
    await console.sessions.end(session)
    response = web.Response(status=303, headers={**HEADERS, "Location": "/console/login"})
    console.clear_cookie(response, console.session_cookie)
    return response
