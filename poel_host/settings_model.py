"""The settings model: every variable the host reads, its default, its bounds and its
checks, and the values derived from them (:class:`Settings`).

Reading them, with one error that names every bad variable, is :mod:`poel_host.settings`,
which the rest of the code imports :class:`Settings` from. Kept apart so that the model
reads as the list of what the host can be told.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from poel_host.dsn import looks_like_transaction_pooler, redact_dsn
from poel_host.settings_dashboard import DashboardSettings, comma_list
from poel_host.settings_retention import RetentionSettings
from poel_host.storable import INT4_MAX

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SECRET_FIELDS = {
    "database_url",
    "supabase_service_role_key",
    "local_database_url",
    "dashboard_token",
}
# Upper bounds: each number ends up in SQL (intervals, statement_timeout) or a timer, where
# a larger one fails at run time ("interval out of range", "Value exceeds integer range")
# instead of at start-up.
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
_YEAR_MS = 366 * _DAY_MS
_JSONB_MAX_BYTES = 255 * 1024 * 1024  # jsonb's own limit


class Settings(BaseSettings, DashboardSettings, RetentionSettings):
    """Everything the host can be told. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL), validation_alias="DATABASE_URL"
    )
    supabase_url: str | None = Field(default=None, validation_alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    env: Literal["development", "production"] = Field(
        default="development", validation_alias="POEL_ENV"
    )
    # A .env written for the Deno worker Poel replaces (or a Node app's) says its mode
    # with DENO_ENV (NODE_ENV): read as POEL_ENV when that is unset (see runtime_env).
    deno_env: str | None = Field(default=None, validation_alias="DENO_ENV", exclude=True)
    node_env: str | None = Field(default=None, validation_alias="NODE_ENV", exclude=True)
    worker_concurrency: int = Field(
        default=10, ge=1, le=10_000, validation_alias="WORKER_CONCURRENCY"
    )
    job_timeout_ms: int = Field(
        default=300_000, ge=1, le=INT4_MAX, validation_alias="JOB_TIMEOUT_MS"
    )
    health_check_port: int = Field(
        default=8080, ge=0, le=65_535, validation_alias="HEALTH_CHECK_PORT"
    )
    health_check_host: str = Field(default="127.0.0.1", validation_alias="HEALTH_CHECK_HOST")
    schema_name: str = Field(default="poel", validation_alias="POEL_SCHEMA")
    load_plugins: str | None = Field(default=None, validation_alias="POEL_LOAD_PLUGINS")
    disabled_plugins: str = Field(default="", validation_alias="POEL_DISABLED_PLUGINS")
    queues: str | None = Field(default=None, validation_alias="POEL_QUEUES")
    log_format: Literal["json", "console"] = Field(
        default="json", validation_alias="POEL_LOG_FORMAT"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", validation_alias="POEL_LOG_LEVEL"
    )
    poll_interval_ms: int = Field(
        default=1_000, ge=10, le=_HOUR_MS, validation_alias="POEL_POLL_INTERVAL_MS"
    )
    lease_ms: int = Field(default=30_000, ge=1_000, le=_DAY_MS, validation_alias="POEL_LEASE_MS")
    shutdown_timeout_ms: int = Field(
        default=30_000, ge=0, le=_DAY_MS, validation_alias="POEL_SHUTDOWN_TIMEOUT_MS"
    )
    retry_backoff_ms: int = Field(
        default=1_000, ge=0, le=_YEAR_MS, validation_alias="POEL_RETRY_BACKOFF_MS"
    )
    retry_backoff_max_ms: int = Field(
        default=3_600_000, ge=0, le=_YEAR_MS, validation_alias="POEL_RETRY_BACKOFF_MAX_MS"
    )
    max_handbacks: int = Field(default=3, ge=0, le=1_000, validation_alias="POEL_MAX_HANDBACKS")
    # The largest result (a handler's return value as JSON) kept with a job; a larger one
    # fails the job saying so (poel_host.results).
    max_result_bytes: int = Field(
        default=1_048_576, ge=0, le=256 * 1_048_576, validation_alias="POEL_MAX_RESULT_BYTES"
    )
    db_pool_size: int = Field(default=10, ge=1, le=1_000, validation_alias="POEL_DB_POOL_SIZE")
    connect_timeout_s: int = Field(
        default=5, ge=1, le=3_600, validation_alias="POEL_CONNECT_TIMEOUT_S"
    )
    auto_migrate: bool | None = Field(default=None, validation_alias="POEL_AUTO_MIGRATE")
    # How long a migration's statement waits for a lock (0: for ever); poel_host.migrating
    migration_lock_timeout_ms: int = Field(
        default=5_000, ge=0, le=_HOUR_MS, validation_alias="POEL_MIGRATION_LOCK_TIMEOUT_MS"
    )
    pooler: Literal["none", "transaction"] = Field(default="none", validation_alias="POEL_POOLER")
    local_database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL), validation_alias="POEL_LOCAL_DATABASE_URL"
    )
    embedded: Literal["auto", "always", "never"] = Field(
        default="auto", validation_alias="POEL_EMBEDDED"
    )
    data_dir: Path | None = Field(default=None, validation_alias="POEL_DATA_DIR")
    blocking_warn_ms: int = Field(
        default=1_000, ge=0, le=_HOUR_MS, validation_alias="POEL_BLOCKING_WARN_MS"
    )
    queue_metrics_interval_s: float = Field(
        default=5,
        ge=0,
        le=3_600,
        allow_inf_nan=False,
        validation_alias="POEL_QUEUE_METRICS_INTERVAL_S",
    )
    processes: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=1_000,
        validation_alias="POEL_PROCESSES",
    )
    process_max_jobs: int = Field(default=0, ge=0, validation_alias="POEL_PROCESS_MAX_JOBS")
    process_max_rss_mb: int = Field(
        default=0, ge=0, le=1_048_576, validation_alias="POEL_PROCESS_MAX_RSS_MB"
    )
    threads: int = Field(default=4, ge=1, le=1_000, validation_alias="POEL_THREADS")
    max_payload_bytes: int = Field(
        default=1_000_000, ge=2, le=_JSONB_MAX_BYTES, validation_alias="POEL_MAX_PAYLOAD_BYTES"
    )

    # Why the pooler was chosen: "inferred" when POEL_POOLER is unset and DATABASE_URL
    # looks like Supabase's transaction pooler (serve logs a warning saying so).
    _pooler_inferred: bool = PrivateAttr(default=False)
    # The variable the mode was read from (POEL_ENV, or DENO_ENV or NODE_ENV without it).
    _env_from: str = PrivateAttr(default="POEL_ENV")

    @field_validator("database_url", "local_database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")) and "=" not in url:
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        return value

    @field_validator("schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                "must be a plain SQL identifier: letters, digits and underscores, "
                "not starting with a digit, at most 63 characters"
            )
        return value

    @field_validator("supabase_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _env_from_deno_or_node(self) -> Settings:
        """POEL_ENV unset: DENO_ENV, else NODE_ENV, says the mode, as it did for the Deno
        worker (production when it says ``production``, development otherwise)."""
        if "env" not in self.model_fields_set:
            env, source = runtime_env(self.deno_env, self.node_env)
            if source is not None:
                self.env = env
                self._env_from = source
        return self

    @model_validator(mode="after")
    def _infer_pooler(self) -> Settings:
        """A Supabase transaction-pooler URL with POEL_POOLER unset means polling only:
        LISTEN cannot work through it, and prepared statements would fail."""
        if "pooler" not in self.model_fields_set and looks_like_transaction_pooler(self.dsn):
            self.pooler = "transaction"
            self._pooler_inferred = True
        return self

    # Derived values -------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def env_from(self) -> str:
        """The variable ``env`` was read from: ``POEL_ENV`` (or its default), ``DENO_ENV``
        or ``NODE_ENV``."""
        return self._env_from

    @property
    def pooler_inferred(self) -> bool:
        """Whether ``pooler`` was set from the look of DATABASE_URL, not by POEL_POOLER."""
        return self._pooler_inferred

    @property
    def database_url_given(self) -> bool:
        """Whether DATABASE_URL was set (environment, .env or code), not defaulted."""
        return "database_url" in self.model_fields_set

    @property
    def should_auto_migrate(self) -> bool:
        return self.env == "development" if self.auto_migrate is None else self.auto_migrate

    @property
    def dashboard_shows_payloads(self) -> bool:
        """Payloads can hold personal data: hidden in production unless told otherwise."""
        if self.dashboard_payloads is None:
            return self.env == "development"
        return self.dashboard_payloads == "shown"

    @property
    def plugins_to_load(self) -> list[str] | None:
        """``None`` loads every installed plugin; an empty list loads none."""
        return None if self.load_plugins is None else comma_list(self.load_plugins)

    @property
    def plugins_disabled(self) -> list[str]:
        return comma_list(self.disabled_plugins)

    @property
    def queue_names(self) -> list[str] | None:
        """``None`` means every queue."""
        return None if self.queues is None else comma_list(self.queues)

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked: safe for logs and HTTP answers."""
        data = self.model_dump()
        for name in _SECRET_FIELDS:
            if data.get(name) is not None:
                data[name] = "********"
        data["database_url"] = redact_dsn(self.dsn)
        return data

    def as_environment(self) -> dict[str, str]:
        """These settings as the environment variables that say them (secrets included):
        how a child process of the process executor gets exactly the serve process's
        settings, whether they came from the environment, a .env file or code."""
        env = {}
        for name, field in Settings.model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[str(field.validation_alias)] = str(value)
        return env


def runtime_env(
    deno_env: str | None, node_env: str | None
) -> tuple[Literal["development", "production"], str | None]:
    """The mode a Deno or Node deployment's variables say, and which one said it (``None``
    when neither is set): DENO_ENV first, production only when it says ``production``, as
    in the Deno worker (NODE_ENV's ``test`` or ``staging`` mean development, not an error)."""
    for name, value in (("DENO_ENV", deno_env), ("NODE_ENV", node_env)):
        if value and value.strip():
            return ("production" if value.strip().lower() == "production" else "development"), name
    return "development", None
