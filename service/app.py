"""The one place where adapters are wired together: builds the aiohttp application, its
store, job queue and workers, and starts and stops them with the app."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from . import console
from .agent.knowledge import EmbeddingSettings, KnowledgeError, LazyKnowledgeBase, RetrievalMode
from .agent.llm import LlmSettings, describe
from .agent.loader import AgentConfig, LazyAgent
from .agent.tools import ToolRegistry, load_plugins
from .api.auth import ApiAuth, AuthSettings
from .api.deps import SERVICES, Services
from .api.errors import ApiError, error_middleware
from .api.routes import add_routes
from .api.timeouts import body_deadline
from .callback_policy import CallbackConfigError, CallbackPolicy
from .callbacks import Callbacks
from .config import WORKING_APP_TYPES, Settings
from .decisions import SEND_EMAIL_JOB, Decisions
from .email_review.channel import EmailReviewChannel
from .email_review.handlers import ROUTE as REVIEW_ROUTE
from .email_review.handlers import ReviewPages
from .foreground import Foreground
from .jobs import JobQueue, Worker
from .keys import ApiKeys, ReplayGuard
from .loop_lag import watch_loop_lag
from .mail.delivery import EmailDelivery
from .mail.smtp import SmtpTransport
from .private_files import ensure_private_dir
from .runs import AGENT_JOB, CALLBACK_JOB, Runs
from .scopes import OPERATOR_SCOPES, Scope
from .sqlite_lock import SqliteServeLock
from .startup import (
    audit_key_of,
    ensure_api_token,
    ensure_audit_key,
    ensure_callback_secret,
    prepare_database,
    sqlite_file,
)
from .store.db import Store, utcnow
from .teams import TeamsNotConfigured
from .teams.playground import insecure_tenants_problem
from .timers import TIMER_LANE, TIMER_LANE_SLOTS, ApprovalTimers

if TYPE_CHECKING:
    from .agent.workflow import AgentWorkflow  # LlamaIndex: loaded by the first agent step (agent/loader.py)
    from .teams.channel import TeamsChannel  # the Bot Framework SDK: loaded only when Teams is configured

TEAMS: web.AppKey[TeamsChannel | None] = web.AppKey("teams")
REVIEW_PAGES: web.AppKey[ReviewPages] = web.AppKey("review_pages", ReviewPages)
CALLBACKS: web.AppKey[Callbacks] = web.AppKey("callbacks", Callbacks)

log = logging.getLogger(__name__)


def callback_policy(settings: Settings) -> CallbackPolicy:
    """The callback rules, checked at start: `serve` refuses settings that cannot work."""
    signing = settings.callback_signing_secret.get_secret_value() if settings.callback_signing_secret else None
    inbound = [s.get_secret_value() for s in (settings.webhook_secret, settings.api_token) if s]
    if signing is not None and signing in inbound:
        raise CallbackConfigError(
            "COUNTERSIGN_CALLBACK_SIGNING_SECRET must differ from COUNTERSIGN_WEBHOOK_SECRET and "
            "COUNTERSIGN_API_TOKEN: a callback receiver would hold a key the ops API accepts")
    return CallbackPolicy.from_settings(allow_http=settings.callback_allow_http,
                                        allowed_hosts=settings.callback_allowed_hosts)


def create_app(settings: Settings, *, run_workers: bool = True,
               clock: Callable[[], datetime] = utcnow) -> web.Application:
    """`clock`: every transaction's `now` and the workers' due checks (tests move time)."""
    ensure_private_dir(settings.data_dir)  # 0700, or tightened with a warning (service/private_files.py)
    settings = ensure_audit_key(ensure_callback_secret(ensure_api_token(settings)))
    check_teams_settings(settings)
    callbacks_allowed = callback_policy(settings)
    agent = agent_config(settings)
    app = web.Application(client_max_size=settings.max_body_bytes,
                          middlewares=[error_middleware, body_deadline(settings.http_body_timeout_seconds)])
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings, agent, callbacks_allowed, run_workers, clock))
    add_routes(app)
    app.router.add_post("/api/messages", _bot_messages)
    app.router.add_get(REVIEW_ROUTE, _review_page)
    app.router.add_post(REVIEW_ROUTE, _review_form)
    console.setup(app, settings)  # the operator console (service/console/): its routes, session secret, hooks
    return app


def auth_settings(settings: Settings) -> AuthSettings:
    operator_scopes = OPERATOR_SCOPES
    if settings.api_token_may_decide_on_behalf:
        operator_scopes = operator_scopes | {Scope.DECIDE_ON_BEHALF}
    return AuthSettings(
        api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        operator_scopes=operator_scopes,
        webhook_secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        tolerance_seconds=settings.signature_tolerance_seconds, accept_v1=settings.webhook_accept_v1,
    )


def llm_settings(settings: Settings) -> LlmSettings:
    return LlmSettings(
        model=settings.llm_model,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url or None, timeout_seconds=settings.llm_timeout_seconds,
        context_window=settings.llm_context_window, temperature=settings.llm_temperature,
    )


def embedding_settings(settings: Settings) -> EmbeddingSettings | None:
    if settings.retrieval is not RetrievalMode.OPENAI:
        return None
    if not (settings.openai_api_key or settings.openai_base_url):
        raise KnowledgeError("COUNTERSIGN_RETRIEVAL=openai needs OPENAI_API_KEY or OPENAI_BASE_URL")
    return EmbeddingSettings(
        model=settings.embedding_model,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed",
        api_base=settings.openai_base_url or None,
    )


def agent_config(settings: Settings) -> AgentConfig:
    """The agent, checked at start: a bad tool list, plugin or knowledge setting stops `serve`.
    Nothing of LlamaIndex is imported: the first agent step builds the agent in a thread."""
    if not settings.effective_knowledge_dir.is_dir():
        raise KnowledgeError(f"COUNTERSIGN_KNOWLEDGE_DIR {settings.effective_knowledge_dir} is not a directory")
    embedding_settings(settings)  # fail at start, not at the first draft
    registry = ToolRegistry.build(load_plugins(settings.agent_plugins), enabled=settings.agent_tools,
                                  requiring_confirmation=settings.tools_requiring_human_confirmation)
    llm = llm_settings(settings)
    log.info("agent drafts with %s; knowledge from %s (%s)", describe(llm), settings.effective_knowledge_dir,
             settings.retrieval.value)
    knowledge = LazyKnowledgeBase(settings.effective_knowledge_dir, settings.index_dir, settings.retrieval,
                                  embedding=embedding_settings(settings))
    return AgentConfig(tools=registry, llm=llm, knowledge=knowledge, max_revisions=settings.agent_max_revisions,
                       max_llm_calls=settings.agent_max_llm_calls, llm_concurrency=settings.llm_concurrency)


def build_workflow(settings: Settings) -> AgentWorkflow:
    """The agent's workflow, built now (blocking: seconds of imports; benchmarks and tools)."""
    return agent_config(settings).build_workflow()


