"""The operator console: server-rendered pages behind an operator login (see README,
"Operator console"). `setup(app, settings)` is the one call that wires it into the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..api.deps import SERVICES
from ..audit import ChainKey
from ..config import Settings
from ..startup import ensure_session_secret
from . import views_audit, views_auth, views_jobs, views_levels, views_mailbox, views_runs
from .audit_check import AuditCheck
from .decision_metrics import observe_decision
from .identity import KeyLogin
from .pages import CONSOLE, HEADERS, Console, cookie_secure, environment, redirect
from .sessions import Sessions
from .tokens import Signer

log = logging.getLogger(__name__)
_CSS = (Path(__file__).with_name("static") / "console.css").read_bytes()  # one small file, read once


def setup(app: web.Application, settings: Settings) -> None:
    """Routes now; the console itself once the app's services exist (after `_lifecycle` started them)."""
    settings = ensure_session_secret(settings)
    assert settings.session_secret is not None
    signer = Signer(settings.session_secret.get_secret_value())
    secure = cookie_secure(settings.effective_public_url)
    if not secure:
        log.warning("the console's session cookie is not Secure: %s is plain http on this machine (development)",
                    settings.effective_public_url)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        identity = KeyLogin(services.keys, services.auth.settings.api_token, services.auth.settings.operator_scopes,
                            signer)
        assert services.settings.audit_key is not None  # ensure_audit_key, in create_app
        app[CONSOLE] = Console(services, signer, Sessions(services.store, signer, identity), secure, environment(),
                               AuditCheck(services.store, ChainKey(services.settings.audit_key.get_secret_value())))
        services.runs.on_approval_changed.append(observe_decision)
        yield
        # Before the store closes (this context ends before the app's): failed logins left out, said now.
        await app[CONSOLE].sessions.failure_summaries.flush(everything=True)

    app.cleanup_ctx.append(lifecycle)
    add = app.router
    add.add_get("/console", views_runs.runs_list)
    add.add_get("/console/", _to_console)
    add.add_get("/console/login", views_auth.login_form)
    add.add_post("/console/login", views_auth.login)
    add.add_post("/console/logout", views_auth.logout)
    add.add_get("/console/runs/{run_id}", views_runs.run_page)
    add.add_post("/console/runs/{run_id}/cancel", views_runs.cancel)
    add.add_get("/console/jobs", views_jobs.dead_letters)
    add.add_post("/console/jobs/{job_id}/retry", views_jobs.retry)
    add.add_get("/console/audit", views_audit.audit_log)
    add.add_get("/console/audit/export", views_audit.export)
    add.add_get("/console/levels", views_levels.service_levels)
    if settings.capture_mailbox_dir is not None:
        add.add_get("/console/mailbox", views_mailbox.mailbox)
    add.add_get("/console/static/console.css", _stylesheet)


async def _to_console(request: web.Request) -> web.Response:
    return redirect("/console")


async def _stylesheet(request: web.Request) -> web.Response:
    return web.Response(body=_CSS, content_type="text/css",
                        headers={**HEADERS, "Cache-Control": "max-age=3600"})
