"""Settings, read from the environment and a ``.env`` file and checked at start-up.

Every bad variable is collected into one :class:`~poel_host.errors.SettingsError` naming
each of them, so an operator fixes a deployment in one go. Values of secret settings are
never repeated in messages, logs or HTTP answers.

The model itself (fields, bounds, validators, derived values) is
:mod:`poel_host.settings_model`; :class:`Settings` is imported from here as before.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings

from poel_host.errors import SettingsError
from poel_host.settings_model import (
    _SECRET_FIELDS,
    DEFAULT_DATABASE_URL,
    Settings,
    runtime_env,
)

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "format_errors", "load_settings"]


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise one SettingsError that names every bad variable."""
    # Checked on its own so that it is reported beside the other bad variables.
    problems = []
    said = _production_without_database_url(overrides)
    if said:
        problems.append(f"  DATABASE_URL: must be set when {said}=production")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join([format_errors(exc), *problems])) from None
    if problems:
        raise SettingsError("invalid configuration:\n" + "\n".join(problems))
    return settings


class _Production(BaseSettings):
    """Just the mode (POEL_ENV, or DENO_ENV or NODE_ENV without it) and whether
    DATABASE_URL is given, read from the same sources."""

    model_config = Settings.model_config
    env: Any = Field(default=None, validation_alias="POEL_ENV")
    deno_env: Any = Field(default=None, validation_alias="DENO_ENV")
    node_env: Any = Field(default=None, validation_alias="NODE_ENV")
    database_url: Any = Field(default=None, validation_alias="DATABASE_URL")


def _production_without_database_url(overrides: dict[str, Any]) -> str | None:
    """The variable that asked for production without a DATABASE_URL, if one did."""
    probe = _Production(**overrides)
    if probe.database_url is not None:
        return None
    if probe.env is not None:
        return "POEL_ENV" if probe.env == "production" else None
    env, source = runtime_env(
        probe.deno_env if isinstance(probe.deno_env, str) else None,
        probe.node_env if isinstance(probe.node_env, str) else None,
    )
    return source if env == "production" else None


def format_errors(exc: ValidationError) -> str:
    """One line per bad variable, named as the operator wrote it, secrets not echoed."""
    lines = []
    aliases = {str(field.validation_alias): name for name, field in Settings.model_fields.items()}
    for error in exc.errors():
        variable = str(error["loc"][0]) if error["loc"] else "?"
        field_name = aliases.get(variable, variable)
        message = error["msg"].removeprefix("Value error, ")
        if field_name not in _SECRET_FIELDS and error["type"] != "missing":
            message += f" (got {error.get('input')!r})"
        lines.append(f"  {variable}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)