def build_agent(settings: Settings, store: Store, runs: Runs, agent: AgentConfig) -> LazyAgent:
    # One step may make every LLM call of the run's budget (a model that keeps searching);
    # the worker renews the step's lease while it runs, so it is never taken over and
    # repeated while alive, and is taken over one lease after its process dies.
    return LazyAgent(store, runs, agent, route=settings.routed_policy,
                     timeout_seconds=settings.llm_timeout_seconds * settings.agent_max_llm_calls + 60)


def check_teams_settings(settings: Settings) -> None:
    """Refuse to start when Teams is asked for but cannot be authenticated."""
    wants_teams = bool(settings.microsoft_app_password) or any(
        p.teams_channel or p.teams_chat for p in settings.policies.values())
    if wants_teams and not settings.teams_enabled:
        raise TeamsNotConfigured(
            "Teams is configured (a password or a policy routes to Teams) but MicrosoftAppId is empty; set it, "
            "or COUNTERSIGN_BOT_INSECURE_NO_AUTH=true for local development only")
    if not settings.teams_enabled:
        return
    if settings.microsoft_app_type not in WORKING_APP_TYPES:
        raise TeamsNotConfigured(
            f"MicrosoftAppType={settings.microsoft_app_type.value} is not supported (no managed identity "
            f"credentials here); use one of: {', '.join(t.value for t in WORKING_APP_TYPES)}")
    # The development no-auth mode needs the list too: a tenant is still named by every
    # activity, and nothing from an unlisted one is stored or decided.
    if not settings.effective_teams_allowed_tenants:
        raise TeamsNotConfigured(
            "Teams is configured but COUNTERSIGN_TEAMS_ALLOWED_TENANTS is empty: list the Microsoft Entra tenant "
            "ids whose users may use the bot (a SingleTenant app allows MicrosoftAppTenantId without listing it)")
    if not settings.microsoft_app_id and (problem := insecure_tenants_problem(settings.effective_teams_allowed_tenants)):
        raise TeamsNotConfigured(problem)


async def _bot_messages(request: web.Request) -> web.StreamResponse:
    teams = request.app[TEAMS]
    if teams is None:
        raise ApiError(503, "teams_not_configured", "the Teams channel is not configured: set MicrosoftAppId")
    return await teams.endpoint.handle(request)


async def _review_page(request: web.Request) -> web.StreamResponse:
    return await request.app[REVIEW_PAGES].get(request)


async def _review_form(request: web.Request) -> web.StreamResponse:
    return await request.app[REVIEW_PAGES].post(request)


