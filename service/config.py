"""Every setting in one typed place: environment variables, optionally a TOML file.

Environment variables are `COUNTERSIGN_<NAME>`; `COUNTERSIGN_CONFIG=path.toml` adds a file
(environment wins over the file). Policies are only practical in the file.
"""

from __future__ import annotations

import enum
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .agent.knowledge import BUILTIN_CORPUS, RetrievalMode
from .business_hours import Calendar
from .policy import DEFAULT_POLICY, Policy
from .policy_config import CalendarConfig, PolicyConfig, RouteConfig, check_references, describe_error
from .policy_routes import Route, RouteMatch, RunFacts, match_route


class SmtpSecurity(str, enum.Enum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (port 465)


class BotAppType(str, enum.Enum):
    MULTI_TENANT = "MultiTenant"
    SINGLE_TENANT = "SingleTenant"
    # Accepted as a value so that start-up can say why it cannot work (no managed identity
    # support in our credential factory); `serve` refuses it.
    USER_ASSIGNED_MSI = "UserAssignedMSI"


WORKING_APP_TYPES = (BotAppType.MULTI_TENANT, BotAppType.SINGLE_TENANT)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTERSIGN_", extra="ignore", case_sensitive=False)

    # Where SQLite, generated secrets and indexes live.
    data_dir: Path = Path("./data")
    # Empty: SQLite at <data_dir>/countersign.db. PostgreSQL: postgresql+asyncpg://user@host/db
    database_url: str = ""
    # SQLite is migrated on start; PostgreSQL must be migrated with `countersign migrate`.
    auto_migrate: bool = True

    host: str = "127.0.0.1"  # the address to listen on
    port: int = 3978  # the Bot Framework samples' port
    public_url: str = ""  # base URL in links handed out; default http://host:port

    # Ops API credentials. With neither set, `serve` generates a token into the data dir.
    api_token: SecretStr | None = None
    webhook_secret: SecretStr | None = None  # signs webhook calls (v2: method, path, query, body)
    signature_tolerance_seconds: int = 300  # how old a signed request may be
    # Accept the old body-only v1 signatures for a migration period (logged as deprecated).
    webhook_accept_v1: bool = False
    # A deliberate choice: let the operator token decide on a named reviewer's behalf
    # (recorded as the token, on behalf of the reviewer). Off: only decide keys decide.
    api_token_may_decide_on_behalf: bool = False
    # Keys the audit log's hash chain (HMAC-SHA256). Keep it outside the database. Empty:
    # on SQLite, generated into <data_dir>/audit-key; on PostgreSQL `serve` refuses to start
    # (every replica must share one key).
    audit_key: SecretStr | None = None
    max_body_bytes: int = 256 * 1024  # largest request body the ops API reads
    # Slow clients (service/api/timeouts.py): a request head must arrive within this long of
    # the connection opening or going idle, and its body within this long of the head.
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0  # see http_header_timeout_seconds

    # SMTP (aiosmtplib).
    smtp_host: str = "localhost"  # the SMTP server or relay the emails go through
    smtp_port: int = 1025  # its port (587: STARTTLS, 465: TLS)
    smtp_security: SmtpSecurity = SmtpSecurity.NONE  # none | starttls | tls
    smtp_username: str | None = None  # SMTP AUTH user, if the server needs one
    smtp_password: SecretStr | None = None  # and its password
    smtp_ca_file: Path | None = None  # CA bundle to verify the server's certificate (a private CA)
    smtp_timeout_seconds: float = 30.0  # each SMTP command's time limit
    smtp_pool_size: int = 4  # SMTP connections kept open and reused
    # How long an idle pooled connection is kept (servers may drop one after 5 minutes);
    # one idle for more than 2 s is checked with NOOP before use.
    smtp_idle_seconds: float = 60.0
    mail_from: str = "Countersign <countersign@localhost>"  # From of the customer emails and review emails
    mail_reply_to: str | None = None  # Reply-To of the customer emails, if any
    message_id_domain: str = "countersign.local"  # the right-hand side of Message-IDs

    # Jobs.
    worker_concurrency: int = 8  # 0: this process runs no jobs (API only)
    # A job is taken over this long after its process died; running jobs renew it every
    # third of it (one statement per worker), so a live slow job is never run twice.
    job_lease_seconds: float = Field(default=10.0, gt=0)
    job_timeout_seconds: float = 60.0  # a job attempt's time limit (an agent step has its own)
    job_max_attempts: int = 8  # attempts before a job is dead-lettered
    job_backoff_base_seconds: float = 2.0  # first retry delay; doubles per attempt, with jitter
    job_backoff_max_seconds: float = 3600.0  # longest retry delay
    job_poll_seconds: float = Field(default=1.0, gt=0)  # an idle worker looks for new work this often
    # New jobs wait while card clicks and decisions are being answered, for at most this
    # long from the start of a burst (0: jobs never wait). See service/foreground.py.
    job_defer_to_requests_seconds: float = 1.0
    callback_timeout_seconds: float = 10.0  # a run's callback POST time limit
    # Callbacks (service/callback_policy.py): https only unless this is set (development).
    callback_allow_http: bool = False
    # Only these hosts are called when set: names ("ops.example.com", "*.example.com") or
    # addresses, which may then be private or loopback on purpose. Never link-local/metadata.
    callback_allowed_hosts: list[str] = Field(default_factory=list)
    # Signs outgoing callbacks (X-Countersign-Callback-Signature); none: `serve` generates
    # one into the data dir. Must differ from the inbound API credentials.
    callback_signing_secret: SecretStr | None = None
    # Signs the operator console's session cookies and CSRF tokens (service/console/); none:
    # `serve` generates one into the data dir. Several processes must share one.
    session_secret: SecretStr | None = None
    # A Maildir the console shows at /console/mailbox: `countersign demo` sets it to its
    # capture SMTP server's (nothing there is delivered). Unset, there is no mailbox page.
    capture_mailbox_dir: Path | None = None

    # Store: how many concurrent writes one transaction may take (group commit).
    write_batch_max: int = 256

    # Microsoft Teams through the Bot Framework. The names are the Bot Framework samples'.
    microsoft_app_id: str = Field(  # the Azure Bot's app (client) id; empty: no Teams
        "", validation_alias=AliasChoices("MicrosoftAppId", "microsoft_app_id"))
    # The Azure Bot's client secret (MicrosoftAppPassword).
    microsoft_app_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("MicrosoftAppPassword", "microsoft_app_password"))
    # MultiTenant | SingleTenant | UserAssignedMSI, as the Azure Bot is registered.
    microsoft_app_type: BotAppType = Field(
        BotAppType.MULTI_TENANT, validation_alias=AliasChoices("MicrosoftAppType", "microsoft_app_type"))
    # The bot's own tenant (SingleTenant and UserAssignedMSI).
    microsoft_app_tenant_id: str = Field(
        "", validation_alias=AliasChoices("MicrosoftAppTenantId", "microsoft_app_tenant_id"))
    # Where the keys that sign the Bot Connector's tokens are published (sovereign clouds, tests).
    bot_openid_metadata_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    # OAuth token endpoint for outgoing calls; default: login.microsoftonline.com for the app type.
    bot_token_url: str = ""
    bot_token_scope: str = "https://api.botframework.com/.default"  # scope of the outgoing calls' token
    # Microsoft Entra tenants whose users may reach the bot (decide, install, be sent cards).
    # Required when Teams is configured; SingleTenant adds MicrosoftAppTenantId by itself.
    # Environment: comma-separated ids or a JSON list.
    teams_allowed_tenants: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Body limit of /api/messages, far below max_body_bytes (see README, Microsoft Teams).
    bot_max_body_bytes: int = 64 * 1024
    # Development only: accept unauthenticated Bot Framework requests when there is no app id;
    # refuses to start unless the allowed tenants are the Agents Playground's alone.
    bot_insecure_no_auth: bool = False
    bot_key_refresh_min_seconds: float = 60.0  # an unknown key id refetches the keys at most this often
    bot_http_timeout_seconds: float = 10.0  # Bot Connector calls' time limit
    # How long after a decision the posted cards are updated for everyone (the clicker gets
    # the new card at once, in the answer to the click).
    teams_card_update_delay_seconds: float = 1.0

    # The agent (LlamaIndex). OpenAI's own variable names: OPENAI_API_KEY, OPENAI_BASE_URL.
    # With neither set, the offline drafter writes the drafts.
    openai_api_key: SecretStr | None = Field(  # OpenAI's key (or the compatible server's)
        None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    # An OpenAI-compatible server (vLLM, Ollama, a gateway) instead of OpenAI's.
    openai_base_url: str = Field("", validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))
    llm_model: str = "gpt-4o-mini"  # the model the agent asks
    llm_context_window: int = 32768  # for OpenAI-compatible servers, whose models OpenAI's table lacks
    llm_temperature: float = 0.2  # its sampling temperature
    llm_timeout_seconds: float = 60.0  # one LLM call's time limit
    llm_concurrency: int = 4  # LLM calls at once in this process
    agent_max_revisions: int = 3  # drafts per run, counting the first
    agent_max_llm_calls: int = 20  # per run: a model going round in circles stops here
    agent_tools: list[str] = Field(default_factory=list)  # empty: every registered tool
    # Tools whose calls wait for a reviewer.
    tools_requiring_human_confirmation: list[str] = Field(default_factory=lambda: ["send_customer_email"])
    agent_plugins: list[str] = Field(default_factory=list)  # "package.module:attribute" naming ToolSpecs
    # Documents the agent searches; empty: the bundled sample policies (service/agent/corpus).
    knowledge_dir: Path | None = None
    retrieval: RetrievalMode = RetrievalMode.BM25  # bm25 (offline) | openai (embeddings)
    embedding_model: str = "text-embedding-3-small"  # with retrieval = "openai"

    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR (JSON lines on stderr)

    # Named approval policies, from the TOML file's [policies.NAME] tables, checked strictly
    # (service/policy_config.py). Without a "default" table, runs get DEFAULT_POLICY (anyone).
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    # Business-hours calendars ([calendars.NAME]) that policies count their timers in.
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)
    # [[routes]]: which policy a run gets from what it says about itself, first match wins
    # (service/policy_routes.py); a route's policy wins over the one the run names.
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("teams_allowed_tenants", mode="before")
    @classmethod
    def _tenant_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return v

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> Settings:
        check_references(self.policies, self.calendars, self.routes)
        return self

    def configured_policy(self, name: str) -> Policy | None:
        """The configured policy `name` (the embedded default for "default"), or None; with
        its calendar, if it counts business hours."""
        if name in self.policies:
            return self.policies[name].to_policy(name, self.configured_calendars)
        return DEFAULT_POLICY if name == DEFAULT_POLICY.name else None

    @property
    def configured_calendars(self) -> dict[str, Calendar]:
        return {name: c.to_calendar(name) for name, c in self.calendars.items()}

    @property
    def policy_routes(self) -> tuple[Route, ...]:
        return tuple(r.to_route() for r in self.routes)

    def routed_policy(self, facts: RunFacts) -> tuple[Policy, RouteMatch] | None:
        """The configured policy of the first route that matches `facts`, and the route; None
        when none matches. Start-up checked that every route names a configured policy."""
        match = match_route(self.policy_routes, facts)
        if match is None:
            return None
        policy = self.configured_policy(match.policy)
        if policy is None:
            raise RuntimeError(f"route {match.index} names policy {match.policy!r}, which is not configured")
        return policy, match

    @property
    def effective_knowledge_dir(self) -> Path:
        return self.knowledge_dir or BUILTIN_CORPUS

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index" / self.retrieval.value

    @property
    def teams_enabled(self) -> bool:
        return bool(self.microsoft_app_id) or self.bot_insecure_no_auth

    @property
    def effective_teams_allowed_tenants(self) -> frozenset[str]:
        """The listed tenants, plus the app's own tenant for a SingleTenant app."""
        tenants = {t.strip().lower() for t in self.teams_allowed_tenants if t.strip()}
        if self.microsoft_app_type is BotAppType.SINGLE_TENANT and self.microsoft_app_tenant_id.strip():
            tenants.add(self.microsoft_app_tenant_id.strip().lower())
        return frozenset(tenants)

    @property
    def effective_bot_token_url(self) -> str:
        if self.bot_token_url:
            return self.bot_token_url
        tenant = self.microsoft_app_tenant_id if self.microsoft_app_type is BotAppType.SINGLE_TENANT else "botframework.com"
        return f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'countersign.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("COUNTERSIGN_CONFIG")
        if toml_path:
            if not Path(toml_path).is_file():
                raise FileNotFoundError(f"COUNTERSIGN_CONFIG points at {toml_path!r}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


class SettingsError(Exception):
    """Settings that cannot be used: `lines` says what is wrong, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def _section_source(section: str) -> str:
    # Where [policies.*] (or calendars, routes) came from, for the error message: the
    # environment wins over the file.
    variable = f"COUNTERSIGN_{section.upper()}"
    if any(k.casefold() == variable.casefold() for k in os.environ):
        return variable
    return os.environ.get("COUNTERSIGN_CONFIG") or "settings"


def load_settings(**values: Any) -> Settings:
    """`Settings(**values)`, or `SettingsError` with one line per problem, each naming where
    it is (for a policy: the file, the policy and the key)."""
    try:
        return Settings(**values)
    except FileNotFoundError as exc:  # COUNTERSIGN_CONFIG names no file
        raise SettingsError([str(exc)]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{os.environ.get('COUNTERSIGN_CONFIG')}: not valid TOML: {exc}"]) from None
    except ValidationError as exc:
        def source(section: str) -> str:
            return "settings" if section in values else _section_source(section)

        lines = []
        for err in exc.errors(include_url=False):
            described = describe_error(source, err)
            if described is None:
                where = ".".join(str(p) for p in err["loc"]) or "settings"
                described = [f"setting {where}: {err['msg']}"]
            lines.extend(described)
        raise SettingsError(lines) from None
