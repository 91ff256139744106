"""What every console page shares: the console's state on the app, rendering (Jinja2 with
autoescape), the session and CSRF guards, and the headers every answer carries."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from ..api.deps import Services
from ..scopes import Scope
from .audit_check import AuditCheck
from .escaping import shown
from .sessions import Session, Sessions
from .tokens import Signer

TEMPLATES = Path(__file__).with_name("templates")
SESSION_COOKIE = "countersign_console"
LOGIN_COOKIE = "countersign_console_login"
CSRF_FIELD = "csrf"
# Pages hold customer emails and drafts: nothing is cached, framed, sent as a referrer or run
# as script; only our stylesheet and forms back to us.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guarded = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def cookie_secure(public_url: str) -> bool:
    """Secure cookies, except where the service is reached over plain http on this machine
    (development: `countersign serve` on embedded defaults, http://127.0.0.1:3978). A plain
    http public URL elsewhere still gets Secure cookies: a browser then keeps no session,
    which is right, since the key and the session would cross the network in clear."""
    parts = urlsplit(public_url)
    if parts.scheme != "http":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@dataclass
class Console:
    services: Services
    signer: Signer
    sessions: Sessions
    secure: bool
    templates: jinja2.Environment
    audit: AuditCheck

    @property
    def session_cookie(self) -> str:
        # __Host-: only ever set by this origin, over https, for the whole path (no Domain).
        return f"__Host-{SESSION_COOKIE}" if self.secure else SESSION_COOKIE

    @property
    def login_cookie(self) -> str:
        return f"__Host-{LOGIN_COOKIE}" if self.secure else LOGIN_COOKIE

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, path="/", httponly=True, secure=self.secure, samesite="Strict",
                            max_age=max_age)

    def clear_cookie(self, response: web.StreamResponse, name: str) -> None:
        response.del_cookie(name, path="/", secure=self.secure, httponly=True, samesite="Strict")


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
SESSION_KEY: web.RequestKey[Session] = web.RequestKey("console.session", Session)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["shown"] = shown
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    console = request.app[CONSOLE]
    session: Session | None = request.get(SESSION_KEY)
    html = console.templates.get_template(template).render(
        session=session, csrf=console.signer.csrf(session.id) if session else "", Scope=Scope,
        mailbox=console.services.settings.capture_mailbox_dir is not None, **context)
    return web.Response(text=html, status=status, content_type="text/html", headers=HEADERS)


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(request, "error.html.j2", status, title=title, message=message)


def login_redirect(request: web.Request) -> web.Response:
    target = request.rel_url.path_qs
    return web.Response(status=303, headers={**HEADERS, "Location": f"/console/login?next={quote(target, safe='')}"})


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


async def current_session(request: web.Request) -> Session | None:
    console = request.app[CONSOLE]
    session = await console.sessions.find(request.cookies.get(console.session_cookie))
    if session is not None:
        request[SESSION_KEY] = session
    return session


def missing_scope(request: web.Request, scope: Scope) -> web.Response:
    return error_page(request, 403, "Not allowed",
                      f"Your key lacks the scope {scope.value}, which this needs. Nothing was changed.")


def page(scope: Scope | None = None) -> Callable[[Guarded], Handler]:
    """A GET page: without a session, a redirect to the login; without `scope`, a 403 page."""
    def wrap(handler: Guarded) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await current_session(request)
            if session is None:
                return login_redirect(request)
            if scope is not None and not session.has(scope):
                return missing_scope(request, scope)
            return await handler(request, session)
        return guarded
    return wrap


class FormUnreadable(Exception):
    """The body is not a form this server can decode (its bytes, its charset)."""


async def read_form(request: web.Request) -> Any:
    """The POSTed form, read once (aiohttp keeps it); `FormUnreadable` for a body that is not
    UTF-8 or names a charset Python does not know, which would otherwise be a 500."""
    try:
        return await request.post()
    except (ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        raise FormUnreadable(str(exc)) from None


def unreadable_form(request: web.Request) -> web.Response:
    return error_page(request, 400, "Form not readable",
                      "The form could not be read (send it as UTF-8). Nothing was changed.")


def action(scope: Scope | None = None) -> Callable[[Guarded], Handler]:
    """A POST: 401 without a session, 403 without a valid CSRF token or without `scope`;
    in each case before anything is read or changed."""
    def wrap(handler: Guarded) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            session = await current_session(request)
            if session is None:
                return error_page(request, 401, "Not logged in", "Log in to the console first. Nothing was changed.")
            try:
                form = await read_form(request)
            except FormUnreadable:
                return unreadable_form(request)
            token = form.get(CSRF_FIELD)
            if not request.app[CONSOLE].signer.csrf_ok(session.id, token if isinstance(token, str) else None):
                return error_page(request, 403, "Form expired",
                                  "This form was not sent from a console page of this session (its CSRF token is "
                                  "missing or wrong). Nothing was changed: reload the page and try again.")
            if scope is not None and not session.has(scope):
                return missing_scope(request, scope)
            return await handler(request, session)
        return guarded
    return wrap


def form_text(form: Any, name: str, limit: int = 2000) -> str | None:
    value = form.get(name)
    if not isinstance(value, str):
        return None
    return value.strip()[:limit] or None
