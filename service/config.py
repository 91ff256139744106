"""Every setting in one typed place: environment variables, optionally a TOML file.

Environment variables are `COUNTERSIGN_<NAME>`; `COUNTERSIGN_CONFIG=path.toml` adds a file
(environment wins over the file). Policies are only practical in the file.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from .agent.knowledge import BUILTIN_CORPUS, RetrievalMode


class SmtpSecurity(str, enum.Enum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (port 465)


class BotAppType(str, enum.Enum):
    MULTI_TENANT = "MultiTenant"
    SINGLE_TENANT = "SingleTenant"
    USER_ASSIGNED_MSI = "UserAssignedMSI"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COUNTERSIGN_", extra="ignore", case_sensitive=False)

    # Where SQLite, generated secrets and indexes live.
    data_dir: Path = Path("./data")
    # Empty: SQLite at <data_dir>/countersign.db. PostgreSQL: postgresql+asyncpg://user@host/db
    database_url: str = ""
    # SQLite is migrated on start; PostgreSQL must be migrated with `countersign migrate`.
    auto_migrate: bool = True

    host: str = "127.0.0.1"
    port: int = 3978  # the Bot Framework samples' port
    public_url: str = ""  # base URL in links handed out; default http://host:port

    # Ops API credentials. With neither set, `serve` generates a token into the data dir.
    api_token: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    signature_tolerance_seconds: int = 300
    # Keys the audit log's hash chain (HMAC-SHA256). Keep it outside the database. Empty:
    # on SQLite, generated into <data_dir>/audit-key; on PostgreSQL `serve` refuses to start
    # (every replica must share one key).
    audit_key: SecretStr | None = None
    max_body_bytes: int = 256 * 1024

    # SMTP (aiosmtplib).
    smtp_host: str = "localhost"
    smtp_port: int = 1025
    smtp_security: SmtpSecurity = SmtpSecurity.NONE
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ca_file: Path | None = None
    smtp_timeout_seconds: float = 30.0
    smtp_pool_size: int = 4
    # How long an idle pooled connection is kept (servers may drop one after 5 minutes);
    # one idle for more than 2 s is checked with NOOP before use.
    smtp_idle_seconds: float = 60.0
    mail_from: str = "Countersign <countersign@localhost>"
    mail_reply_to: str | None = None
    message_id_domain: str = "countersign.local"

    # Jobs.
    worker_concurrency: int = 8  # 0: this process runs no jobs (API only)
    job_lease_seconds: float = 120.0
    job_timeout_seconds: float = 60.0
    job_max_attempts: int = 8
    job_backoff_base_seconds: float = 2.0
    job_backoff_max_seconds: float = 3600.0
    job_poll_seconds: float = 1.0
    # New jobs wait while card clicks and decisions are being answered, for at most this
    # long from the start of a burst (0: jobs never wait). See service/foreground.py.
    job_defer_to_requests_seconds: float = 1.0
    callback_timeout_seconds: float = 10.0

    # Store: how many concurrent writes one transaction may take (group commit).
    write_batch_max: int = 256

    # Microsoft Teams through the Bot Framework. The names are the Bot Framework samples'.
    microsoft_app_id: str = Field("", validation_alias=AliasChoices("MicrosoftAppId", "microsoft_app_id"))
    microsoft_app_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("MicrosoftAppPassword", "microsoft_app_password"))
    microsoft_app_type: BotAppType = Field(
        BotAppType.MULTI_TENANT, validation_alias=AliasChoices("MicrosoftAppType", "microsoft_app_type"))
    microsoft_app_tenant_id: str = Field(
        "", validation_alias=AliasChoices("MicrosoftAppTenantId", "microsoft_app_tenant_id"))
    # Where the keys that sign the Bot Connector's tokens are published (sovereign clouds, tests).
    bot_openid_metadata_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    # OAuth token endpoint for outgoing calls; default: login.microsoftonline.com for the app type.
    bot_token_url: str = ""
    bot_token_scope: str = "https://api.botframework.com/.default"
    # Development only: accept unauthenticated Bot Framework requests when there is no app id.
    bot_insecure_no_auth: bool = False
    bot_key_refresh_min_seconds: float = 60.0  # an unknown key id refetches the keys at most this often
    bot_http_timeout_seconds: float = 10.0
    # How long after a decision the posted cards are updated for everyone (the clicker gets
    # the new card at once, in the answer to the click).
    teams_card_update_delay_seconds: float = 1.0

    # The agent (LlamaIndex). OpenAI's own variable names: OPENAI_API_KEY, OPENAI_BASE_URL.
    # With neither set, the offline drafter writes the drafts.
    openai_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    openai_base_url: str = Field("", validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"))
    llm_model: str = "gpt-4o-mini"
    llm_context_window: int = 32768  # for OpenAI-compatible servers, whose models OpenAI's table lacks
    llm_temperature: float = 0.2
    llm_timeout_seconds: float = 60.0
    llm_concurrency: int = 4  # LLM calls at once in this process
    agent_max_revisions: int = 3  # drafts per run, counting the first
    agent_max_llm_calls: int = 20  # per run: a model going round in circles stops here
    agent_tools: list[str] = Field(default_factory=list)  # empty: every registered tool
    tools_requiring_human_confirmation: list[str] = Field(default_factory=lambda: ["send_customer_email"])
    agent_plugins: list[str] = Field(default_factory=list)  # "package.module:attribute" naming ToolSpecs
    # Documents the agent searches; empty: the bundled sample policies (service/agent/corpus).
    knowledge_dir: Path | None = None
    retrieval: RetrievalMode = RetrievalMode.BM25
    embedding_model: str = "text-embedding-3-small"  # with retrieval = "openai"

    log_level: str = "INFO"

    # Named approval policies, from the TOML file's [policies.NAME] tables.
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

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
