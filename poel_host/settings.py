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
from poel_host.settings_model import _SECRET_FIELDS, DEFAULT_DATABASE_URL, Settings

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "format_errors", "load_settings"]


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise one SettingsError that names every bad variable."""
    # Checked on its own so that it is reported beside the other bad variables.
    problems = []
    if _production_without_database_url(overrides):
        problems.append("  DATABASE_URL: must be set when POEL_ENV=production")
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("\n".join([format_errors(exc), *problems])) from None
    if problems:
        raise SettingsError("invalid configuration:\n" + "\n".join(problems))
    return settings


class _Production(BaseSettings):
    """Just POEL_ENV and whether DATABASE_URL is given, read from the same sources."""

    model_config = Settings.model_config
    env: Any = Field(default=None, validation_alias="POEL_ENV")
    database_url: Any = Field(default=None, validation_alias="DATABASE_URL")


def _production_without_database_url(overrides: dict[str, Any]) -> bool:
    probe = _Production(**overrides)
    return probe.env == "production" and probe.database_url is None


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