async def _lifecycle(
    app: web.Application, settings: Settings, agent_settings: AgentConfig, callbacks_allowed: CallbackPolicy,
    run_workers: bool, clock: Callable[[], datetime],
) -> AsyncIterator[None]:
    database = sqlite_file(settings.effective_database_url) if settings.is_sqlite else None
    serve_lock = SqliteServeLock(database) if database is not None else None
    if serve_lock is not None:
        ensure_private_dir(settings.data_dir)
        serve_lock.acquire()  # DatabaseInUse: another serve has this file
    store = Store.from_url(settings.effective_database_url, batch_max=settings.write_batch_max,
                           audit_key=audit_key_of(settings), clock=clock)
    try:
        await prepare_database(settings, store)
        await store.key_audit_chain()
    except BaseException:
        await store.close()
        if serve_lock is not None:
            serve_lock.release()
        raise
    await store.start()
    foreground = Foreground(max_defer_seconds=settings.job_defer_to_requests_seconds)
    store.foreground = foreground
    jobs = JobQueue(store, max_attempts=settings.job_max_attempts, lease_seconds=settings.job_lease_seconds,
                    backoff_base=settings.job_backoff_base_seconds, backoff_max=settings.job_backoff_max_seconds)
    runs = Runs(store, jobs, mail_from=settings.mail_from, mail_reply_to=settings.mail_reply_to)
    decisions = Decisions(store, jobs, runs, settings.message_id_domain, mail_from=settings.mail_from,
                          mail_reply_to=settings.mail_reply_to)
    timers = ApprovalTimers(jobs, runs, decisions)
    timers.register()  # reminders, escalation, expiry; reviewer channels subscribe below
    transport = SmtpTransport(settings)
    http = aiohttp.ClientSession()
    jobs.register(SEND_EMAIL_JOB, EmailDelivery(store, runs, transport, sender=settings.mail_from,
                                                reply_to=settings.mail_reply_to).handler())
    agent = build_agent(settings, store, runs, agent_settings)
    jobs.register(AGENT_JOB, agent.handler())
    runs.on_gated_outcome = agent.on_gated_outcome
    assert settings.callback_signing_secret is not None  # ensure_callback_secret
    callbacks = Callbacks(runs, callbacks_allowed, secret=settings.callback_signing_secret.get_secret_value(),
                          public_url=settings.effective_public_url, timeout=settings.callback_timeout_seconds)
    jobs.register(CALLBACK_JOB, callbacks.handler())
    app[CALLBACKS] = callbacks
    keys = ApiKeys(store)
    app[SERVICES] = Services(
        settings=settings, store=store, jobs=jobs, runs=runs, decisions=decisions,
        auth=ApiAuth(auth_settings(settings), keys, ReplayGuard(store)),
        keys=keys, foreground=foreground, callback_policy=callbacks_allowed,
    )
    teams = None
    if settings.teams_enabled:
        # The SDK's imports (~0.5 s) run here, on the loop but before the worker starts: no
        # lease is held yet.
        from .teams.channel import TeamsChannel

        teams = TeamsChannel(settings, store, jobs, runs, decisions, http, foreground=foreground)
    app[TEAMS] = teams
    if teams is not None:
        timers.on_reminder.append(teams.notices.on_reminder)
        timers.on_escalation.append(teams.notices.on_escalation)
    email_review = EmailReviewChannel(store, jobs, transport, sender=settings.mail_from,
                                      public_url=settings.effective_public_url,
                                      message_id_domain=settings.message_id_domain)
    email_review.register()
    runs.on_approval_created.append(email_review.on_approval_created)
    runs.on_reviewers_added.append(email_review.on_reviewers_added)
    timers.on_reminder.append(email_review.on_reminder)
    if teams is not None:
        teams.cards.on_post_failed.append(email_review.on_teams_post_failed)
    app[REVIEW_PAGES] = ReviewPages(store, decisions, foreground, settings.effective_public_url,
                                    email_review.send_code)
    worker = Worker(jobs, concurrency=settings.worker_concurrency, poll_seconds=settings.job_poll_seconds,
                    lanes={TIMER_LANE: TIMER_LANE_SLOTS},
                    timeout_seconds=settings.job_timeout_seconds, foreground=foreground)
    if run_workers and settings.worker_concurrency > 0:
        worker.start()
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall the event loop for ~100 ms (bench/RESULTS.md).
    gc.freeze()
    lag_watch = asyncio.create_task(watch_loop_lag(), name="loop-lag")
    try:
        yield
    finally:
        lag_watch.cancel()
        await worker.stop()
        # Refused attempts left out of the audit log, their window over or not, are said now.
        await decisions.refusal_summaries.flush(everything=True)
        await app[SERVICES].auth.refusal_summaries.flush(everything=True)
        if teams is not None:
            await teams.close()
        await transport.close()
        await http.close()
        await store.close()
        if serve_lock is not None:
            serve_lock.release()
