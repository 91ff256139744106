"""The one place where adapters are wired together: builds the aiohttp application, its
store, job queue and workers, and starts and stops them with the app."""

from __future__ import annotations

import gc
import logging
import os
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from .agent.knowledge import EmbeddingSettings, KnowledgeError, LazyKnowledgeBase, RetrievalMode
from .agent.llm import LlmSettings, build_llm, describe
from .agent.runner import AgentRunner
from .agent.tools import ToolRegistry, load_plugins
from .agent.workflow import AgentWorkflow
from .api.auth import ApiAuth
from .api.deps import SERVICES, Services
from .api.errors import ApiError, error_middleware
from .api.routes import add_routes
from .audit import AuditKeyError, ChainKey
from .callbacks import Callbacks
from .config import Settings
from .decisions import SEND_EMAIL_JOB, Decisions
from .foreground import Foreground
from .jobs import JobQueue, Worker
from .mail.delivery import EmailDelivery
from .mail.smtp import SmtpTransport
from .runs import AGENT_JOB, CALLBACK_JOB, Runs
from .store.db import Store
from .store.migrate import check_migrated, upgrade
from .teams.channel import TeamsChannel, TeamsNotConfigured

TEAMS: web.AppKey[TeamsChannel | None] = web.AppKey("teams")

log = logging.getLogger(__name__)


def ensure_api_token(settings: Settings) -> Settings:
    """With no API credential configured, use (or make) a token kept in the data directory.

    The token is written to a file readable only by the owner and never logged: the log
    says where it is."""
    if settings.api_token or settings.webhook_secret:
        return settings
    path = settings.data_dir / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    log.warning("no COUNTERSIGN_API_TOKEN or COUNTERSIGN_WEBHOOK_SECRET set; using the token in %s", path.resolve())
    return settings.model_copy(update={"api_token": SecretStr(path.read_text().strip())})


AUDIT_KEY_FILE = "audit-key"


def ensure_audit_key(settings: Settings, *, create: bool = True) -> Settings:
    """The key that chains the audit log: COUNTERSIGN_AUDIT_KEY, or on SQLite (embedded
    defaults) a key generated once into the data directory, readable only by the owner.

    PostgreSQL without the setting is refused: several replicas write one chain and must
    share the key, and a key generated on one machine would not be known to the others."""
    if settings.audit_key is None:
        if not settings.is_sqlite:
            raise AuditKeyError(
                "COUNTERSIGN_AUDIT_KEY is required with PostgreSQL (the same value on every replica, kept outside "
                "the database): python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        path = settings.data_dir / AUDIT_KEY_FILE
        if not path.exists():
            if not create:
                raise AuditKeyError(f"no COUNTERSIGN_AUDIT_KEY and no {path}: cannot check the keyed audit chain")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            log.warning("no COUNTERSIGN_AUDIT_KEY set; generated the audit chain's key into %s", path.resolve())
        settings = settings.model_copy(update={"audit_key": SecretStr(path.read_text().strip())})
    assert settings.audit_key is not None
    ChainKey(settings.audit_key.get_secret_value())  # too short: refused here, at start
    return settings


def audit_key_of(settings: Settings) -> str | None:
    return settings.audit_key.get_secret_value() if settings.audit_key else None


async def prepare_database(settings: Settings, store: Store) -> None:
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if settings.auto_migrate:
            await upgrade(store.writer_engine)
    await check_migrated(store.writer_engine)


def create_app(settings: Settings, *, run_workers: bool = True) -> web.Application:
    settings = ensure_audit_key(ensure_api_token(settings))
    check_teams_settings(settings)
    workflow = build_workflow(settings)
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings, workflow, run_workers))
    add_routes(app)
    app.router.add_post("/api/messages", _bot_messages)
    return app


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


def build_workflow(settings: Settings) -> AgentWorkflow:
    """The agent, checked at start: a bad tool list, plugin or knowledge setting stops `serve`."""
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
    return AgentWorkflow(build_llm(llm), registry, knowledge,
                         max_revisions=settings.agent_max_revisions, max_llm_calls=settings.agent_max_llm_calls,
                         llm_concurrency=settings.llm_concurrency)


def build_agent(settings: Settings, store: Store, runs: Runs, workflow: AgentWorkflow) -> AgentRunner:
    # One step may make every LLM call of the run's budget (a model that keeps searching);
    # the worker renews the step's lease while it runs, so it is never taken over and
    # repeated while alive, and is taken over one lease after its process dies.
    return AgentRunner(store, runs, workflow,
                       timeout_seconds=settings.llm_timeout_seconds * settings.agent_max_llm_calls + 60)


def check_teams_settings(settings: Settings) -> None:
    """Refuse to start when Teams is asked for but cannot be authenticated."""
    wants_teams = bool(settings.microsoft_app_password) or any(
        p.get("teams_channel") or p.get("teams_chat") for p in settings.policies.values())
    if wants_teams and not settings.teams_enabled:
        raise TeamsNotConfigured(
            "Teams is configured (a password or a policy routes to Teams) but MicrosoftAppId is empty; set it, "
            "or COUNTERSIGN_BOT_INSECURE_NO_AUTH=true for local development only")


async def _bot_messages(request: web.Request) -> web.StreamResponse:
    teams = request.app[TEAMS]
    if teams is None:
        raise ApiError(503, "teams_not_configured", "the Teams channel is not configured: set MicrosoftAppId")
    return await teams.endpoint.handle(request)


async def _lifecycle(
    app: web.Application, settings: Settings, workflow: AgentWorkflow, run_workers: bool
) -> AsyncIterator[None]:
    store = Store.from_url(settings.effective_database_url, batch_max=settings.write_batch_max,
                           audit_key=audit_key_of(settings))
    try:
        await prepare_database(settings, store)
        await store.key_audit_chain()
    except BaseException:
        await store.close()
        raise
    await store.start()
    foreground = Foreground(max_defer_seconds=settings.job_defer_to_requests_seconds)
    store.foreground = foreground
    jobs = JobQueue(store, max_attempts=settings.job_max_attempts, lease_seconds=settings.job_lease_seconds,
                    backoff_base=settings.job_backoff_base_seconds, backoff_max=settings.job_backoff_max_seconds)
    runs = Runs(store, jobs, mail_from=settings.mail_from, mail_reply_to=settings.mail_reply_to)
    decisions = Decisions(store, jobs, runs, settings.message_id_domain, mail_from=settings.mail_from,
                          mail_reply_to=settings.mail_reply_to)
    transport = SmtpTransport(settings)
    http = aiohttp.ClientSession()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    jobs.register(SEND_EMAIL_JOB, EmailDelivery(store, runs, transport, sender=settings.mail_from,
                                                reply_to=settings.mail_reply_to).handler())
    agent = build_agent(settings, store, runs, workflow)
    jobs.register(AGENT_JOB, agent.handler())
    runs.on_gated_outcome = agent.on_gated_outcome
    jobs.register(CALLBACK_JOB, Callbacks(runs, http, secret=secret, public_url=settings.effective_public_url,
                                          timeout=settings.callback_timeout_seconds).handler())
    app[SERVICES] = Services(
        settings=settings, store=store, jobs=jobs, runs=runs, decisions=decisions,
        auth=ApiAuth(settings.api_token.get_secret_value() if settings.api_token else None, secret,
                     settings.signature_tolerance_seconds),
        foreground=foreground,
    )
    teams = (TeamsChannel(settings, store, jobs, runs, decisions, http, foreground=foreground)
             if settings.teams_enabled else None)
    app[TEAMS] = teams
    worker = Worker(jobs, concurrency=settings.worker_concurrency, poll_seconds=settings.job_poll_seconds,
                    timeout_seconds=settings.job_timeout_seconds, foreground=foreground)
    if run_workers and settings.worker_concurrency > 0:
        worker.start()
    # Everything built so far lives as long as the process: keep it out of the collector's
    # full passes, which otherwise stall the event loop for ~100 ms (bench/RESULTS.md).
    gc.freeze()
    try:
        yield
    finally:
        await worker.stop()
        if teams is not None:
            await teams.close()
        await transport.close()
        await http.close()
        await store.close()
